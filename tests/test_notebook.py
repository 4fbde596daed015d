"""The shipped notebook (notebooks/colab.ipynb) on a real Jupyter kernel, top to bottom, and
the kernel's stop button during a running study."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

from conftest import ROOT  # noqa: E402
from hpsearch.bench.photo_folder import make_photo_folder  # noqa: E402

NOTEBOOK = ROOT / "notebooks" / "colab.ipynb"


def settings(tmp_path: Path, photos: Path, trials: int = 4) -> str:
    """The notebook's settings cell for a test: everything under tmp_path, a small drawn
    folder instead of Drive, few trials, a short photo study."""
    return (f"TRIALS = {trials}\nPHOTOS = {str(photos)!r}\nPHOTO_TIME = '25s'\n"
            f"PHOTO_SIZE = 16\nBACKUP = {str(tmp_path / 'drive')!r}\n"
            f"STORE = 'sqlite:///{tmp_path / 'studies' / 'hpsearch.db'}'\nREPO = ''")


def notebook_for(tmp_path: Path, photos: Path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    cell = next(c for c in nb.cells if c.source.startswith("# settings"))
    cell.source = settings(tmp_path, photos)
    nb.cells.append(nbformat.v4.new_code_cell("board.stop()"))
    return nb


def outputs(cell) -> tuple:
    """(the cell's text, the MIME types it displayed)."""
    text, kinds = [], set()
    for out in cell.get("outputs", []):
        if out.output_type == "stream":
            text.append(out.text)
        elif out.output_type in ("display_data", "execute_result"):
            kinds |= set(out.data)
            text.append(out.data.get("text/plain", ""))
        elif out.output_type == "error":
            text.append("\n".join(out.traceback))
    return "".join(text), kinds


def test_the_notebook_runs_top_to_bottom_on_a_real_kernel(tmp_path):
    photos = make_photo_folder(tmp_path / "photos", per_class=12, classes=3)
    nb = notebook_for(tmp_path, photos)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT)}}).execute()
    by_source = {c.source.splitlines()[0]: outputs(c) for c in nb.cells
                 if c.cell_type == "code" and c.source}
    run_text, run_kinds = by_source["digits = hpsearch.run(trials=TRIALS, storage=STORE)"]
    assert "image/png" in run_kinds, "no live figure"  # drawn in the cell, updated in place
    assert "4 finished" in run_text and "Traceback" not in run_text
    assert "Warning" not in run_text  # tqdm falls back to text without ipywidgets, quietly
    assert "Best(trial" in by_source["digits.best"][0]
    assert "text/html" in by_source["digits.trials"][1]  # a DataFrame
    assert "image/png" in by_source['digits.plot("curves")'][1]
    report_text, report_kinds = by_source["digits.report()"]
    assert "text/html" in report_kinds
    assert "Traceback" not in report_text
    predicted = by_source["model = photos.best_model()"][0]
    assert predicted.count("photos/") == 5 and "Traceback" not in predicted
    assert (tmp_path / "drive" / "model" / "weights.pt").is_file()
    assert "Dashboard: http://127.0.0.1:" in by_source["board = hpsearch.dashboard(photos)"][0]
    assert not (ROOT / "notebooks" / "studies").exists()


def completed(store: Path) -> int:
    try:
        with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
            return db.execute("SELECT count(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_the_stop_button_ends_the_cell_in_one_line_and_rerunning_it_resumes(tmp_path):
    """The kernel manager's interrupt, as the stop button sends it, while the digits study
    runs; then the same cell again."""
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3", cwd=str(ROOT))
    store = tmp_path / "studies" / "hpsearch.db"
    try:
        setup = settings(tmp_path, tmp_path, trials=10) + "\nimport hpsearch"
        assert kc.execute_interactive(setup, timeout=120)["content"]["status"] == "ok"
        cell = "digits = hpsearch.run(trials=TRIALS, storage=STORE)"
        msg_id = kc.execute(cell)
        deadline = time.monotonic() + 300
        while completed(store) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        km.interrupt_kernel()
        text, status = collect(kc, msg_id)
        assert status == "ok", text  # the cell ended normally: no KeyboardInterrupt
        assert "Stopped: the study is intact; run this cell again" in text
        assert "Traceback" not in text and "KeyboardInterrupt" not in text
        done = completed(store)
        assert 2 <= done < 10
        text, status = collect(kc, kc.execute(cell), timeout=600)
        assert status == "ok", text
        with sqlite3.connect(store) as db:
            states = dict(db.execute("SELECT state, count(*) FROM trials GROUP BY state"))
        assert "RUNNING" not in states and states.get("COMPLETE", 0) + \
            states.get("PRUNED", 0) == 10
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def collect(kc, msg_id: str, timeout: float = 300) -> tuple:
    """(the text a cell printed, its status) once the kernel is idle after it."""
    text = []
    while True:
        msg = kc.get_iopub_msg(timeout=timeout)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind, content = msg["msg_type"], msg["content"]
        if kind == "stream":
            text.append(content["text"])
        elif kind == "error":
            text.append("\n".join(content["traceback"]))
        elif kind == "status" and content["execution_state"] == "idle":
            break
    reply = kc.get_shell_msg(timeout=timeout)
    while reply["parent_header"].get("msg_id") != msg_id:
        reply = kc.get_shell_msg(timeout=timeout)
    return "".join(text), reply["content"]["status"]
