"""The report's charts drawn from synthetic rows: normal studies, edge cases, 1,000 trials.

Each chart is saved into the test's own folder; the checks read the Figure back: its width
and type sizes, the zoom of its accuracy axis, its tick labels, its legend and what is on top.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.text import Text

from hpsearch.best import Predictions, predictions_on_test
from hpsearch.data import Dataset
from hpsearch.report import charts, draw
from hpsearch.report.collect import Row
from hpsearch.report.compare import Progress
from hpsearch.report.style import BLACK, BLUE, VERMILION

PARAMS = ["lr", "depth", "width", "dropout", "optimizer"]
CATEGORICAL = {p: p == "optimizer" for p in PARAMS}
LOG = {"lr": True, "width": True}
OUTLIERS = (4, 17, 33)  # trial numbers of completed trials far below the others


def row(number: int, state: str, value: float, params: dict, epochs: int = 10) -> Row:
    ran = epochs if state == "COMPLETE" else max(1, epochs // 3 + number % 3)
    e = np.arange(1, ran + 1)
    curve = list(value - (value - 0.7) * np.exp(-(e - 1) / 1.3))
    curve[-1] = value
    history = {"val_acc": curve, "train_acc": [min(1.0, v + 0.01) for v in curve],
               "val_loss": list(1.5 * np.exp(-e / 3) + 0.05),
               "train_loss": list(1.4 * np.exp(-e / 3) + 0.03), "epoch_seconds": [2.0] * ran}
    return Row(number, state, float(value), params, 1000 * params.get("width", 8),
               2.0 * ran, ran, history)


def study_rows(n: int = 50, seed: int = 0, pruned_share: float = 0.3) -> list:
    """Mostly 0.95-0.99 with ties (three decimals), three completed trials at 0.5-0.7."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        params = {"lr": float(10 ** rng.uniform(-4, -1)), "depth": int(rng.integers(1, 5)),
                  "width": int(round(2 ** rng.uniform(3, 6))),
                  "dropout": float(rng.uniform(0, 0.5)),
                  "optimizer": str(rng.choice(["adam", "adamw", "sgd"]))}
        if i in OUTLIERS:
            rows.append(row(i, "COMPLETE", float(rng.uniform(0.5, 0.7)), params))
        elif i > 5 and rng.random() < pruned_share:
            rows.append(row(i, "PRUNED", float(rng.uniform(0.8, 0.95)), params))
        else:
            rows.append(row(i, "COMPLETE", round(float(rng.uniform(0.95, 0.99)), 3), params))
    return rows


def best_number(rows: list):
    done = [r for r in rows if r.state == "COMPLETE"]
    return min(done, key=lambda r: (-r.value, r.number)).number if done else None


def texts(fig: Figure) -> list:
    """The visible, non-empty text of a figure, legends and tick labels included."""
    fig.canvas.draw_idle()
    fig.draw_without_rendering()
    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]


def check(fig: Figure, path) -> list:
    """Saved, at most 6 inches wide, no text under 8 pt; returns the visible strings."""
    assert isinstance(fig, Figure)
    assert fig.get_size_inches()[0] <= 6.0 + 1e-9
    shown = texts(fig)
    small = [(t.get_text(), t.get_fontsize()) for t in shown if t.get_fontsize() < 8]
    assert small == []
    draw.save(fig, path)
    assert path.stat().st_size > 0
    return [t.get_text() for t in shown]


def legend_labels(fig: Figure) -> list:
    return [t.get_text() for leg in fig.legends for t in leg.get_texts()]


# --------------------------------------------------------------------------------- the data

NORMAL = study_rows()
EDGE = {
    "no rows": [],
    "one row": NORMAL[:1],
    "all pruned": [row(i, "PRUNED", 0.9 + 0.01 * i, {"lr": 0.01}) for i in range(4)],
    "constant values": [row(i, "COMPLETE", 0.97, {"lr": 0.01, "depth": 2, "optimizer": "sgd"})
                        for i in range(5)],
    "categorical only": [row(i, "COMPLETE", 0.9 + 0.01 * (i % 3), {"optimizer": o})
                         for i, o in enumerate(["adam", "sgd", "adam", "adamw"])],
    "thousand": study_rows(1000, seed=1, pruned_share=0.7),
}


