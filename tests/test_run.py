"""The study runner end to end: the CLI in a subprocess on a real SQLite store."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from optuna.trial import TrialState

from conftest import ROOT, cli_env, hpsearch, load, run_cli, start_cli, states
from hpsearch.precision import choose_precision


def test_study_finishes_and_prints_summary(study_file, store, tmp_path):
    out = run_cli("--config", study_file, "--storage", store, "--trials", 3)
    assert out.returncode == 0, out.stderr
    study = load(store)
    assert states(study) == {"COMPLETE": 3}
    assert re.search(r"^Best +validation accuracy", out.stdout, re.M)
    assert re.search(rf"^Store +{re.escape(str(tmp_path / 'store.db'))}$", out.stdout,
                     re.M)  # absolute path
    best = study.best_trial
    history = best.user_attrs["history"]
    assert len(history["val_acc"]) == 2 and len(history["epoch_seconds"]) == 2
    assert history["val_acc"][-1] == best.value
    assert best.user_attrs["owner"]["device"] == "cpu" and best.user_attrs["n_params"] > 0
    # What auto takes on this machine's processor, recorded for the dashboard and the report.
    precision = choose_precision(torch.device("cpu")).name
    assert best.user_attrs["owner"]["precision"] == precision
    assert re.search(rf"\(\d+ threads?\) in {precision}\b", out.stdout)  # the header too
    assert [best.intermediate_values[s] for s in (1, 2)] == history["val_acc"]
    settings = study.user_attrs["hpsearch"]
    assert settings["data"]["sizes"] == {"train": 1257, "val": 270, "test": 270}
    assert len(settings["data"]["normalization"]["mean"]) == 1
    assert "store.db" not in str(settings)  # no storage URL is saved


def test_every_command_closes_its_store_before_the_fast_exit(study_file, store, tmp_path):
    """SQLite folds its write-ahead log back into the store file once the last connection
    closes; a copy of the file alone then holds every trial."""
    def beside_the_store() -> list:
        return sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("store.db"))

    assert run_cli("--config", study_file, "--storage", store, "--trials", 2).returncode == 0
    assert beside_the_store() == ["store.db"]
    refused = run_cli("--config", study_file, "--storage", store, "--epochs", 3)
    assert refused.returncode == 2 and "train.epochs was 2, now 3" in refused.stderr
    assert beside_the_store() == ["store.db"]
    assert hpsearch("status", "--storage", store).returncode == 0
    assert beside_the_store() == ["store.db"]


def test_trials_is_the_total_and_resume_never_repeats(study_file, store):
    assert run_cli("--config", study_file, "--storage", store, "--trials", 3).returncode == 0
    out = run_cli("--config", study_file, "--storage", store, "--trials", 5)
    assert out.returncode == 0, out.stderr
    study = load(store)
    assert states(study) == {"COMPLETE": 5}
    params = [tuple(sorted(t.params.items())) for t in study.trials]
    assert len(set(params)) == 5, params

    again = run_cli("--config", study_file, "--storage", store, "--trials", 5)
    assert again.returncode == 0, again.stderr
    assert "already has 5 finished trials" in again.stdout
    assert len(load(store).trials) == 5


def test_time_is_the_studys_total_and_ends_it_before_its_trials(study_file, store):
    def run(*flags):
        out = run_cli("--config", study_file, "--storage", store, *flags)
        assert out.returncode == 0, out.stderr
        return out, load(store)

    out, study = run("--trials", 50, "--time", "2s")
    done, spent = len(study.trials), study.user_attrs["time_spent"]
    assert 1 <= done < 50 and spent >= 2
    assert "Time budget: 0s of 2s spent, 2s left" in out.stdout
    assert f"has spent its time budget ({round(spent)}s of 2s, {done} of 50 trials" in out.stdout

    # --time alone lifts the study file's trial count; this budget is spent: nothing runs.
    out, study = run("--time", "2s")
    assert "(no trial limit)" in out.stdout and "has spent its time budget" in out.stdout
    assert len(study.trials) == done and study.user_attrs["time_spent"] == spent

    out, study = run("--time", "1h", "--trials", done + 1)  # another budget: the same study
    assert len(study.trials) == done + 1 and study.user_attrs["time_spent"] > spent
    assert "spent its time budget" not in out.stdout


def test_default_study_file_is_found_from_any_folder(tmp_path):
    store = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    out = run_cli("--storage", store, "--trials", 1, "--epochs", 1, "--set", "space.depth=1",
                  "--set", "space.width=4", "--set", "data.image_size=8", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "Study 'digits-cnn'" in out.stdout
    assert states(load(store, "digits-cnn")) == {"COMPLETE": 1}


def test_default_storage_is_under_studies_of_the_working_folder(tmp_path):
    out = run_cli("--trials", 1, "--epochs", 1, "--set", "space.depth=1", "--set",
                  "space.width=4", "--set", "data.image_size=8", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "studies" / "hpsearch.db").is_file()
    assert re.search(rf"^Store +{re.escape(str(tmp_path / 'studies' / 'hpsearch.db'))}$",
                     out.stdout, re.M)


def test_fixed_values_work_for_every_parameter(study_file, store):
    fixed = ["space.lr=0.01", "space.depth=2", "space.width=8", "space.dropout=0.1",
             "space.optimizer='adamw'", "space.batch_size=32", "space.weight_decay=0.0001"]
    args = [a for item in fixed for a in ("--set", item)]
    out = run_cli("--config", study_file, "--storage", store, "--trials", 1, *args)
    assert out.returncode == 0, out.stderr
    trial = load(store).trials[0]
    assert trial.state == TrialState.COMPLETE and trial.params == {}


def test_grid_sampler_covers_the_grid(study_file, store):
    out = run_cli("--config", study_file, "--storage", store, "--trials", 4,
                  "--set", "study.sampler='grid'", "--set", "space.lr=[0.01, 0.05]",
                  "--set", "space.depth={low=1, high=2, step=1}", "--set", "space.width=4",
                  "--set", "space.dropout=0.0", "--set", "space.optimizer='adam'")
    assert out.returncode == 0, out.stderr
    grid = {(t.params["lr"], t.params["depth"]) for t in load(store).trials}
    assert grid == {(0.01, 1), (0.01, 2), (0.05, 1), (0.05, 2)}


def test_a_pruner_that_must_prune_does(study_file, store):
    # Half the trials learn, half barely move: after five trials the median pruner must stop
    # the slow ones once they fall behind at epoch 2.
    out = run_cli("--config", study_file, "--storage", store, "--trials", 14,
                  "--set", "study.sampler='random'", "--set", "space.lr=[0.05, 1e-7]",
                  "--set", "train.epochs=4")
    assert out.returncode == 0, out.stderr
    study = load(store)
    pruned = study.get_trials(states=(TrialState.PRUNED,))
    assert pruned, states(study)
    assert any(t.params["lr"] == 1e-7 for t in pruned)
    assert all(max(t.intermediate_values) < 4 for t in pruned)
    assert len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) == 14


def test_a_diverging_learning_rate_is_pruned_and_the_study_goes_on(study_file, store):
    out = run_cli("--config", study_file, "--storage", store, "--trials", 2,
                  "--set", "study.sampler='grid'", "--set", "space.lr=[10.0, 0.01]",
                  "--set", "space.optimizer='sgd'", "--set", "space.depth=1",
                  "--set", "space.width=4", "--set", "space.dropout=0.0")
    assert out.returncode == 0, out.stderr
    by_lr = {t.params["lr"]: t for t in load(store).trials}
    assert by_lr[10.0].state == TrialState.PRUNED  # the highest rate a study file may give
    assert "diverged" in by_lr[10.0].user_attrs["prune_reason"]
    assert by_lr[0.01].state == TrialState.COMPLETE


def _running_trial_with_an_epoch(db: Path):
    """The number of a RUNNING trial that has reported at least one epoch, if any."""
    if not db.exists():
        return None
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        row = con.execute(
            "SELECT t.number FROM trials t JOIN trial_intermediate_values v "
            "ON v.trial_id = t.trial_id WHERE t.state = 'RUNNING' LIMIT 1").fetchone()
    except sqlite3.OperationalError:
        return None  # tables not made yet
    finally:
        con.close()
    return row[0] if row else None


def _start_and_wait_for_an_epoch(study_file, db: Path, extra: tuple = ()) -> tuple:
    """A run with trials long enough that a signal lands mid-trial, after a reported epoch:
    (its arguments, the process, the running trial's number)."""
    # Five trials: a signal sent during the last epoch of the third still finds trials to stop.
    args = ("--config", study_file, "--storage", f"sqlite:///{db}", "--trials", 5,
            "--epochs", 40, *extra)
    proc = start_cli(*args)
    deadline = time.monotonic() + 240
    number = None
    while number is None and time.monotonic() < deadline and proc.poll() is None:
        number = _running_trial_with_an_epoch(db)
        time.sleep(0.02)
    assert number is not None, proc.communicate()
    return args, proc, number


def test_a_killed_run_resumes_and_retries_the_dead_trial(study_file, tmp_path):
    store = f"sqlite:///{tmp_path / 'store.db'}"
    args, proc, killed = _start_and_wait_for_an_epoch(study_file, tmp_path / "store.db")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert load(store).trials[killed].state == TrialState.RUNNING

    out = run_cli(*args)
    assert out.returncode == 0, out.stderr
    assert f"Trial {killed} was left running by a process that died" in out.stdout
    study = load(store)
    assert study.trials[killed].state == TrialState.FAIL
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed]
    assert len(retries) == 1
    assert retries[0].params == study.trials[killed].params
    assert retries[0].state in (TrialState.COMPLETE, TrialState.PRUNED)
    # Resumed from its checkpoint, with every epoch's step reported once, in order.
    assert retries[0].user_attrs["resumed_from_epoch"] > 0
    steps = sorted(retries[0].intermediate_values)
    assert steps == list(range(1, len(steps) + 1))
    assert states(study).get("RUNNING", 0) == 0 and states(study).get("WAITING", 0) == 0
    assert len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) == 5
    assert list((tmp_path / "checkpoints").rglob("*.pt")) == []  # finished trials keep none


