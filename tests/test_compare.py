"""`hpsearch compare`: its charts show every finished trial its table counts, pruned ones
included, on whole trial numbers; its errors are one line on stderr, exit status 2, and
change nothing stored."""

from __future__ import annotations

from datetime import datetime, timedelta

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from conftest import hpsearch
from hpsearch.config import load_config
from hpsearch.records import SETTINGS_ATTR
from hpsearch.report import collect, draw
from hpsearch.report.compare import by_time, by_trial, make_comparison

C, P, F = TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL
START = datetime(2026, 1, 5, 9, 0, 0)
# (state, last validation accuracy, seconds from the study's start: started, ended)
ISSUE = [(C, 0.90, 0, 10), (P, 0.70, 10, 14), (C, 0.95, 14, 30), (P, 0.60, 30, 33),
         (P, 0.80, 33, 37)]  # two pruned trials after the last completed one
FAILED_LAST = [(P, 0.50, 0, 5), (C, 0.85, 5, 20), (F, None, 20, 26)]
LONG = [(C, 0.9 + 0.001 * i, 4 * i, 4 * i + 3) for i in range(11)]  # trials 0..10


def trial(state: TrialState, value, start: float, end: float):
    """A finished trial with its epochs' accuracies, the last one `value`."""
    curve = [] if value is None else [value - 0.1, value]
    frozen = create_trial(state=state, value=value if state == C else None,
                          intermediate_values=dict(enumerate(curve, 1)),
                          user_attrs={"history": {"val_acc": curve}})
    frozen.datetime_start = START + timedelta(seconds=start)
    frozen.datetime_complete = START + timedelta(seconds=end)
    return frozen


def made_by_hpsearch(storage, name: str, trials: list) -> optuna.Study:
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    study.set_user_attr(SETTINGS_ATTR, {"config": load_config(None, []).settings()})
    study.add_trials([trial(*t) for t in trials])
    return study


@pytest.fixture
def stored(tmp_path):
    """(store URL, its file) holding the issue's study, one ending in a failed trial and one
    of eleven trials."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    storage = optuna.storages.RDBStorage(url)
    for name, trials in (("issue", ISSUE), ("failed-last", FAILED_LAST), ("long", LONG)):
        made_by_hpsearch(storage, name, trials)
    storage.engine.dispose()
    return url, tmp_path / "store.db"


def test_every_finished_trial_is_a_point_and_the_line_runs_to_the_last(stored):
    url, _ = stored
    trials = optuna.load_study(study_name="issue", storage=url).get_trials()
    numbers = by_trial(trials)
    assert numbers.done == ([0, 2], [0.90, 0.95])
    assert numbers.pruned == ([1, 3, 4], [0.70, 0.60, 0.80])  # the last reported accuracy
    assert numbers.best == ([0, 2, 4], [0.90, 0.95, 0.95])  # best of the completed, to trial 4
    seconds = by_time(trials)
    assert seconds.pruned[0] == [14.0, 33.0, 37.0]
    assert seconds.best == ([10.0, 30.0, 37.0], [0.90, 0.95, 0.95])
    study = optuna.load_study(study_name="issue", storage=url)
    wall = collect.summarize(study, trials, collect.study_settings(study)).wall_seconds
    assert seconds.best[0][-1] == wall  # where the line ends is the table's wall time

    failed = optuna.load_study(study_name="failed-last", storage=url).get_trials()
    assert by_trial(failed).best == ([1, 2], [0.85, 0.85])  # on to the failed trial 2
    assert by_time(failed).best == ([20.0, 26.0], [0.85, 0.85])
    assert by_trial(failed).pruned == ([0], [0.50])


def test_the_charts_draw_the_pruned_trials_hollow_on_whole_trial_numbers(stored, tmp_path):
    url, _ = stored
    trials = {name: optuna.load_study(study_name=name, storage=url).get_trials()
              for name in ("issue", "long")}
    fig = draw.best_so_far({n: by_trial(t) for n, t in trials.items()}, "t", "trial",
                           whole_x=True)
    draw.save(fig, tmp_path / "histories.png")
    ax = fig.axes[0]
    issue_line, long_line = ax.lines
    assert max(issue_line.get_xdata()) == 4 and max(long_line.get_xdata()) == 10
    fig.draw_without_rendering()
    left, right = ax.get_xlim()
    ticks = [t for t in ax.get_xticks() if left <= t <= right]
    assert len(ticks) >= 3 and all(float(t).is_integer() for t in ticks), ticks  # not 2.5
    hollow = [c for c in ax.collections if len(c.get_offsets()) and not len(c.get_facecolors())]
    assert sorted(x for c in hollow for x, _ in c.get_offsets()) == [1, 3, 4]
    pruned_key = [h for leg in fig.legends for h in leg.legend_handles
                  if h.get_label() == "pruned (last epoch reported)"]
    assert [h.get_markerfacecolor() for h in pruned_key] == ["none"]

    timing = draw.best_so_far({n: by_time(t) for n, t in trials.items()}, "t", "seconds")
    assert max(timing.axes[0].lines[0].get_xdata()) == 37.0


def test_compare_writes_the_table_and_charts_of_what_it_draws(stored, tmp_path):
    url, _ = stored
    studies = [optuna.load_study(study_name=n, storage=url) for n in ("issue", "failed-last")]
    result = make_comparison(studies, tmp_path / "cmp")
    for name in ("report.md", "report.html", "histories.png", "best_against_time.png"):
        assert (tmp_path / "cmp" / name) in result.files
    md = (tmp_path / "cmp" / "report.md").read_text()
    assert "| issue |" in md and "2 complete, 3 pruned" in md and "| 37.0 |" in md


def test_a_study_missing_from_the_store_names_what_compare_takes(stored):
    url, path = stored
    before = path.read_bytes()
    out = hpsearch("compare", "issue", "isue", "--storage", url)
    assert out.returncode == 2 and out.stdout == ""
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "no study 'isue' in this store" in out.stderr
    assert "failed-last, issue, long" in out.stderr
    assert "hpsearch compare STUDY STUDY" in out.stderr and "--study-name" not in out.stderr
    assert path.read_bytes() == before


def test_an_out_folder_that_cannot_be_made_is_one_line(stored, tmp_path):
    url, path = stored
    before = path.read_bytes()
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = hpsearch("compare", "issue", "long", "--storage", url, "--out", blocker / "cmp")
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip().splitlines() == [
        f"hpsearch: error: cannot write the comparison into {blocker / 'cmp'} (Not a "
        f"directory); pass --out a folder you can write to"]
    assert path.read_bytes() == before and blocker.read_text() == "not a folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "store.db"]
