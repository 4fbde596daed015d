"""SIGKILL at several points of a run; the rerun finishes the study with nothing lost.

Each point is reached by waiting for a marker in the store or the checkpoint folder, never by
sleeping for a guessed time.
"""

from __future__ import annotations

import fcntl
import os
import signal
import sqlite3
import sys
import termios
import time
from pathlib import Path

import pytest
import torch

from conftest import load, run_cli, start_cli, states

TARGET = 3
PIPE_BUFFER = 4096  # one page, the smallest pipe Linux makes


def query(db: Path, sql: str) -> list:
    if not db.exists():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return con.execute(sql).fetchall()
    except sqlite3.OperationalError:
        return []  # tables not made yet
    finally:
        con.close()


def in_first_epoch(db: Path, folder: Path) -> bool:
    """A trial has recorded its owner but reported no epoch yet."""
    return bool(query(db, "SELECT 1 FROM trials t JOIN trial_user_attributes a "
                          "ON a.trial_id = t.trial_id AND a.key = 'owner' "
                          "WHERE t.state = 'RUNNING' AND NOT EXISTS (SELECT 1 FROM "
                          "trial_intermediate_values v WHERE v.trial_id = t.trial_id)"))


def after_epoch_2(db: Path, folder: Path) -> bool:
    """The running trial's checkpoint holds epoch 2 or later."""
    for path in folder.rglob("trial-*.pt"):
        try:
            if torch.load(path, weights_only=True)["epoch"] >= 2:
                return True
        except Exception:
            pass  # replaced while being read: look again
    return False


def between_trials(db: Path, folder: Path) -> bool:
    """A trial has finished and the next one has not reported an epoch (or not started)."""
    finished = query(db, "SELECT COUNT(*) FROM trials WHERE state IN ('COMPLETE', 'PRUNED')")
    if not finished or finished[0][0] < 1:
        return False
    running = query(db, "SELECT 1 FROM trials WHERE state = 'RUNNING'")
    return not running or in_first_epoch(db, folder)


def first_checkpoint(db: Path, folder: Path) -> bool:
    return (folder / "tiny" / "trial-0.pt").exists()


MARKERS = {"during the first epoch": in_first_epoch, "between epochs": after_epoch_2,
           "while a checkpoint is written": first_checkpoint, "between trials": between_trials}


def block_the_next_checkpoint_write(folder: Path, pid: int) -> int:
    """Put a named pipe where the run writes its next checkpoint's temporary file, with a
    one-page buffer that nothing drains: torch.save stalls inside the write once it is full, and
    cannot finish and rename the pipe into place (a tiny checkpoint fits a default 64 KiB pipe
    whole). Returns the pipe, open, once the write has begun; close it after the kill."""
    fifo = folder / "tiny" / f".trial-0.pt.{pid}.tmp"
    while True:
        try:
            os.mkfifo(fifo)
            break
        except FileExistsError:
            time.sleep(0.001)  # this epoch's file is being renamed into place; try again
    # Read-write, so the open waits for no writer and the buffer is sized before one comes.
    pipe = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
    fcntl.fcntl(pipe, fcntl.F_SETPIPE_SZ, PIPE_BUFFER)
    assert (folder / "tiny" / "trial-0.pt").stat().st_size > PIPE_BUFFER  # it cannot fit
    deadline = time.monotonic() + 60
    while buffered(pipe) == 0:  # the write has begun, and cannot end while nothing reads
        assert time.monotonic() < deadline, "the checkpoint write never came"
        time.sleep(0.001)
    return pipe


def buffered(pipe: int) -> int:
    count = bytearray(4)
    fcntl.ioctl(pipe, termios.FIONREAD, count)
    return int.from_bytes(count, sys.byteorder)


def finished_trials(store: str) -> dict:
    return {t.number: (t.state, t.params, t.value, t.intermediate_values)
            for t in load(store).trials if t.state.is_finished()}


@pytest.mark.parametrize("point", MARKERS, ids=list(MARKERS))
def test_sigkill_at_any_point_loses_nothing(study_file, tmp_path, point):
    db, folder = tmp_path / "store.db", tmp_path / "checkpoints"
    store = f"sqlite:///{db}"
    args = ("--config", study_file, "--storage", store, "--trials", TARGET, "--epochs", 30,
            "--set", "study.pruner='none'")
    proc = start_cli(*args)
    deadline = time.monotonic() + 240
    while not MARKERS[point](db, folder):
        assert proc.poll() is None and time.monotonic() < deadline, "the marker never came"
        time.sleep(0.01)
    pipe = None
    if point == "while a checkpoint is written":
        pipe = block_the_next_checkpoint_write(folder, proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    if pipe is not None:
        os.close(pipe)
    before = finished_trials(store)
    running = [t.number for t in load(store).trials if not t.state.is_finished()]

    out = run_cli(*args)
    assert out.returncode == 0, out.stderr
    study = load(store)
    counts = states(study)
    assert counts.get("COMPLETE", 0) == TARGET, counts
    assert counts.get("RUNNING", 0) == 0 and counts.get("WAITING", 0) == 0
    after = finished_trials(store)
    assert all(after[n] == before[n] for n in before), "a finished trial changed"
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") in running]
    assert len(retries) == len(running)
    if point == "between epochs":
        assert retries[0].user_attrs["resumed_from_epoch"] >= 2
    if point == "while a checkpoint is written":  # the last checkpoint before the stalled one
        assert retries[0].user_attrs["resumed_from_epoch"] >= 1
    if point != "between trials":
        assert sorted(retries[0].intermediate_values) == list(range(1, 31))
    assert [p for p in folder.rglob("*") if p.is_file() or p.is_fifo()] == []
    if point == "during the first epoch":
        assert retries[0].user_attrs.get("resumed_from_epoch") is None
