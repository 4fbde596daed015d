"""What optuna-dashboard shows of a study beyond its trials, and the server of
`hpsearch dashboard`.

A report is attached to its study (its files as study artifacts, its summary as the study's
note), so the dashboard offers it for download. The server is optuna-dashboard's WSGI app
under wsgiref, as its run_server does, with these changes: the access log is the caller's
(quiet unless asked); the attributes hpsearch keeps for itself (a study's settings, a trial's
owner and history) are shown as a line a person reads, not as raw JSON; and an artifact is
downloaded under its file name, weights files as bytes whatever type their record says.
"""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path
from typing import Callable, Optional

from hpsearch import records
from hpsearch.errors import StorageError

# The report's files the dashboard offers, with the type each is served as.
REPORT_FILES = {"report.pdf": "application/pdf", "report.html": "text/html",
                "report.md": "text/markdown", "best_config.json": "application/json",
                "next.toml": "application/toml"}
BYTES = "application/octet-stream"
WEIGHTS_SUFFIX = ".pt"


def attach_report(study, artifact_store, files: list, summary_markdown: str) -> None:
    """Upload `files` as artifacts of the study and save `summary_markdown` as its note.

    A file whose name an earlier report attached replaces that artifact's content under the
    same id. Neither Optuna nor the dashboard can delete an artifact's record: the dashboard
    sets it to `null`, and Optuna's get_all_artifact_meta then raises TypeError for the whole
    study; so a second report rewrites the first one's files instead of adding new records.
    (A backup keeps the content it first copied: backup.py copies each artifact file once.)
    """
    import optuna
    import optuna_dashboard

    attached = records.study_artifacts(study)
    for path in map(Path, files):
        if path.name in attached:
            with open(path, "rb") as f:
                artifact_store.write(attached[path.name], f)
        else:
            optuna.artifacts.upload_artifact(
                artifact_store=artifact_store, file_path=str(path), study_or_trial=study,
                mimetype=REPORT_FILES.get(path.name, BYTES))
    optuna_dashboard.save_note(study, summary_markdown)


def attach_to_study(study, artifact_store: Callable, result, folder: Path) -> Optional[str]:
    """After a report: its files and summary attached to the study (see attach_report), the
    test accuracy it measured recorded for `hpsearch best`, and the objective named for the
    dashboard where the study predates that. `artifact_store()` opens the
    store's weights folder. Returns None, or why the study could not take them (a store or
    folder this user may only read): the report itself is written either way."""
    from optuna.exceptions import StorageInternalError
    from sqlalchemy.exc import SQLAlchemyError

    try:
        attach_report(study, artifact_store(),
                      [f for f in result.files if f.name in REPORT_FILES],
                      report_note(result.best, folder))
        records.write_tested(study, result.best)
        records.name_the_metric(study)  # a study stored before it was named
    except (OSError, SQLAlchemyError, StorageInternalError) as err:
        cause = err.__cause__ if isinstance(err, StorageInternalError) else err
        reason = getattr(cause, "orig", None) or getattr(cause, "strerror", None) or cause
        return f"the report was not attached to the study ({str(reason).splitlines()[0]})"
    return None


def report_note(best: Optional[dict], folder: Path) -> str:
    """The study's note after a report: the best trial, its accuracies and parameters, and
    where the report lies. `best` is best_config.json's content (None: nothing completed)."""
    lines = ["## Report", ""]
    if best is None:
        lines.append("No trial has completed yet, so there is no best configuration.")
    else:
        lines.append(f"Best: trial {best['trial']}, validation accuracy "
                     f"{best['validation_accuracy']:.4f}.")
        if best.get("test_accuracy") is not None:
            size = f" on {best['test_size']} held-out images" if best.get("test_size") else ""
            lines.append(f"Test accuracy {best['test_accuracy']:.4f}{size}, measured once.")
        lines += ["", "| parameter | value |", "|---|---:|"]
        lines += [f"| {name} | {_value(v)} |" for name, v in best["params"].items()]
    lines += ["", f"Written to `{folder}`; its files are attached to this study as artifacts."]
    return "\n".join(lines) + "\n"


