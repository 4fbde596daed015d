"""Several studies of one store side by side: histories, best against wall time, a table."""

from __future__ import annotations

from pathlib import Path

from optuna.trial import TrialState

from hpsearch.report import ReportResult, _figure, _write, collect, draw
from hpsearch.report.render import Section, Table, Text, html_page, markdown


def best_by_time(trials: list) -> tuple:
    """(seconds since the study's first trial started, best value so far) per completion."""
    starts = [t.datetime_start for t in trials if t.datetime_start]
    done = sorted((t for t in trials if t.state == TrialState.COMPLETE and t.datetime_complete
                   and t.value is not None), key=lambda t: t.datetime_complete)
    if not starts or not done:
        return [], []
    origin, best, seconds, values = min(starts), float("-inf"), [], []
    for t in done:
        best = max(best, t.value)
        seconds.append((t.datetime_complete - origin).total_seconds())
        values.append(best)
    return seconds, values


def make_comparison(studies: list, out: Path) -> ReportResult:
    out.mkdir(parents=True, exist_ok=True)
    result = ReportResult(out)
    trials = {s.study_name: s.get_trials(deepcopy=False) for s in studies}
    rows = []
    for study in studies:
        settings = collect.study_settings(study)
        summary = collect.summarize(study, trials[study.study_name], settings)
        best = collect.best_trial(trials[study.study_name])
        states = ", ".join(f"{n} {k.lower()}" for k, n in sorted(summary.states.items()))
        rows.append([study.study_name, settings["config"]["data"]["dataset"], summary.sampler,
                     summary.pruner, states, "-" if best is None else f"{best.value:.4f}",
                     f"{summary.wall_seconds:.1f}",
                     f"{summary.epochs_run} / {summary.epochs_possible}"])
    history = draw.best_so_far({n: collect.best_so_far(t) for n, t in trials.items()},
                               "Best validation accuracy by trial", "trial")
    timing = draw.best_so_far({n: best_by_time(t) for n, t in trials.items()},
                              "Best validation accuracy against wall time",
                              "seconds since the study started")
    sections = [
        Section("Side by side", [Table(
            ["study", "dataset", "sampler", "pruner", "trials", "best val acc", "wall s",
             "epochs run / possible"], rows)]),
        Section("Best so far", [
            _figure(result, history, "histories.png",
                    "Best validation accuracy after each trial: the higher and earlier a "
                    "line rises, the better its study searched per trial."),
            _figure(result, timing, "best_against_time.png",
                    "The same against wall time: what a pruner or sampler buys per second."),
        ]),
    ]
    if any(not t for t in trials.values()):
        sections.append(Section("Note", [Text("A study without trials draws no line.")]))
    title = "hpsearch comparison: " + ", ".join(trials)
    _write(out / "report.md", markdown(title, sections) + "\n", result)
    _write(out / "report.html", html_page(title, sections, out) + "\n", result)
    return result