def test_a_trial_killed_in_bf16_resumes_in_fp32_and_the_study_reaches_its_target(
        study_file, tmp_path):
    """A new Colab runtime may change the precision: the interrupted trial resumes from its
    checkpoint in the new one, says so once, and nothing else fails."""
    store = f"sqlite:///{tmp_path / 'store.db'}"
    args, proc, killed = _start_and_wait_for_an_epoch(
        study_file, tmp_path / "store.db", ("--set", "train.precision='bf16'"))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    out = run_cli(*args[:-2], "--set", "train.precision='fp32'")
    assert out.returncode == 0, out.stderr
    study = load(store)
    retry = next(t for t in study.trials if t.system_attrs.get("failed_trial") == killed)
    assert retry.user_attrs["resumed_from_epoch"] > 0
    assert retry.user_attrs["owner"]["precision"] == "fp32"
    assert out.stderr.count("its checkpoint was written in bf16 on cpu") == 1
    assert [t.number for t in study.trials if t.state == TrialState.FAIL] == [killed]
    assert len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) == 5


def test_a_damaged_checkpoint_means_a_restart_from_the_first_epoch(study_file, tmp_path):
    args, proc, killed = _start_and_wait_for_an_epoch(study_file, tmp_path / "store.db")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    (checkpoint,) = (tmp_path / "checkpoints").rglob("*.pt")
    checkpoint.write_bytes(b"half a file")
    out = run_cli(*args)
    assert out.returncode == 0, out.stderr
    assert "cannot be read" in out.stderr and "starts from epoch 1" in out.stderr
    study = load(f"sqlite:///{tmp_path / 'store.db'}")
    (retry,) = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed]
    assert retry.state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert retry.user_attrs.get("resumed_from_epoch") is None


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_queues_the_interrupted_trial_for_the_next_run(study_file, tmp_path, sig):
    store = f"sqlite:///{tmp_path / 'store.db'}"
    args, proc, interrupted = _start_and_wait_for_an_epoch(study_file, tmp_path / "store.db")
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "run the same command to continue" in stderr and "Traceback" not in stderr
    study = load(store)
    assert study.trials[interrupted].state == TrialState.FAIL
    assert study.trials[interrupted].user_attrs["fail_reason"] == "interrupted"
    queued = [t for t in study.trials if t.state == TrialState.WAITING]
    assert [t.system_attrs["failed_trial"] for t in queued] == [interrupted]

    out = run_cli(*args)
    assert out.returncode == 0, out.stderr
    study = load(store)
    retry = study.trials[queued[0].number]
    assert retry.state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert retry.params == study.trials[interrupted].params
    assert retry.user_attrs["fail_reason"] is None  # the retry's own outcome, not the copy's
    assert retry.user_attrs["resumed_from_epoch"] > 0
    assert states(study).get("RUNNING", 0) == 0 and states(study).get("WAITING", 0) == 0