def _value(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


# --- the server ---------------------------------------------------------------------------


def app(storage, artifact_store=None) -> Callable:
    """optuna-dashboard's WSGI app, with the attributes hpsearch keeps for itself shown
    readably (see readable_study_attrs, readable_trial_attrs) and each artifact downloaded
    under its file name; weights files are served as application/octet-stream, which stores
    written before hpsearch named the type do not say."""
    import optuna_dashboard

    dashboard = optuna_dashboard.wsgi(storage, artifact_store=artifact_store)

    def application(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if environ.get("REQUEST_METHOD", "GET") == "GET" and STUDY_API.fullmatch(path):
            return _readable(dashboard, storage, environ, start_response)
        try:
            found = _artifact_record(storage, path) if path.startswith("/artifacts/") else None
        except KeyError:  # no such study or trial: the dashboard's lookup fails with a 500
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"Not Found"]
        if found is None:
            return dashboard(environ, start_response)
        meta, name = found
        weights = str(meta.get("filename")).endswith(WEIGHTS_SUFFIX)

        def named(status: str, headers: list, exc_info=None):
            if status.startswith("200"):
                if weights:
                    headers = [(k, v) for k, v in headers if k.lower() != "content-type"]
                    headers.append(("Content-Type", records.WEIGHTS_MIMETYPE))
                # Without it a browser saves the file under its id (a UUID) when the link is
                # opened rather than clicked in the page; report files open in the browser.
                kind = "attachment" if weights else "inline"
                headers.append(("Content-Disposition", f'{kind}; filename="{name}"'))
            return start_response(status, headers, exc_info)

        return dashboard(environ, named)

    return application


def _artifact_record(storage, path: str) -> Optional[tuple]:
    """(record, download name) of /artifacts/STUDY/TRIAL/ID (a trial's artifact: the name is
    `STUDY-trialN-FILE`) or /artifacts/STUDY/ID (a study's: `STUDY-FILE`), by the record
    Optuna keeps; None where there is none (the dashboard answers 404, or serves one it
    keeps elsewhere, as it does). Raises KeyError when there is no such study or trial."""
    parts = path.strip("/").split("/")[1:]
    try:
        study_id = int(parts[0])
        if len(parts) == 3:
            trial = storage.get_trial(int(parts[1]))
            attrs, prefix = trial.system_attrs, f"trial{trial.number}-"
        elif len(parts) == 2:
            attrs, prefix = storage.get_study_system_attrs(study_id), ""
        else:
            return None
        meta = json.loads(attrs.get(records.ARTIFACT_KEY_PREFIX + parts[-1]) or "null")
        if not isinstance(meta, dict) or not meta.get("filename"):
            return None
        name = f"{storage.get_study_name_from_id(study_id)}-{prefix}{meta['filename']}"
    except (ValueError, IndexError):  # not a path to an artifact: the dashboard answers 404
        return None
    return meta, re.sub(r"[^A-Za-z0-9._-]+", "-", name)  # a header's quoted ASCII


# GET /api/studies (every study) and /api/studies/ID (one, with its trials): the JSON the
# pages show attributes from.
STUDY_API = re.compile(r"/api/studies(/[0-9]+)?")


def _readable(dashboard, storage, environ, start_response):
    """The dashboard's answer to a study request, its attributes made readable."""
    answer: dict = {}

    def keep(status: str, headers: list, exc_info=None):
        answer.update(status=status, headers=headers, exc_info=exc_info)
        return lambda data: None

    body = dashboard(environ, keep)
    try:
        raw = b"".join(body)
    finally:
        if hasattr(body, "close"):
            body.close()
    headers = answer["headers"]
    if answer["status"].startswith("200"):
        try:
            raw = json.dumps(_made_readable(json.loads(raw), storage,
                                            environ["PATH_INFO"])).encode()
        except (KeyError, TypeError, ValueError):  # not the answer it was checked against
            pass
        headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
        headers.append(("Content-Length", str(len(raw))))
    start_response(answer["status"], headers, answer["exc_info"])
    return [raw]


def _made_readable(data: dict, storage, path: str) -> dict:
    """/api/studies or /api/studies/ID's answer (`data`), its attributes made readable."""
    found = STUDY_API.fullmatch(path).group(1)
    ours = False  # a study hpsearch made: its trials' attributes are hpsearch's too
    for study in data.get("study_summaries") or [data]:
        study_id = int(found[1:]) if found else study["study_id"]
        stored = storage.get_study_user_attrs(study_id)
        ours = isinstance(stored.get(records.SETTINGS_ATTR), dict)
        study["user_attrs"] = readable_study_attrs(study.get("user_attrs") or [], stored)
    if not (found and ours):  # a list of studies has no trials; another tool's keep theirs
        return data
    for trial in (data.get("trials") or []) + (data.get("best_trials") or []):
        trial["user_attrs"] = readable_trial_attrs(trial.get("user_attrs") or [],
                                                   len(trial.get("intermediate_values") or []))
    return data


def readable_study_attrs(shown: list, stored: dict) -> list:
    """The study's attributes as the dashboard shows them (`[{"key", "value"}]`), the ones
    hpsearch keeps rewritten from their stored values (`stored`) into a line a person reads:
    the dashboard shows JSON, cut after 1,024 characters."""
    lines = {records.SETTINGS_ATTR: settings_line, records.TESTED_ATTR: tested_line,
             records.TIME_SPENT_ATTR: lambda s: f"{s:.1f} s running trials"}
    shown = [_rewritten(a, lines.get(a["key"]), stored.get(a["key"])) for a in shown]
    # The intermediate values chart, beside this table, names its axes "Objective Value" and
    # "Step" whatever the study says (optuna-dashboard 0.21 reads no setting for them).
    made_here = isinstance(stored.get(records.SETTINGS_ATTR), dict)
    return shown + [CHART_LEGEND] * made_here


CHART_LEGEND = {"key": "intermediate values",
                "value": "each trial's validation accuracy (Objective Value) after each epoch "
                         "(Step)"}


def readable_trial_attrs(shown: list, epochs: int) -> list:
    """A trial's attributes as the dashboard shows them, its owner record (the process that
    ran it, with what a later run needs to prove it dead) and its per-epoch history (the
    note's table) in a few words. `epochs`: how many it reported."""
    lines = {records.OWNER_ATTR: owner_line, records.N_PARAMS_ATTR: lambda n: f"{n:,} parameters",
             records.HISTORY_ATTR: lambda h: f"{epochs} epoch{'s' * (epochs != 1)}: the table "
                                             f"in the note"}
    return [_rewritten(a, lines.get(a["key"]), _json(a["value"]) if a["key"] in lines else None)
            for a in shown]


def _json(value: str):
    try:
        return json.loads(value)
    except ValueError:  # a plain string, or JSON the dashboard cut
        return value


def _rewritten(attr: dict, line: Optional[Callable], value) -> dict:
    """`attr` with its value written by `line`, or as it was where `line` cannot read it (a
    record of another shape, made by something other than hpsearch)."""
    try:
        return {**attr, "value": line(value)} if line is not None else attr
    except (AttributeError, KeyError, TypeError, ValueError):
        return attr


def owner_line(owner: dict) -> str:
    """`cpu (fp32), process 10161 on vm`."""
    device = " ".join(filter(None, [owner.get("device"), owner.get("precision") and
                                    f"({owner['precision']})"]))
    where = " on ".join(filter(None, ["pid" in owner and f"process {owner['pid']}",
                                      owner.get("host")]))
    if not (device or where):
        raise ValueError("not an owner record")
    return ", ".join(filter(None, [device, where]))


def settings_line(settings: dict) -> str:
    """The study's stored settings in a sentence: the data, the search, its space and the
    versions it was run with."""
    cfg, data = settings["config"], settings.get("data") or {}
    study, shape = cfg["study"], cfg["data"]
    sizes = data.get("sizes") or {}
    images = " / ".join(f"{sizes[k]} {k}" for k in ("train", "val", "test") if k in sizes)
    classes = f", {len(data['classes'])} classes" if data.get("classes") else ""
    searched = [f"{name} {_range(v)}" for name, v in cfg["space"].items()
                if isinstance(v, (dict, list))]
    fixed = [f"{name} {_value(v)}" for name, v in cfg["space"].items()
             if not isinstance(v, (dict, list))]
    versions = ", ".join(f"{k} {v}" for k, v in (settings.get("versions") or {}).items()
                         if k in ("hpsearch", "optuna", "torch") and v)
    epochs = settings.get("max_epochs") or cfg.get("train", {}).get("epochs")
    return "; ".join(filter(None, [
        f"{shape['dataset']} at {shape['image_size']} px" + (f" ({images} images{classes})"
                                                             if images else ""),
        f"{study['sampler']} sampler, {study['pruner']} pruner, seed {study['seed']}, "
        f"at most {epochs} epochs",
        "searched: " + ", ".join(searched) if searched else "",
        "fixed: " + ", ".join(fixed) if fixed else "", versions]))


def _range(v) -> str:
    if isinstance(v, list):
        return " | ".join(map(_value, v))
    step = f" step {_value(v['step'])}" if v.get("step") else ""
    return f"{_value(v['low'])}..{_value(v['high'])}{' log' if v.get('log') else ''}{step}"


def tested_line(tested: dict) -> str:
    size = f" on {tested['test_size']} held-out images" if tested.get("test_size") else ""
    return f"trial {tested['trial']}: test accuracy {tested['test_accuracy']:.4f}{size}"


def serve(application: Callable, host: str, port: int,
          on_request: Optional[Callable[[str], None]] = None) -> None:
    """Serve `application` on host:port until interrupted, as optuna-dashboard's run_server
    does (one request at a time). Each request's log line goes to `on_request`, or nowhere:
    the dashboard polls every few seconds. Raises OSError when the address cannot be bound."""
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    class Handler(WSGIRequestHandler):
        def log_message(self, format: str, *args) -> None:
            if on_request is not None:
                on_request(f"{self.address_string()} - - [{self.log_date_time_string()}] "
                           f"{format % args}")

    class Server(WSGIServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    server = make_server(host, port, application, server_class=Server, handler_class=Handler)
    try:
        server.serve_forever()
    finally:
        server.server_close()


def report_and_attach(study, spec, out, artifacts: Optional[str] = None,
                      data_dir: Optional[str] = None, retrain_device=None) -> tuple:
    """`hpsearch report` and the notebook's study.report(): the report of `study` (of the
    store `spec`) written into `out`, then attached to the study (see attach_to_study).
    `artifacts`: the weights folder given by the user, if any. Returns (the ReportResult,
    why the study could not take the files or None)."""
    from hpsearch.data import study_data
    from hpsearch.records import stored_settings
    from hpsearch.report import make_report
    from hpsearch.storage import artifact_folder, existing_artifacts, open_artifacts

    store = existing_artifacts(spec, artifacts)
    settings = stored_settings(study) or {}

    def load_data(cfg):
        return study_data(cfg, settings.get("split_seed", cfg.study.seed),
                          (settings.get("data") or {}).get("fingerprint"))

    result = make_report(study, out, artifacts=store, load_data=load_data, data_dir=data_dir,
                         retrain_device=retrain_device, storage=spec.as_option)
    unattached = attach_to_study(
        study, lambda: store or open_artifacts(artifact_folder(spec, artifacts)), result, out)
    return result, unattached


def start_in_background(store: str, first_port: int) -> tuple:
    """(process, port) of `hpsearch dashboard` on `store`, started in the background on the
    first free port from `first_port` and answering there; it ends with this process."""
    import atexit
    import subprocess
    import sys

    port = _free_port(first_port)
    process = subprocess.Popen([sys.executable, "-m", "hpsearch.cli", "dashboard", "--storage",
                                store, "--port", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    atexit.register(lambda: process.poll() is None and process.terminate())
    if not _answers(port, process):
        why = process.stderr.read().strip().splitlines() if process.poll() is not None else []
        if process.poll() is None:
            process.terminate()
        raise StorageError(f"the dashboard did not start on port {port}"
                           + (f": {why[-1]}" if why else ""))
    return process, port


def _free_port(first: int) -> int:
    import socket

    for port in range(first, first + 50):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) != 0:
                return port
    raise StorageError(f"no free port from {first} to {first + 49}; pass port=N")


def _answers(port: int, process, seconds: float = 30.0) -> bool:
    """Whether the server answers on `port` within `seconds` (False once its process ends)."""
    import socket
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.2)
    return False
