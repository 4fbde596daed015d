"""The best-config report of a study: collect plain data, draw figures, write the files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from hpsearch import records
from hpsearch.errors import ReportError
from hpsearch.report import advice, collect, diagnose, document, facts, results
from hpsearch.report.output import ReportResult, figure as _figure, write_text as _write
from hpsearch.report.pdf import pdf_document
from hpsearch.report.render import html_page, markdown

__all__ = ["ReportResult", "make_report", "_figure", "_write"]  # compare.py uses the last two


def make_report(study, out: Path, artifacts=None, load_data: Optional[Callable] = None,
                data_dir: Optional[str] = None, retrain_device=None,
                storage: Optional[str] = None) -> ReportResult:
    """Write the report of `study` into `out`: report.md, report.html and report.pdf (one
    document, nine sections, the same in each), the charts, best_config.json, next.toml
    (the next study) and study.toml (this one, to run again).

    `load_data(cfg)` returns the study's Dataset and is called only when there is a best
    trial to run on the test split. Weights come from `artifacts`; with `retrain_device` a
    best trial without weights is retrained there (never otherwise). `storage`, the study's
    store as `--storage` takes it, goes into the command that runs the next study, so that
    the two studies share a store (and `hpsearch compare` sets them side by side).
    """
    settings = collect.study_settings(study)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ReportError(f"cannot write the report into {out} ({err.strerror}); pass --out "
                          f"a folder you can write to") from None
    result = ReportResult(out)
    trials = study.get_trials(deepcopy=False)
    cfg = records.config_of(settings, data_dir)
    rows = collect.finished_rows(trials)
    ranked = collect.top_rows(rows, len(rows))
    best = collect.best_trial(trials)
    summary = collect.summarize(study, trials, settings)
    record = settings.get("data") or {}
    sizes = record.get("sizes") or {}
    n_val, classes = int(sizes.get("val", 0)), len(record.get("classes") or [])
    if best is not None:
        result.best = collect.best_config(study, best, settings, cfg)
    data = load_data(cfg) if load_data is not None and best is not None else None
    test_blocks = results.test_split(result, best, cfg, artifacts, study, data,
                                     retrain_device)
    best_row = next((r for r in ranked if best is not None and r.number == best.number), None)
    findings = [] if best_row is None else diagnose.diagnose(
        best_row.history, n_val, classes, int(sizes.get("train", 0)) / max(1, classes))
    finished = sum(summary.states.get(k, 0) for k in ("COMPLETE", "PRUNED"))
    plan = advice.next_study(cfg, ranked, findings, max(1, finished),
                             records.stored_max_epochs(settings))
    test = ((result.test_accuracy, result.best["test_size"])
            if result.test_accuracy is not None else None)
    tied = facts.within_one_image([r.value for r in ranked], best.value, n_val) if best else 0

    sections = [
        document.summary(study.study_name, summary.states, result.best, n_val, classes, tied,
                         test, summary.wall_seconds, summary.device),
        document.dataset(cfg, record, _per_class(data)),
        document.search_space(cfg, finished),
        document.model(result.best, _layers(result.best, record)),
        document.training(cfg, result.best, records.device_of(best) if best else None),
        results.results(result, rows, ranked, trials, best, cfg, test_blocks, findings),
        results.mattered(result, study, trials),
        document.next_study(plan, _next_command(out, storage)),
        document.run(*_run_facts(trials, summary, settings), _command(out)),
    ]
    if result.best is not None:
        _write(out / "best_config.json", json.dumps(result.best, indent=2) + "\n", result)
    _write(out / NEXT_FILE, advice.to_toml(plan.settings,
                                           _next_header(study.study_name, out, storage)),
           result)
    _write(out / STUDY_FILE, advice.to_toml(_as_run(cfg, max(1, finished)),
                                            _study_header(study, out)), result)
    title = f"hpsearch report: {study.study_name}"
    _write(out / "report.md", markdown(title, sections) + "\n", result)
    _write(out / "report.html", html_page(title, sections, out) + "\n", result)
    (out / "report.pdf").write_bytes(pdf_document(title, sections, result.figures))
    result.files.append(out / "report.pdf")
    return result


NEXT_FILE, STUDY_FILE = "next.toml", "study.toml"


def _per_class(data) -> Optional[list]:
    if data is None:
        return None
    counts = [np.bincount(y.cpu().numpy(), minlength=len(data.classes))
              for y in (data.y_train, data.y_val, data.y_test)]
    return [[name, *(int(c[i]) for c in counts)] for i, name in enumerate(data.classes)]


def _layers(best: Optional[dict], record: dict) -> Optional[list]:
    if best is None:
        return None
    channels = len((record.get("normalization") or {}).get("mean") or [1])
    classes = len(record.get("classes") or best.get("classes") or [])
    if classes == 0:
        return None  # a store that does not say what it classified
    return facts.layer_table(best["params"], channels, classes, best["image_size"])


def _run_facts(trials: list, summary, settings: dict) -> tuple:
    starts = [t.datetime_start for t in trials if t.datetime_start]
    ends = [t.datetime_complete for t in trials if t.datetime_complete]
    stored = {k: v for k, v in (settings.get("versions") or {}).items()
              if k in ("hpsearch", "optuna", "torch")}
    now = records.installed_versions(stored)
    return (min(starts) if starts else None, max(ends) if ends else None,
            summary.wall_seconds, summary.device, stored, now)


def _command(out: Path) -> str:
    return f"hpsearch run --config {out / STUDY_FILE} --storage sqlite:///rerun.db"


def _as_run(cfg, trials: int) -> dict:
    """The study as it ran (its stored settings, completed by the defaults of settings it
    predates) as a study file, with what a store does not keep: the trials it finished as
    the target, and the data folder; data paths absolute."""
    ran = cfg.settings()
    return {"study": {**ran["study"], "trials": trials},
            "data": advice.absolute_paths({**ran["data"], "data_dir": cfg.data.data_dir}),
            "train": ran["train"], "space": ran["space"]}


def _next_command(out: Path, storage: Optional[str]) -> str:
    """The next study's command, into the store of this one where it is known."""
    from shlex import quote  # a Drive folder may be "My Drive"

    command = f"hpsearch run --config {quote(str(out / NEXT_FILE))}"
    return f"{command} --storage {quote(storage)}" if storage else command


def _next_header(name: str, out: Path, storage: Optional[str]) -> str:
    where = ("into the same store" if storage else
             "from the folder the study ran in (its store is the default there)")
    return (f"The next study after {name!r}, written by `hpsearch report`: its space is\n"
            f"narrowed around the best trials (see the report's Next study section).\n"
            f"Run it {where}: {_next_command(out, storage)}")


def _study_header(study, out: Path) -> str:
    return (f"The settings study {study.study_name!r} ran with, written by `hpsearch "
            f"report`.\nRun it again into a new store: {_command(out)}")