def space(rows: list) -> tuple:
    names = list(dict.fromkeys(p for r in rows for p in r.params))
    return names, {p: p == "optimizer" for p in names}, {p: LOG.get(p, False) for p in names}


def all_charts(rows: list) -> dict:
    names, categorical, log = space(rows)
    best = best_number(rows)
    top = sorted((r for r in rows if r.state == "COMPLETE"), key=lambda r: -r.value)[:5]
    return {
        "history": lambda: charts.optimization_history(rows, best),
        "intermediate": lambda: charts.intermediate_values(rows, best, 10),
        "importances": lambda: charts.param_importances(
            {n: 1.0 / (i + 1) for i, n in enumerate(names)}, len(top)),
        "parallel": lambda: charts.parallel_coordinates(rows, names, categorical, log, best),
        "curves": lambda: draw.learning_curves(top, best),
        "curves, none chosen": lambda: draw.learning_curves(top),
        "comparison": lambda: draw.comparison(rows, names, categorical, log, best),
    }


@pytest.mark.parametrize("case", ["normal", *EDGE])
def test_every_chart_draws_every_case(tmp_path, case):
    rows = NORMAL if case == "normal" else EDGE[case]
    for name, make in all_charts(rows).items():
        check(make(), tmp_path / f"{name}.png")


# -------------------------------------------------------------------------------- the charts

def test_the_history_zooms_past_the_outliers_and_marks_the_best(tmp_path):
    best = best_number(NORMAL)
    fig = charts.optimization_history(NORMAL, best)
    shown = check(fig, tmp_path / "history.png")
    ax = fig.axes[0]
    low = ax.get_ylim()[0]
    outliers = [r.value for r in NORMAL if r.number in OUTLIERS]
    assert max(outliers) < low < min(r.value for r in NORMAL if r.state == "COMPLETE"
                                     and r.number not in OUTLIERS)
    assert ax.get_ylabel() == "validation accuracy" and ax.get_xlabel() == "trial"
    assert any(f"best: trial {best}" in s for s in shown)
    labels = legend_labels(fig)
    assert "pruned (last epoch reported)" in labels
    assert any(s.startswith(f"below {draw.fmt_acc(low)}") and "3 completed" in s
               for s in labels)


def test_intermediate_values_put_the_best_on_top_with_whole_epochs(tmp_path):
    best = best_number(NORMAL)
    fig = charts.intermediate_values(NORMAL, best, 10)
    check(fig, tmp_path / "intermediate.png")
    ax = fig.axes[0]
    lines = [a for a in ax.get_children() if isinstance(a, LineCollection) or
             hasattr(a, "get_xydata")]
    top = max(lines, key=lambda a: a.get_zorder())
    assert top.get_color() == VERMILION
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)
    n_done = sum(r.state == "COMPLETE" for r in NORMAL)
    n_pruned = len(NORMAL) - n_done
    labels = legend_labels(fig)
    assert f"completed ({n_done})" in labels
    assert any(s.startswith(f"pruned ({n_pruned})") for s in labels)
    assert f"best: trial {best} ({dict((r.number, r.value) for r in NORMAL)[best]:.4f})" \
        in labels


def test_importances_put_the_largest_on_top_with_its_share(tmp_path):
    fig = charts.param_importances({"dropout": 0.1, "lr": 0.6, "depth": 0.3}, 37)
    shown = check(fig, tmp_path / "importances.png")
    ax = fig.axes[0]
    assert ax.get_title() == "Parameter importance (from 37 completed trials)"
    by_height = sorted(zip(ax.get_yticks(), [t.get_text() for t in ax.get_yticklabels()]))
    assert [name for _, name in by_height] == ["dropout", "depth", "lr"]  # lr on top
    assert {"60.0%", "30.0%", "10.0%"} <= set(shown)


