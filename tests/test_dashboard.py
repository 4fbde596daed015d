"""optuna-dashboard, started by `hpsearch dashboard`, on a store a study is writing to."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request

from conftest import ROOT, cli_env, start_cli


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port: int, path: str):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return json.loads(r.read())


def test_the_dashboard_watches_a_running_study(study_file, tmp_path):
    db = tmp_path / "store.db"
    store = f"sqlite:///{db}"
    # Trials of several seconds (about 5 on a 2-core Xeon), so that the dashboard, which rereads
    # the trials at most every 2 s, sees one running at two different epochs: with 40 epochs a
    # trial took under 3 s and was seen running only once.
    trials, epochs = 2, 150
    run = start_cli("--config", study_file, "--storage", store, "--trials", trials, "--epochs",
                    epochs, "--set", "study.pruner='none'", "--set", "data.image_size=16")
    deadline = time.monotonic() + 120
    while not db.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    port = free_port()
    log = open(tmp_path / "dashboard.log", "w+")  # a pipe would fill with access lines
    dash = subprocess.Popen(
        [sys.executable, "-m", "hpsearch.cli", "dashboard", "--storage", store, "--port",
         str(port)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True, env=cli_env())
    try:
        grew, artifacts, study_id = False, False, None
        seen_running: dict = {}
        deadline = time.monotonic() + 240
        finished_polls = 0
        while time.monotonic() < deadline and not (grew and artifacts) and finished_polls < 5:
            finished_polls += run.poll() is not None
            try:
                summaries = get(port, "/api/studies")["study_summaries"]
            except OSError:
                time.sleep(0.2)  # the server is still starting
                continue
            ids = [s["study_id"] for s in summaries if s["study_name"] == "tiny"]
            if not ids:
                time.sleep(0.1)
                continue
            study_id = ids[0]
            for t in get(port, f"/api/studies/{study_id}")["trials"]:
                steps = len(t["intermediate_values"])
                if t["state"] == "Running" and steps:
                    before = seen_running.setdefault(t["number"], steps)
                    grew = grew or steps > before
                if t["state"] == "Complete" and t["artifacts"]:
                    assert t["artifacts"][0]["filename"] == "weights.pt"
                    artifacts = True
            time.sleep(0.1)
        assert study_id is not None, "the dashboard never listed the study"
        assert grew, f"no running trial's curve was seen growing: {seen_running}"
        assert artifacts, "no completed trial showed its weights"
        assert run.wait(timeout=240) == 0, run.stderr.read()
        for _ in range(50):  # the dashboard's copy of the trials is up to 2 s old
            detail = get(port, f"/api/studies/{study_id}")
            if [t["state"] for t in detail["trials"]] == ["Complete"] * trials:
                break
            time.sleep(0.2)
        assert [t["state"] for t in detail["trials"]] == ["Complete"] * trials
        assert all(len(t["intermediate_values"]) == epochs for t in detail["trials"])
    finally:
        dash.terminate()
        run.kill()
        dash.wait(timeout=30)
        run_err = run.communicate(timeout=30)[1]
        log.close()
    dash_log = (tmp_path / "dashboard.log").read_text()
    assert f"Open http://127.0.0.1:{port}/" in dash_log
    assert "locked" not in dash_log + run_err
    assert "Traceback" not in run_err
