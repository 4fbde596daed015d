"""--backup: a copy of the store and the running trial's checkpoint, and the way back."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState

from conftest import load, run_cli, start_cli, states
from hpsearch import backup as backup_module
from hpsearch.backup import refuse_network_sqlite
from hpsearch.storage import StorageError, parse_storage


def test_the_backup_round_trip_resumes_the_interrupted_trial(study_file, tmp_path):
    local, drive = tmp_path / "local", tmp_path / "drive"
    store = f"sqlite:///{local / 'store.db'}"
    args = ("--config", study_file, "--storage", store, "--trials", 3, "--epochs", 40,
            "--backup", drive, "--set", "study.backup_interval=0")
    proc = start_cli(*args)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if list((drive / "checkpoints").rglob("trial-*.pt")):
            break  # the backup holds a checkpoint of the running trial
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    (backed_up,) = (drive / "checkpoints").rglob("trial-*.pt")
    assert (drive / "store.db").is_file()
    shutil.rmtree(local)  # a fresh machine: no local store, checkpoints or weights

    out = run_cli(*args)
    assert out.returncode == 0, out.stderr
    assert "restored the store from the backup" in out.stdout
    study = load(store)
    retries = [t for t in study.trials if "failed_trial" in t.system_attrs]
    assert len(retries) == 1 and retries[0].user_attrs["resumed_from_epoch"] > 0
    assert retries[0].state in (TrialState.COMPLETE, TrialState.PRUNED)
    counts = states(study)
    assert counts.get("RUNNING", 0) == 0 and counts.get("WAITING", 0) == 0
    assert counts.get("COMPLETE", 0) + counts.get("PRUNED", 0) == 3
    assert not backed_up.exists()  # the finished trial's checkpoint left the backup too
    # The backup is the finished study, weights included.
    assert states(load(f"sqlite:///{drive / 'store.db'}")) == counts
    assert {p.name for p in (drive / "artifacts").iterdir()} == \
        {p.name for p in (local / "artifacts").iterdir()}


def test_sqlite_on_a_network_drive_is_refused_with_the_way_out(tmp_path, monkeypatch):
    monkeypatch.setattr(backup_module, "filesystem_type", lambda path: "fuse.drive")
    with pytest.raises(StorageError, match="pass --backup DIR"):
        refuse_network_sqlite(parse_storage(f"sqlite:///{tmp_path / 's.db'}"))
    refuse_network_sqlite(parse_storage(f"journal:{tmp_path / 's.log'}"))  # not SQLite: fine


def test_the_mount_table_is_read(tmp_path):
    assert backup_module.filesystem_type(Path(tmp_path)) not in (None, "")