def test_importance_labels_follow_one_rule_for_chart_and_table(tmp_path):
    """The report's table lists importance_shares' labels; the chart draws the same ones,
    so a share of 0.3% is 0.3% in both, not "<1%" beside "0.3%"."""
    importances = {"dropout": 0.6, "lr": 0.3967, "optimizer": 0.003, "depth": 0.0003,
                   "width": 0.0}
    shares = charts.importance_shares(importances)
    assert [(name, label) for name, _, label in shares] == [
        ("dropout", "60.0%"), ("lr", "39.7%"), ("optimizer", "0.3%"), ("depth", "<0.1%"),
        ("width", "0%")]
    fig = charts.param_importances(importances, 12)
    check(fig, tmp_path / "importances.png")
    drawn = {t.get_text() for t in fig.axes[0].texts}
    assert drawn == {label for _, _, label in shares}


def test_below_the_edge_legend_markers_match_the_points(tmp_path):
    """Completed trials below the zoom are filled triangles on the edge and pruned ones
    hollow: so are their legend entries, one each, in every chart that draws them."""
    rows = [row(i, "COMPLETE", 0.95 + 0.0005 * i, {"lr": 0.01, "depth": 2}) for i in range(60)]
    rows += [row(60, "COMPLETE", 0.2, {"lr": 0.02, "depth": 3})]
    rows += [row(61 + i, "PRUNED", 0.1 + 0.01 * i, {"lr": 0.03, "depth": 1}) for i in range(4)]
    best = best_number(rows)
    figures = {"history": charts.optimization_history(rows, best),
               "intermediate": charts.intermediate_values(rows, best, 10),
               "comparison": draw.comparison(rows, ["lr", "depth"], {}, {"lr": True}, best)}
    for name, fig in figures.items():
        check(fig, tmp_path / f"{name}.png")
        edge = [h for leg in fig.legends for h in leg.legend_handles
                if h.get_marker() == "v"]
        faces = {h.get_label().split(":")[-1].strip(): h.get_markerfacecolor() for h in edge}
        assert set(faces) == {"1 completed", "4 pruned"}, (name, faces)
        assert faces["4 pruned"] == "none", name
        assert faces["1 completed"] == BLUE, name
        low, high = fig.axes[0].get_ylim()
        on_edge = [c for c in fig.axes[0].collections if len(c.get_offsets())
                   and np.allclose(c.get_offsets()[:, 1], low + 0.015 * (high - low))]
        assert sorted(len(c.get_facecolors()) > 0 for c in on_edge) == [False, True], name


def axis_labels(fig: Figure) -> dict:
    """The parallel-coordinate tick labels, keyed by the axis (its x position) they sit by."""
    ax = fig.axes[0]
    labels = {}
    for t in ax.texts:
        if t.get_bbox_patch() is not None:
            x = round(t.get_position()[0])
            labels.setdefault(x, []).append(t.get_text())
    return labels


def test_parallel_coordinates_ticks_are_plain_and_whole(tmp_path):
    best = best_number(NORMAL)
    fig = charts.parallel_coordinates(NORMAL, PARAMS, CATEGORICAL, LOG, best)
    shown = check(fig, tmp_path / "parallel.png")
    labels = axis_labels(fig)
    lr, depth, width, _, optimizer = (labels[i] for i in range(5))
    assert all(re.fullmatch(r"0\.0*[13]", s) for s in lr), lr  # 0.001, 0.003, not 10^-3
    assert depth == ["1", "2", "3", "4"]
    assert all(s.isdigit() for s in width) and len(width) >= 2
    assert optimizer == ["adam", "adamw", "sgd"]
    assert any(s == "validation\naccuracy" for s in shown)  # the last axis
    ax = fig.axes[0]
    trials = [line for line in ax.lines if line.get_color() != BLACK]  # not the axes
    top = max(trials, key=lambda line: line.get_zorder())
    assert top.get_color() == VERMILION and top.get_linewidth() > 2
    assert all(top.get_zorder() > c.get_zorder() for c in ax.collections)
    assert any(s.startswith(f"best: trial {best}") for s in legend_labels(fig))
    assert any("trials" in s for s in shown)


