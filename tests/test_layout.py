"""The shape of the package: imports flow one way, the benchmarks stay beside the product,
private APIs stay in one module, and modules stay short."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, TINY_STUDY, cli_env

PACKAGE = ROOT / "hpsearch"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> set:
    """Every hpsearch module a file imports, at its top or inside a function. `from
    hpsearch import console` imports the module console, not what the package's __init__
    names (its lazy `hpsearch.run` and the rest)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules = {f"{node.module}.{a.name}" for a in node.names}
            names |= modules
            if not all(is_module(m) for m in modules):
                names.add(node.module)
    return {n for n in names if n.split(".")[0] == "hpsearch"}


def is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def graph() -> dict:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in imported(path) if m in modules and m != name}
            for name, path in modules.items()}


def test_no_import_circle_among_the_modules():
    edges, state, cycles = graph(), {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_nothing_imports_the_cli_and_the_product_imports_no_benchmark():
    edges = graph()
    assert [m for m, deps in edges.items() if "hpsearch.cli" in deps] == []
    product = {m: deps for m, deps in edges.items() if not m.startswith("hpsearch.bench")}
    assert {m: sorted(d) for m, d in product.items()
            if any(x.startswith("hpsearch.bench") for x in d)} == {}
    tests = [p.name for p in (ROOT / "tests").glob("*.py") if "hpsearch.cli" in imported(p)]
    assert tests == []


def test_private_apis_are_called_from_one_module():
    private = re.compile(r"\b(study|trial|storage|torch|torch\.cpu|threading|atexit|_optimize)"
                         r"\._[a-z]\w*")
    found = [f"{p.relative_to(ROOT)}:{n}" for p in PACKAGE.rglob("*.py")
             if p.name != "private.py"
             for n, line in enumerate(p.read_text().splitlines(), 1)
             if private.search(line.split("#")[0]) and "`" not in line]
    assert found == []


def test_modules_stay_short():
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 430}  # about 400
    assert long == {}


def test_the_product_runs_with_the_benchmarks_deleted(tmp_path):
    shutil.copytree(PACKAGE, tmp_path / "hpsearch", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.rmtree(tmp_path / "hpsearch" / "bench")
    (tmp_path / "tiny.toml").write_text(TINY_STUDY.replace("trials = 3", "trials = 1"))
    # The copy alone: not the checkout that an editable install maps hpsearch's modules to.
    code = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in "
            "getattr(f, '__module__', '')]; import hpsearch; "
            "assert hpsearch.__file__.startswith(sys.argv[1]), hpsearch.__file__; "
            "sys.argv[1:] = sys.argv[2:]; from hpsearch.cli import program; program()")
    cmd = [sys.executable, "-c", code, str(tmp_path), "run", "--config", "tiny.toml",
           "--storage", f"sqlite:///{tmp_path / 's.db'}", "--device", "cpu", "--quiet"]
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env=cli_env(PYTHONPATH=str(tmp_path)))
    assert out.returncode == 0, out.stderr
    assert "1 finished (1 complete)" in out.stdout
    out = subprocess.run(cmd[:4] + ["bench", "--what", "study"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300,
                         env=cli_env(PYTHONPATH=str(tmp_path)))
    assert out.returncode == 2 and "no benchmark suite" in out.stderr
