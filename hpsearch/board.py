"""What optuna-dashboard shows of a study beyond its trials, and the server of
`hpsearch dashboard`.

A report is attached to its study (its files as study artifacts, its summary as the study's
note), so the dashboard offers it for download. The server is optuna-dashboard's WSGI app
under wsgiref, as its run_server does, with two changes: the access log is the caller's
(quiet unless asked), and weights files are served as bytes whatever type their record says.
"""

from __future__ import annotations

import json
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
    """optuna-dashboard's WSGI app, with weights files served as application/octet-stream:
    stores written before hpsearch named the type hold the one guessed from the file name."""
    import optuna_dashboard

    dashboard = optuna_dashboard.wsgi(storage, artifact_store=artifact_store)

    def application(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if not path.startswith("/artifacts/") or not _is_weights(storage, path):
            return dashboard(environ, start_response)

        def as_bytes(status: str, headers: list, exc_info=None):
            if status.startswith("200"):
                headers = [(k, v) for k, v in headers if k.lower() != "content-type"]
                headers.append(("Content-Type", records.WEIGHTS_MIMETYPE))
            return start_response(status, headers, exc_info)

        return dashboard(environ, as_bytes)

    return application


def _is_weights(storage, path: str) -> bool:
    """Whether /artifacts/STUDY/TRIAL/ID (a trial's) or /artifacts/STUDY/ID (a study's) is
    a .pt file, by the name in its record."""
    parts = path.strip("/").split("/")[1:]
    try:
        if len(parts) == 3:
            attrs = storage.get_trial_system_attrs(int(parts[1]))
        elif len(parts) == 2:
            attrs = storage.get_study_system_attrs(int(parts[0]))
        else:
            return False
        meta = json.loads(attrs.get(records.ARTIFACT_KEY_PREFIX + parts[-1]) or "null")
    except (KeyError, ValueError):  # no such trial or study: the dashboard answers 404
        return False
    return isinstance(meta, dict) and str(meta.get("filename")).endswith(WEIGHTS_SUFFIX)


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