def test_parallel_coordinates_keep_lines_off_the_ends_and_under_the_labels(tmp_path):
    """The issue's case: the best trial has the highest depth and the last optimizer. It
    ran along the top edge over their tick labels; now every axis spans the trials drawn
    with a margin, and the labels sit on top in opaque boxes."""
    best = best_number(NORMAL)
    fig = charts.parallel_coordinates(NORMAL, PARAMS, CATEGORICAL, LOG, best)
    check(fig, tmp_path / "parallel.png")
    ax = fig.axes[0]
    heights = np.concatenate([seg[:, 1] for seg in ax.collections[0].get_segments()])
    best_line, = (line for line in ax.lines if line.get_color() == VERMILION)
    heights = np.concatenate([heights, best_line.get_ydata()])
    assert heights.min() >= charts.MARGIN - 1e-9 and heights.max() <= 1 - charts.MARGIN + 1e-9
    labels = [t for t in ax.texts if t.get_bbox_patch() is not None]
    drawn = [a.get_zorder() for a in (*ax.lines, *ax.collections)]
    assert labels and all(t.get_zorder() > max(drawn) for t in labels)
    assert all(t.get_bbox_patch().get_alpha() in (None, 1.0) for t in labels)


def test_the_accuracy_axis_is_the_colour_key(tmp_path):
    """No colour bar beside the accuracy axis with its own ticks at other heights: the axis
    is painted in the lines' colours, and each of its ticks sits where its colour is."""
    fig = charts.parallel_coordinates(NORMAL, PARAMS, CATEGORICAL, LOG, best_number(NORMAL))
    check(fig, tmp_path / "parallel.png")
    assert len(fig.axes) == 1  # no colour bar
    ax = fig.axes[0]
    key, = ax.images
    lines = ax.collections[0]
    assert key.norm.vmin == lines.norm.vmin and key.norm.vmax == lines.norm.vmax
    assert key.get_cmap() is lines.get_cmap()
    ramp = np.asarray(key.get_array()).ravel()
    x0, x1, y0, y1 = key.get_extent()
    assert (y0, y1) == (0, 1) and x0 == len(PARAMS)
    ticks = [(t.get_position()[1], float(t.get_text())) for t in ax.texts
             if t.get_bbox_patch() is not None and round(t.get_position()[0]) == len(PARAMS)]
    assert len(ticks) >= 3
    step = (ramp[-1] - ramp[0]) / (len(ramp) - 1)
    for y, value in ticks:
        assert abs(ramp[0] + y * (ramp[-1] - ramp[0]) - value) < step
    # The lines end on the accuracy axis at the height of their own value.
    ends = [seg[-1] for seg in lines.get_segments() if round(seg[-1][0]) == len(PARAMS)]
    done = sorted((r for r in NORMAL if r.state == "COMPLETE"), key=lambda r: (r.value,
                                                                                -r.number))
    for (_, y), row in zip(ends, done):
        if row.value >= key.norm.vmin:
            assert abs(ramp[0] + y * (ramp[-1] - ramp[0]) - row.value) < 1e-9


def test_parallel_coordinates_of_one_parameter_and_a_thousand_trials(tmp_path):
    rows = [row(i, "COMPLETE", 0.9 + 0.001 * (i % 50), {"depth": 1 + i % 3})
            for i in range(1000)]
    fig = charts.parallel_coordinates(rows, ["depth"], {}, {}, 49)
    check(fig, tmp_path / "parallel.png")
    assert axis_labels(fig)[0] == ["1", "2", "3"]
    assert fig.axes[0].collections[0].get_alpha() < 0.5  # many lines: see-through


