"""Four worker processes on one study: SQLite, a journal file and the real PostgreSQL server."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState

from conftest import load, run_cli, start_cli, states
from test_postgres import URL, postgres_study  # noqa: F401 (a fixture)

WORKERS, TARGET = 4, 12


def check_workers_run(out, storage, name: str) -> None:
    assert out.returncode == 0, out.stderr
    assert "locked" not in out.stdout + out.stderr and "Traceback" not in out.stderr
    study = optuna.load_study(study_name=name, storage=storage)
    counts = states(study)
    finished = counts.get("COMPLETE", 0) + counts.get("PRUNED", 0)
    # The target is reached, overshooting by at most the other workers' running trials.
    assert TARGET <= finished <= TARGET + WORKERS - 1, counts
    assert counts.get("RUNNING", 0) == 0 and counts.get("WAITING", 0) == 0
    assert counts.get("FAIL", 0) == 0
    params = [tuple(sorted(t.params.items())) for t in study.trials]
    assert len(set(params)) == len(params), "two trials share their parameters"
    owners = {t.user_attrs["owner"]["pid"] for t in study.trials}
    assert len(owners) > 1, "one process ran every trial"
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_four_workers_on_one_file_store(study_file, tmp_path, kind):
    url = f"sqlite:///{tmp_path / 's.db'}" if kind == "sqlite" else f"journal:{tmp_path / 's.log'}"
    out = run_cli("--config", study_file, "--storage", url, "--trials", TARGET,
                  "--workers", WORKERS)
    if kind == "sqlite":
        storage = url
    else:
        storage = optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(tmp_path / "s.log")))
    check_workers_run(out, storage, "tiny")


def test_four_workers_on_postgresql(study_file, postgres_study):  # noqa: F811
    out = run_cli("--config", study_file, "--storage", URL, "--study-name", postgres_study,
                  "--trials", TARGET, "--workers", WORKERS, cwd=study_file.parent)
    check_workers_run(out, URL.replace("postgresql://", "postgresql+psycopg://"), postgres_study)


def test_a_locked_sqlite_store_is_waited_for_and_each_retry_counted(study_file, tmp_path):
    db = tmp_path / "s.db"
    store = f"sqlite:///{db}"
    assert run_cli("--config", study_file, "--storage", store, "--trials", 1).returncode == 0
    # Another process takes the write lock, and keeps it for 2.5 s after the resumed run has
    # printed its header, i.e. just when that run wants to write its next trial.
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sqlite3, sys, time\n"
        f"con = sqlite3.connect({str(db)!r}, isolation_level=None)\n"
        "con.execute('BEGIN EXCLUSIVE'); print('locked', flush=True)\n"
        "sys.stdin.readline(); time.sleep(2.5); con.execute('COMMIT')\n")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    run = start_cli("--config", study_file, "--storage", store, "--trials", 2)
    for line in run.stdout:
        if line.startswith("Study 'tiny'"):
            break
    holder.stdin.write("go\n")
    holder.stdin.flush()
    stdout, stderr = run.communicate(timeout=300)
    holder.wait(timeout=30)
    assert run.returncode == 0, stderr
    assert "database is locked" not in stderr
    retries = re.findall(r"SQLite store locked by another process for over 1 s; retry (\d+)",
                         stderr)
    assert retries and retries == [str(i) for i in range(1, len(retries) + 1)]
    assert re.search(rf"^Lock retries +{len(retries)} ", stdout, re.M)
    assert states(load(store)) == {"COMPLETE": 2}


def test_sigterm_to_a_run_with_workers_queues_every_interrupted_trial(study_file, tmp_path):
    db = tmp_path / "s.db"
    store = f"sqlite:///{db}"
    args = ("--config", study_file, "--storage", store, "--trials", 4, "--workers", 2,
            "--epochs", 200, "--set", "study.pruner='none'")
    run = start_cli(*args)
    deadline = time.monotonic() + 240
    while len(list((tmp_path / "checkpoints").rglob("trial-*.pt"))) < 2:
        assert run.poll() is None and time.monotonic() < deadline, "no two running trials"
        time.sleep(0.05)
    run.send_signal(signal.SIGTERM)
    _, stderr = run.communicate(timeout=180)
    assert run.returncode == 130, stderr
    assert "Traceback" not in stderr
    study = load(store)
    waiting = [t for t in study.trials if t.state == TrialState.WAITING]
    assert len(waiting) == 2 and len(list((tmp_path / "checkpoints").rglob("*.pt"))) == 2

    out = run_cli(*args)
    assert out.returncode == 0, out.stderr
    study = load(store)
    resumed = [study.trials[t.number] for t in waiting]
    assert all(t.user_attrs["resumed_from_epoch"] > 0 for t in resumed)
    assert states(study).get("WAITING", 0) == 0 and states(study).get("RUNNING", 0) == 0
