"""Several studies of one store side by side: histories, best against wall time, a table."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hpsearch.errors import ReportError
from hpsearch.report import ReportResult, _figure, _write, collect, draw
from hpsearch.report.render import Section, Table, Text, html_page, markdown


@dataclass(frozen=True)
class Progress:
    """A study's finished trials against one x (trial number, or seconds since the study's
    first trial started), as compare draws them."""

    done: tuple  # (xs, validation accuracy) of the completed trials
    pruned: tuple  # (xs, last reported validation accuracy) of the pruned trials
    best: tuple  # (xs, best completed accuracy so far): a step line to the last finished x


def load_studies(storage, names: list) -> list:
    """The studies `names` of a store, or an error naming those it lacks and those it holds."""
    import optuna

    held = optuna.get_all_study_names(storage=storage)
    missing = [name for name in names if name not in held]
    if missing:
        raise ReportError(
            f"no study {', '.join(map(repr, missing))} in this store; its studies: "
            f"{', '.join(sorted(held)) or 'none'} (name two or more of them: hpsearch "
            f"compare STUDY STUDY ...)")
    return [optuna.load_study(study_name=name, storage=storage) for name in names]


def by_trial(trials: list) -> Progress:
    """Each finished trial by its number; the best-so-far line, over the completed trials,
    runs on to the last finished trial, whatever its state."""
    rows = collect.finished_rows(trials)
    numbers, best = collect.best_so_far(trials)
    last = max((t.number for t in trials if t.state.is_finished()), default=None)
    x = {r.number: r.number for r in rows}
    return Progress(_points(rows, "COMPLETE", x), _points(rows, "PRUNED", x),
                    _ended(numbers, best, last))


def by_time(trials: list) -> Progress:
    """Each finished trial at the seconds from the study's first start to its end; the
    best-so-far line over the completed trials runs on to the last trial's end, as the
    comparison table's wall time does."""
    starts = [t.datetime_start for t in trials if t.datetime_start]
    ends = {t.number: t.datetime_complete for t in trials if t.datetime_complete}
    if not starts or not ends:
        return Progress(([], []), ([], []), ([], []))
    origin = min(starts)
    seconds = {n: (end - origin).total_seconds() for n, end in ends.items()}
    rows = sorted((r for r in collect.finished_rows(trials) if r.number in seconds),
                  key=lambda r: seconds[r.number])
    xs, best, top = [], [], float("-inf")
    for r in rows:
        if r.state == "COMPLETE":
            top = max(top, r.value)
            xs.append(seconds[r.number])
            best.append(top)
    return Progress(_points(rows, "COMPLETE", seconds), _points(rows, "PRUNED", seconds),
                    _ended(xs, best, max(seconds.values())))


def _points(rows: list, state: str, x: dict) -> tuple:
    chosen = [r for r in rows if r.state == state]
    return [x[r.number] for r in chosen], [r.value for r in chosen]


def _ended(xs: list, best: list, last) -> tuple:
    """The step line run on to `last`, where the study's last trial finished."""
    if not xs or last is None or last <= xs[-1]:
        return list(xs), list(best)
    return [*xs, last], [*best, best[-1]]


def make_comparison(studies: list, out: Path) -> ReportResult:
    try:
        out.mkdir(parents=True, exist_ok=True)
        return _write_comparison(studies, out)
    except OSError as err:
        raise ReportError(f"cannot write the comparison into {out} ({err.strerror}); pass "
                          f"--out a folder you can write to") from None


def _write_comparison(studies: list, out: Path) -> ReportResult:
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
    history = draw.best_so_far({n: by_trial(t) for n, t in trials.items()},
                               "Validation accuracy by trial", "trial", whole_x=True)
    timing = draw.best_so_far({n: by_time(t) for n, t in trials.items()},
                              "Validation accuracy against wall time",
                              "seconds since the study started")
    sections = [
        Section("Side by side", [Table(
            ["study", "dataset", "sampler", "pruner", "trials", "best val acc", "wall s",
             "epochs run / possible"], rows)]),
        Section("Best so far", [
            _figure(result, history, "histories.png",
                    "Every finished trial (filled: completed; hollow: pruned, at its last "
                    "reported accuracy) and the best completed one so far as a line, which "
                    "runs to the study's last finished trial: the higher and earlier a line "
                    "rises, the better its study searched per trial."),
            _figure(result, timing, "best_against_time.png",
                    "The same against wall time, each trial where it ended: what a pruner "
                    "or sampler buys per second."),
        ]),
    ]
    if any(not t for t in trials.values()):
        sections.append(Section("Note", [Text("A study without trials draws no line.")]))
    title = "hpsearch comparison: " + ", ".join(trials)
    _write(out / "report.md", markdown(title, sections) + "\n", result)
    _write(out / "report.html", html_page(title, sections, out) + "\n", result)
    return result
