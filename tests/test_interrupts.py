"""A Ctrl-C or SIGTERM is never lost: sent at any moment of a run, start-up included, the run
stops within seconds with exit 130, and a trial it interrupted is queued for the next run."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState

from conftest import TINY_STUDY, load, start_cli

# Seconds after the start: while Python imports torch and Optuna, loads the data, opens the
# store, and once trials train. A long study, so that none of them finds it finished.
MOMENTS = [(0.2, signal.SIGINT), (0.6, signal.SIGTERM), (1.0, signal.SIGINT),
           (1.5, signal.SIGINT), (2.0, signal.SIGTERM), (3.0, signal.SIGINT),
           (4.5, signal.SIGINT), (7.0, signal.SIGTERM)]
STOPS_WITHIN = 15.0  # seconds from the signal to the exit, on a loaded 2-core machine


@pytest.fixture
def long_study(tmp_path: Path) -> Path:
    path = tmp_path / "long.toml"
    path.write_text(TINY_STUDY.replace("trials = 3", "trials = 500")
                    .replace("epochs = 2", "epochs = 30").replace('"median"', '"none"'))
    return path


@pytest.mark.parametrize("delay,sig", MOMENTS, ids=[f"{d}s-{s.name}" for d, s in MOMENTS])
def test_a_signal_at_any_moment_stops_the_run_with_exit_130(long_study, tmp_path, delay, sig):
    db = tmp_path / "store.db"
    proc = start_cli("--config", long_study, "--storage", f"sqlite:///{db}")
    time.sleep(delay)
    sent = time.monotonic()
    proc.send_signal(sig)
    try:
        _, stderr = proc.communicate(timeout=STOPS_WITHIN)
    except Exception:
        proc.kill()
        proc.communicate()
        raise AssertionError(f"still running {STOPS_WITHIN} s after {sig.name} at {delay} s")
    assert proc.returncode == 130, stderr
    assert time.monotonic() - sent < STOPS_WITHIN
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    assert "run the same command to continue" in stderr
    if not db.exists():
        return  # stopped before the store was opened: nothing to keep
    try:
        study = load(f"sqlite:///{db}")
    except KeyError:
        return  # stopped before the study was made
    trials = study.get_trials(deepcopy=False)
    assert not [t.number for t in trials if t.state == TrialState.RUNNING]
    interrupted = [t.number for t in trials if t.state == TrialState.FAIL]
    assert all(trials[n].user_attrs.get("fail_reason") == "interrupted" for n in interrupted)
    queued = [t.system_attrs.get("failed_trial") for t in trials
              if t.state == TrialState.WAITING]
    assert queued == interrupted
