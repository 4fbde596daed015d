"""optuna-dashboard, started by `hpsearch dashboard`, on a store a study is writing to; what
hpsearch writes for it (the metric's name, a trial's history as its note, a report's files);
and the weights served as bytes, with the server's access log quiet unless asked for."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request

import optuna
import optuna_dashboard
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from conftest import ROOT, cli_env, hpsearch, load, run_cli, start_cli
from hpsearch import records
from hpsearch.storage import open_storage, parse_storage


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port: int, path: str):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return json.loads(r.read())


def content_type(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        r.read()
        return r.headers["Content-Type"]


def start_dashboard(store: str, log, *flags) -> tuple:
    """`hpsearch dashboard` on a free port, its output into the file `log` (a pipe would fill
    with access lines), once it answers. Returns (process, port)."""
    port = free_port()
    dash = subprocess.Popen(
        [sys.executable, "-m", "hpsearch.cli", "dashboard", "--storage", store, "--port",
         str(port), *map(str, flags)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        text=True, env=cli_env())
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            get(port, "/api/studies")
            return dash, port
        except OSError:
            assert dash.poll() is None, "the dashboard stopped"
            time.sleep(0.2)
    dash.kill()
    raise AssertionError("the dashboard never answered")


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
        assert detail["objective_names"] == ["validation accuracy"]
        for t in detail["trials"]:  # 150 rows: a note stored in several pieces, read whole
            rows = t["note"]["body"].splitlines()[4:]
            assert len(rows) == epochs and rows[-1].startswith(f"| {epochs} | ")
            assert f" | {t['values'][0]:.4f} | " in rows[-1]  # the last val acc, the value
        weights = detail["trials"][0]["artifacts"][0]
        path = f"/artifacts/{study_id}/{detail['trials'][0]['trial_id']}/{weights['artifact_id']}"
        assert content_type(port, path) == "application/octet-stream"
    finally:
        dash.terminate()
        run.kill()
        dash.wait(timeout=30)
        run_err = run.communicate(timeout=30)[1]
        log.close()
    dash_log = (tmp_path / "dashboard.log").read_text()
    assert f"Open http://127.0.0.1:{port}/" in dash_log
    assert "GET /" not in dash_log  # hundreds of requests, no access log without --verbose
    assert "locked" not in dash_log + run_err
    assert "Traceback" not in run_err


def test_a_report_is_attached_once_and_old_weights_are_served_as_bytes(study_file, tmp_path):
    store = f"sqlite:///{tmp_path / 'store.db'}"
    assert run_cli("--config", study_file, "--storage", store, "--trials", 3).returncode == 0
    # A store written before hpsearch named the weights' type: the one guessed from ".pt".
    legacy = optuna.create_study(study_name="legacy", storage=store)
    trial = legacy.ask()
    (tmp_path / "weights.pt").write_bytes(b"weights")
    weights_id = optuna.artifacts.upload_artifact(
        artifact_store=optuna.artifacts.FileSystemArtifactStore(tmp_path / "artifacts"),
        file_path=str(tmp_path / "weights.pt"), study_or_trial=trial,
        mimetype="application/vnd.snesdev-page-table")
    legacy.tell(trial, 0.5)
    for _ in range(2):
        out = hpsearch("report", "--config", study_file, "--storage", store, "--out",
                       tmp_path / "report")
        assert out.returncode == 0, out.stderr
    # `best` shows what the report measured on the test split (hpsearch/records.py: tested).
    best = hpsearch("best", "--config", study_file, "--storage", store)
    assert best.returncode == 0, best.stderr
    tested = json.loads((tmp_path / "report" / "best_config.json").read_text())
    assert f"Test accuracy        {tested['test_accuracy']:.4f} on " in best.stdout

    with open(tmp_path / "dashboard.log", "w+") as log:
        dash, port = start_dashboard(store, log, "--verbose")
        try:
            ids = {s["study_name"]: s["study_id"] for s in get(port, "/api/studies")[
                "study_summaries"]}
            detail = get(port, f"/api/studies/{ids['tiny']}")
            old = get(port, f"/api/studies/{ids['legacy']}")["trials"][0]
            served = content_type(port, f"/artifacts/{ids['legacy']}/{old['trial_id']}/"
                                        f"{weights_id}")
        finally:
            dash.terminate()
            dash.wait(timeout=30)
    names = sorted(a["filename"] for a in detail["artifacts"])
    expected = sorted(p.name for p in (tmp_path / "report").iterdir()
                      if p.name in ("report.pdf", "report.html", "report.md",
                                    "best_config.json", "next.toml"))
    assert names == expected and "report.md" in names  # the second report replaced the first
    assert len(list((tmp_path / "artifacts").iterdir())) == 3 + 1 + len(names)
    assert "Best: trial" in detail["note"]["body"] and str(tmp_path / "report") in \
        detail["note"]["body"]
    assert served == "application/octet-stream"
    assert '"GET /api/studies HTTP/1.1" 200' in (tmp_path / "dashboard.log").read_text()


def test_a_study_stored_before_its_metric_was_named_is_named_on_resume(study_file, store):
    assert run_cli("--config", study_file, "--storage", store, "--trials", 1).returncode == 0
    study = load(store)
    assert study.metric_names == ["validation accuracy"]
    study._storage.set_study_system_attr(study._study_id, "study:metric_names", None)  # older
    assert load(store).metric_names is None
    assert run_cli("--config", study_file, "--storage", store, "--trials", 2).returncode == 0
    assert load(store).metric_names == ["validation accuracy"]


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_a_running_trials_history_note_reads_back_in_the_dashboard(kind, tmp_path):
    if kind == "sqlite":
        storage = open_storage(parse_storage(f"sqlite:///{tmp_path / 'store.db'}"))
    else:
        storage = JournalStorage(JournalFileBackend(str(tmp_path / "journal.log")))
    study = optuna.create_study(study_name="notes", storage=storage)
    records.name_the_metric(study)
    history = {"train_loss": [0.5] * 60, "train_acc": [0.8] * 60, "val_loss": [0.25] * 60,
               "val_acc": [0.9] * 59 + [0.91234], "epoch_seconds": [0.125] * 60}
    trial = study.ask()
    records.write_history_note(trial, history)  # running: the objective writes it at its end
    study.tell(trial, 0.91234)
    note = optuna_dashboard.get_note(trial)
    assert len(note) > 2045  # stored in pieces
    assert note.splitlines()[2] == ("| epoch | train loss | train acc | val loss | val acc | "
                                    "seconds |")
    assert note.splitlines()[-1] == "| 60 | 0.5000 | 0.8000 | 0.2500 | 0.9123 | 0.12 |"
    assert study.metric_names == ["validation accuracy"]
    # The dashboard's own edit of it takes the next version, as from its page.
    optuna_dashboard.save_note(trial, "edited")
    assert optuna_dashboard.get_note(trial) == "edited"


def test_a_study_artifact_deleted_in_the_dashboard_is_skipped_not_a_crash(tmp_path):
    """The dashboard deletes a study's artifact by setting its record to null, after which
    Optuna's get_all_artifact_meta raises TypeError: hpsearch's read skips it."""
    store = optuna.artifacts.FileSystemArtifactStore(tmp_path)
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'store.db'}")
    for name in ("report.md", "best_config.json"):
        (tmp_path / name).write_text("{}")
    ids = [optuna.artifacts.upload_artifact(artifact_store=store, file_path=str(tmp_path / n),
                                            study_or_trial=study)
           for n in ("report.md", "best_config.json")]
    assert records.study_artifacts(study) == {"report.md": ids[0], "best_config.json": ids[1]}
    # As the dashboard's DELETE /api/artifacts/<study>/<id> writes it.
    study._storage.set_study_system_attr(study._study_id, "artifacts:" + ids[0], "null")
    assert records.study_artifacts(study) == {"best_config.json": ids[1]}


def test_a_store_that_cannot_take_the_report_leaves_it_written_and_says_why(tmp_path):
    """A report on a store or weights folder this user may only read is still written; the
    study just does not get its files, and one line says why."""
    import types

    from hpsearch import board

    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 's.db'}")
    (tmp_path / "report.md").write_text("# a report\n")
    result = types.SimpleNamespace(files=[tmp_path / "report.md"], best=None)

    def unwritable():
        raise PermissionError(13, "Permission denied")

    why = board.attach_to_study(study, unwritable, result, tmp_path)
    assert why == "the report was not attached to the study (Permission denied)"

    # A store this user may only read: Optuna wraps the database's refusal.
    url = f"sqlite:///file:{tmp_path / 's.db'}?mode=ro&uri=true"
    read_only = optuna.load_study(study_name="s", storage=url)
    store = optuna.artifacts.FileSystemArtifactStore(str(tmp_path / "artifacts"))
    (tmp_path / "artifacts").mkdir()
    why = board.attach_to_study(read_only, lambda: store, result, tmp_path)
    assert why == ("the report was not attached to the study (attempt to write a readonly "
                   "database)")


def wsgi_get(application, path: str) -> tuple:
    """(status, headers, body) of GET `path` from a WSGI app, as the server passes it on."""
    from wsgiref.util import setup_testing_defaults

    environ: dict = {"PATH_INFO": path, "REQUEST_METHOD": "GET"}
    setup_testing_defaults(environ)
    answer: dict = {}

    def start_response(status, headers, exc_info=None):
        answer.update(status=status, headers=dict(headers))

    body = b"".join(application(environ, start_response))
    return answer["status"], answer["headers"], body


def test_the_dashboard_says_why_a_trial_was_pruned_and_shows_attributes_readably(study_file,
                                                                                  tmp_path):
    """Issue 31, point 6: a pruned trial says why (attribute and note); the owner record, the
    history and the study's settings are a line each, not raw or cut JSON; the chart's axes
    are explained; a download is named."""
    from hpsearch import board

    store = f"sqlite:///{tmp_path / 'store.db'}"
    out = run_cli("--config", study_file, "--storage", store, "--trials", 6, "--set",
                  "study.pruner='sha'")
    assert out.returncode == 0, out.stderr
    study = load(store)
    pruned = [t for t in study.trials if t.state.name == "PRUNED"]
    assert pruned, "successive halving pruned none of 6 trials"
    for t in pruned:  # stored, as the dashboard shows it
        assert t.user_attrs["prune_reason"].startswith("after epoch 1 of 2: val acc 0.")
        assert t.user_attrs["prune_reason"].endswith(
            ", not in the top share kept at that epoch (successive halving)")
    # What hpsearch needs is stored as it was: resume and ownership read it.
    assert study.trials[0].user_attrs["owner"]["pid"] > 0
    assert study.user_attrs["hpsearch"]["config"]["study"]["pruner"] == "sha"
    folder = tmp_path / "artifacts"
    (tmp_path / "report.md").write_text("# report\n")
    report_id = optuna.artifacts.upload_artifact(
        artifact_store=optuna.artifacts.FileSystemArtifactStore(str(folder)),
        file_path=str(tmp_path / "report.md"), study_or_trial=study)

    application = board.app(open_storage(parse_storage(store)),
                            optuna.artifacts.FileSystemArtifactStore(str(folder)))
    status, _, body = wsgi_get(application, "/api/studies")
    summary = json.loads(body)["study_summaries"][0]
    study_id = summary["study_id"]
    status, headers, body = wsgi_get(application, f"/api/studies/{study_id}")
    assert status.startswith("200") and int(headers["Content-Length"]) == len(body)
    detail = json.loads(body)
    assert detail["objective_names"] == ["validation accuracy"]
    for attrs in (summary["user_attrs"], detail["user_attrs"]):
        shown = {a["key"]: a["value"] for a in attrs}
        settings = shown["hpsearch"]
        assert settings.startswith("digits at 8 px (") and "sha pruner, seed 0" in settings
        assert "searched: lr 0.001..0.1 log, depth 1..2" in settings
        assert settings.endswith(study.user_attrs["hpsearch"]["versions"]["torch"])  # whole
        assert shown["intermediate values"].endswith("(Objective Value) after each epoch (Step)")
    trials = {t["number"]: {a["key"]: a["value"] for a in t["user_attrs"]}
              for t in detail["trials"]}
    notes = {t["number"]: t["note"]["body"].splitlines() for t in detail["trials"]}
    for t in pruned:  # the note, above the trial's attributes, opens with why
        assert notes[t.number][0] == f"**Pruned {t.user_attrs['prune_reason']}.**"
        assert notes[t.number][4].startswith("| epoch | train loss |")
    assert notes[0][0].startswith("Per-epoch history: the intermediate values are its val acc")
    for t in study.trials:
        shown, owner = trials[t.number], t.user_attrs["owner"]
        assert shown["owner"] == (f"cpu ({owner['precision']}), process {owner['pid']} on "
                                  f"{owner['host']}")
        epochs = len(t.intermediate_values)
        assert shown["history"] == f"{epochs} epoch{'s' * (epochs > 1)}: the table in the note"
        assert shown["n_params"] == f"{t.user_attrs['n_params']:,} parameters"
        assert shown.get("prune_reason") == t.user_attrs.get("prune_reason")

    # Downloads are named: a trial's weights as a file to save, a report file to open.
    done = next(t for t in detail["trials"] if t["state"] == "Complete")
    weights = done["artifacts"][0]
    status, headers, body = wsgi_get(
        application, f"/artifacts/{study_id}/{done['trial_id']}/{weights['artifact_id']}")
    assert status.startswith("200") and headers["Content-Type"] == "application/octet-stream"
    assert headers["Content-Disposition"] == \
        f'attachment; filename="tiny-trial{done["number"]}-weights.pt"'
    assert body == (folder / weights["artifact_id"]).read_bytes()
    status, headers, body = wsgi_get(application, f"/artifacts/{study_id}/{report_id}")
    assert headers["Content-Disposition"] == 'inline; filename="tiny-report.md"'
    assert body == b"# report\n"
    # No such trial or study: not found, as the dashboard answers an unknown artifact.
    for path in (f"/artifacts/{study_id}/999/{report_id}", f"/artifacts/99/{report_id}"):
        assert wsgi_get(application, path)[0].startswith("404")


def test_attributes_of_other_shapes_are_shown_as_they_are():
    """A study hpsearch did not make, or a record of an older hpsearch, keeps what the
    dashboard shows; an older record missing later fields still reads as a line."""
    from hpsearch import board

    foreign = [{"key": "hpsearch", "value": "notes"}, {"key": "owner", "value": "ana"}]
    assert board.readable_study_attrs(foreign, {"hpsearch": "notes"}) == foreign
    assert board.readable_trial_attrs(foreign, 3) == foreign
    older = {"config": {"study": {"sampler": "tpe", "pruner": "median", "seed": 1},
                        "data": {"dataset": "mnist", "image_size": 28},
                        "train": {"epochs": 5}, "space": {"lr": {"low": 0.001, "high": 0.1}}}}
    shown = board.readable_study_attrs([{"key": "hpsearch", "value": "{...cut"}],
                                       {"hpsearch": older})
    assert shown[0]["value"] == ("mnist at 28 px; tpe sampler, median pruner, seed 1, at most "
                                 "5 epochs; searched: lr 0.001..0.1")
    assert board.readable_trial_attrs(
        [{"key": "owner", "value": '{"pid": 1, "device": "cpu"}'}], 2)[0]["value"] == \
        "cpu, process 1"