def test_a_fast_exit_waits_for_threads_runs_exit_handlers_and_flushes(tmp_path):
    script = """
import atexit, sys, threading, time
from pathlib import Path
from hpsearch.console import exit_fast

folder = Path(sys.argv[1])
def slow_writer():
    time.sleep(0.3)
    (folder / "thread").write_text("finished")
threading.Thread(target=slow_writer).start()
atexit.register(lambda: (folder / "handler").write_text("ran"))
print("the last line, still in the buffer", end="")
exit_fast(3)
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True,
                         text=True, timeout=120, env=env, cwd=ROOT)
    assert out.returncode == 3, out.stderr
    assert out.stdout == "the last line, still in the buffer"
    assert (tmp_path / "thread").read_text() == "finished"
    assert (tmp_path / "handler").read_text() == "ran"
    if os.path.exists("/dev/full"):  # output that cannot be written is an error, as in Python
        with open("/dev/full", "w") as full:
            lost = subprocess.run([sys.executable, "-c", script.replace("exit_fast(3)",
                                                                        "exit_fast(0)"),
                                   str(tmp_path)], stdout=full, env=env, cwd=ROOT, timeout=120)
        assert lost.returncode == 120


def test_output_that_cannot_be_written_ends_in_one_line_not_a_traceback(study_file, store):
    """A reader that stops early (`| head -1`) ends the command quietly; a full disk behind
    stdout gets one line and exit 120, as Python's own exit reports it. The store is as it was."""
    assert run_cli("--config", study_file, "--storage", store, "--trials", 1).returncode == 0
    db = store[len("sqlite:///"):]
    before = Path(db).read_bytes()
    cmd = [sys.executable, "-m", "hpsearch.cli", "status", "--storage", store]
    reader = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=cli_env())
    reader.stdout.close()  # the reader is gone before the first line
    _, stderr = reader.communicate(timeout=120)
    assert reader.returncode == 0 and b"Traceback" not in stderr, stderr
    if os.path.exists("/dev/full"):
        with open("/dev/full", "w") as full:
            out = subprocess.run(cmd, cwd=ROOT, stdout=full, stderr=subprocess.PIPE, text=True,
                                 env=cli_env(), timeout=120)
        assert out.returncode == 120
        assert out.stderr.strip() == ("hpsearch: error: cannot write the output: No space "
                                      "left on device")
    assert Path(db).read_bytes() == before