def test_learning_curves_mark_the_chosen_trial_and_zoom(tmp_path):
    top = sorted((r for r in NORMAL if r.state == "COMPLETE"), key=lambda r: -r.value)[:5]
    chosen = top[0].number
    fig = draw.learning_curves(top, chosen)
    check(fig, tmp_path / "curves.png")
    labels = legend_labels(fig)
    assert labels[0].startswith(f"chosen: trial {chosen} ")
    values = [float(re.search(r"val (\d\.\d+)", s).group(1)) for s in labels if "val " in s]
    assert values == sorted(values, reverse=True)  # ordered by accuracy
    acc = fig.axes[0]
    assert acc.get_ylim()[0] > 0.9
    mine = max(acc.lines, key=lambda line: (line.get_zorder(), line.get_linewidth()))
    assert mine.get_color() == VERMILION and mine.get_label().startswith("chosen")
    colours = [line.get_color() for line in acc.lines if not line.get_label().startswith("_")]
    assert len(set(colours)) == len(top)  # tied trials do not share a colour


def test_comparison_clips_outliers_and_sets_pruned_time_apart(tmp_path):
    best = best_number(NORMAL)
    fig = draw.comparison(NORMAL, PARAMS, CATEGORICAL, LOG, best)
    check(fig, tmp_path / "comparison.png")
    low = fig.axes[0].get_ylim()[0]
    assert low > max(r.value for r in NORMAL if r.number in OUTLIERS)
    labels = legend_labels(fig)
    assert "pruned: time until pruned" in labels
    assert any(s.startswith(f"best: trial {best}") for s in labels)
    assert any(s.startswith("below") for s in labels)
    depth = next(ax for ax in fig.axes if ax.get_xlabel() == "depth")
    shown = [t.get_text() for t in depth.get_xticklabels() if t.get_text()]
    assert shown and all(s.isdigit() for s in shown)


def test_the_confusion_matrix_and_the_grid_carry_the_callers_title(tmp_path):
    title = "Trial 7 on the test split: accuracy 0.9500"
    matrix = np.array([[9, 1], [0, 10]])
    fig = draw.confusion(matrix, ("cat", "dog"), title)
    assert fig.axes[0].get_title() == title
    check(fig, tmp_path / "confusion.png")
    images = np.random.default_rng(0).random((5, 1, 8, 8))
    fig = draw.prediction_grid(images, np.array([0, 1, 1, 0, 1]), np.array([0, 1, 0, 0, 1]),
                               ("cat", "dog"), title, np.array([0.97, 0.5, 0.8, 1.0, 0.999]))
    shown = check(fig, tmp_path / "grid.png")
    assert fig._suptitle.get_text().startswith(title)
    assert {"cat 97%", "dog 50%", "cat 100%", "dog 99%"} <= set(shown)
    assert "dog 80%\n(cat)" in shown  # a mistake: the prediction over the true class
    no_confidence = draw.prediction_grid(images[:0], np.zeros(0, int), np.zeros(0, int),
                                         ("cat", "dog"), title)
    check(no_confidence, tmp_path / "empty_grid.png")


def test_best_so_far_is_six_inches_wide(tmp_path):
    nothing = Progress(([], []), ([], []), ([], []))
    a = Progress(([0, 2], [0.9, 0.95]), ([1], [0.5]), ([0, 2], [0.9, 0.95]))
    fig = draw.best_so_far({"a": a, "b": nothing}, "t", "trial", whole_x=True)
    check(fig, tmp_path / "best.png")
    check(draw.best_so_far({"a": nothing}, "t", "trial"), tmp_path / "none.png")


# ----------------------------------------------------------------------- predictions' confidence

def test_predictions_on_test_carry_the_probability_of_the_predicted_class():
    rng = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (20, 1, 4, 4), dtype=torch.uint8, generator=rng)
    y = torch.randint(0, 3, (20,), generator=rng)
    data = Dataset(x, y, x, y, x, y, ("a", "b", "c"), (0.5,), (0.25,), "none")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    preds = predictions_on_test(model, data)
    with torch.no_grad():
        probs = torch.softmax(model(data.normalized(x)), 1)
    assert np.array_equal(preds.predicted, probs.argmax(1).numpy())
    assert np.allclose(preds.confidence, probs.max(1).values.numpy(), atol=1e-6)
    assert ((preds.confidence > 1 / 3 - 1e-6) & (preds.confidence <= 1)).all()
    assert Predictions(np.array([1]), np.array([1])).confidence is None  # still optional
