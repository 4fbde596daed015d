"""Shared helpers: tiny study files, the CLI as a subprocess, and reads of a real store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN = [sys.executable, str(ROOT / "run_study.py"), "--quiet", "--device", "cpu"]

# 8-pixel digits, one or two conv blocks of at most 8 channels: a trial takes well under a
# second on a CPU, yet it is the real trainer on real images.
TINY_STUDY = """
[study]
name = "tiny"
trials = 3
sampler = "tpe"
pruner = "median"
seed = 0

[data]
dataset = "digits"
image_size = 8

[train]
epochs = 2
batch_size = 64

[space]
lr = { low = 1e-3, high = 1e-1, log = true }
depth = { low = 1, high = 2 }
width = { low = 4, high = 8, log = true }
dropout = { low = 0.0, high = 0.3 }
optimizer = ["adam", "sgd"]
"""


@pytest.fixture
def study_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_STUDY)
    return path


@pytest.fixture
def store(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store.db'}"


@pytest.fixture(autouse=True, scope="session")
def private_cache(tmp_path_factory):
    """Datasets and splits are cached per user; the tests keep their own, so that a session
    both computes them and reads them back, whatever the user's cache holds."""
    os.environ["HPSEARCH_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))


def studies_snapshot(folder: Path) -> dict:
    """Every path under `folder`, folders included (an empty one left behind counts), with
    its kind, size and modification time."""
    snapshot = {}
    if folder.is_dir():
        for path in [folder, *folder.rglob("*")]:
            try:
                st = path.lstat()
            except FileNotFoundError:  # removed while listed
                continue
            kind = "dir" if path.is_dir() and not path.is_symlink() else "file"
            snapshot[path.relative_to(ROOT).as_posix()] = (kind, st.st_size, st.st_mtime_ns)
    return snapshot


@pytest.fixture(autouse=True, scope="session")
def repository_studies_untouched():
    """The tests write only into their own temporary folders: the repository's studies/ holds
    the user's stores, weights and reports, and the session must leave it exactly as it found
    it. Fails the session, naming each path added, changed or removed there and the test after
    which it was seen."""
    folder = ROOT / "studies"
    watch = {"start": studies_snapshot(folder), "culprits": {}}
    watch["last"] = watch["start"]
    yield watch
    before, after = watch["start"], studies_snapshot(folder)
    diff = {"added": sorted(set(after) - set(before)),
            "changed": sorted(p for p in set(before) & set(after) if before[p] != after[p]),
            "removed": sorted(set(before) - set(after))}
    lines = [f"  {what}: {path}  (seen after {watch['culprits'].get(path, 'the last test')})"
             for what, paths in diff.items() for path in paths]
    if lines:
        pytest.fail(f"the tests wrote into the repository's {folder}/, which must stay as the "
                    f"session found it: a test writes only into its own temporary folder "
                    f"(cwd=tmp_path, --storage and --artifacts under tmp_path). "
                    + ", ".join(f"{len(v)} {k}" for k, v in diff.items()) + ":\n"
                    + "\n".join(lines[:50]) + ("\n  ..." if len(lines) > 50 else ""),
                    pytrace=False)


@pytest.fixture(autouse=True)
def _studies_watch(repository_studies_untouched, request):
    """After each test, which paths of studies/ changed, so the session's failure names it."""
    yield
    watch = repository_studies_untouched
    now = studies_snapshot(ROOT / "studies")
    for path in set(now) ^ set(watch["last"]) | {
            p for p in set(now) & set(watch["last"]) if now[p] != watch["last"][p]}:
        watch["culprits"].setdefault(path, request.node.nodeid)
    watch["last"] = now


def cli_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("HPSEARCH_") or k == "HPSEARCH_CACHE_DIR"}
    env.update({"PYTHONUNBUFFERED": "1"}, **extra)
    return env


def run_cli(*args, cwd: Path = ROOT, timeout: float = 300, **env) -> subprocess.CompletedProcess:
    """`python run_study.py ARGS` (or `-m hpsearch.cli` for other commands) as a user runs it."""
    cmd = [*RUN, *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=cli_env(**env))


def hpsearch(*args, cwd: Path = ROOT, timeout: float = 300, **env) -> subprocess.CompletedProcess:
    """`hpsearch COMMAND ARGS` for the commands besides run."""
    cmd = [sys.executable, "-m", "hpsearch.cli", *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=cli_env(**env))


def start_cli(*args, **env) -> subprocess.Popen:
    cmd = [*RUN, *map(str, args)]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=cli_env(**env))


def load(store: str, name: str = "tiny") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=store)


def states(study: optuna.Study) -> dict:
    counts: dict = {}
    for t in study.trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts


def finished_tiny_study(folder: Path, trials: int, *extra) -> tuple:
    """(study file, store URL) of a tiny study the CLI ran to `trials` in `folder`."""
    config = folder / "tiny.toml"
    config.write_text(TINY_STUDY)
    store = f"sqlite:///{folder / 'store.db'}"
    out = run_cli("--config", config, "--storage", store, "--trials", trials, *extra)
    assert out.returncode == 0, out.stderr
    return config, store


@pytest.fixture(autouse=True)
def _no_watch_left():
    """A test that took images from an owner (see sharing) leaves no watch on that owner to
    the tests after it."""
    yield
    from hpsearch import interrupts

    interrupts.unwatch()
