"""Plain data -> matplotlib Figures of single trials and of the trials side by side: learning
curves, predictions, the confusion matrix, the comparison panels. No pyplot. The
study-level charts are in charts.py, the look they share in style.py."""

from __future__ import annotations

import math
import textwrap
from typing import Optional

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from hpsearch.report.charts import below_handles
from hpsearch.report.style import (  # noqa: F401  (styled, STYLE: part of draw's interface)
    BLACK, BLUE, GREY, MARKERS, PALETTE, STYLE, VERMILION, WIDTH, accuracy_limits, best_handle,
    bottom_legend, clipped, empty, fmt_acc, integer_axis, levels, log_axis, styled, whole, zoom)

# --------------------------------------------------------------------------- learning curves

def learning_curves(rows: list, chosen: Optional[int] = None) -> Figure:
    """Validation (solid) and training (dashed) accuracy and loss per epoch of the trials
    given, legend ordered by accuracy. The `chosen` trial is bold, in vermillion and on top;
    each other trial has its own colour and marker, so tied trials stay apart."""
    rows = sorted(rows, key=lambda r: (-r.value, r.number))
    with styled():
        fig = Figure(figsize=(WIDTH, 5.8), layout="constrained")
        acc, loss = fig.subplots(2, 1, sharex=True)
        acc.set(title="Accuracy (solid: validation, dashed: training)", ylabel="accuracy")
        loss.set(title="Cross-entropy loss", xlabel="epoch", ylabel="loss")
        if not any(r.history.get("val_acc") for r in rows):
            empty(acc, "no trial with per-epoch history")
            empty(loss, "")
            return fig
        low, high = zoom(_late(rows), quantile=0.0, headroom=0.05)
        colours = iter(PALETTE * (len(rows) // len(PALETTE) + 1))
        for i, row in enumerate(rows):
            mine = row.number == chosen
            _curve_pair(acc, loss, row, i, VERMILION if mine else next(colours), mine)
        accuracy_limits(acc, low, high)
        integer_axis(loss, [1, max(len(r.history.get("val_acc", [])) for r in rows)])
        losses = [v for r in rows for k in ("val_loss", "train_loss")
                  for v in r.history.get(k, [])]
        if any(v > 0 for v in losses):
            log_axis(loss, losses, which="y", most=6)
        handles = acc.get_legend_handles_labels()[0]
        n_cut = sum(v < low for r in rows for k in ("val_acc", "train_acc")
                    for v in r.history.get(k, []))
        if n_cut:
            handles.append(Line2D([], [], ls="", label=f"epochs below {fmt_acc(low)} run "
                                                     f"off the lower edge"))
        bottom_legend(fig, handles, ncols=2)
        return fig


def _late(rows: list) -> list:
    """Accuracies of the last two thirds of each curve: where the zoom of the curves looks."""
    out = []
    for r in rows:
        for key in ("val_acc", "train_acc"):
            values = r.history.get(key, [])
            out += list(values[len(values) // 3:])
    return out


def _curve_pair(acc, loss, row, i: int, colour, mine: bool) -> None:
    h = row.history
    val = h.get("val_acc", [])
    epochs = np.arange(1, len(val) + 1)
    every = max(1, len(val) // 6)
    line = dict(color=colour, lw=2.4 if mine else 1.2, zorder=6 if mine else 3,
                marker=MARKERS[i % len(MARKERS)], markersize=5 if mine else 4,
                markevery=(i % every, every))
    label = f"{'chosen: ' if mine else ''}trial {row.number} (val {row.value:.4f})"
    acc.plot(epochs, val, label=label, **line)
    loss.plot(epochs[:len(h.get("val_loss", []))], h.get("val_loss", []), **line)
    thin = dict(color=colour, ls="--", lw=1.6 if mine else 0.9, alpha=0.8,
                zorder=line["zorder"] - 1)
    acc.plot(np.arange(1, len(h.get("train_acc", [])) + 1), h.get("train_acc", []), **thin)
    loss.plot(np.arange(1, len(h.get("train_loss", [])) + 1), h.get("train_loss", []),
              **thin)


# -------------------------------------------------------------------------- model charts

def prediction_grid(images: np.ndarray, predicted: np.ndarray, true: np.ndarray,
                    classes: tuple, title: str, confidence=None) -> Figure:
    """Test images (N, C, H, W in 0..1), each titled with its prediction and, given
    `confidence` (the probability of the predicted class, 0..1), how sure the model was:
    "cat 97%". A mistake is framed in vermillion and titled with the prediction over the true
    class in brackets. `title` (the caller's: trial, split, accuracy) heads the grid."""
    n = len(images)
    cols = min(6, max(n, 1))
    rows = max(1, math.ceil(n / cols))
    wrong = np.asarray(predicted) != np.asarray(true)
    heading = textwrap.fill(title, 76)
    if wrong.any():
        heading += "\nframed: a mistake, titled with the prediction over (the true class)"
    gap = 0.1  # inches between tiles
    tile = min((WIDTH - gap * (cols + 1)) / cols, 1.6)
    fits = int(tile * 72 / 5.0)  # characters of 8 pt text a tile is wide
    labels = [_tile_label(classes, int(p), int(t), None if confidence is None else
                          float(confidence[k]), fits) for k, (p, t) in
              enumerate(zip(predicted, true))]
    label_h = 0.05 + 0.135 * max((s.count("\n") + 1 for s in labels), default=1)
    head = 0.12 + 0.19 * (heading.count("\n") + 1)
    height = head + rows * (label_h + tile + gap)
    with styled():
        # Placed by hand: constrained layout would spend seconds measuring 32 tiny titles.
        fig = Figure(figsize=(WIDTH, height))
        fig.suptitle(heading, y=1 - 0.08 / height, va="top")
        left = (WIDTH - cols * tile - (cols - 1) * gap) / 2
        for k, (img, label) in enumerate(zip(images, labels)):
            r, c = divmod(k, cols)
            top = height - head - r * (label_h + tile + gap) - label_h
            ax = fig.add_axes(((left + c * (tile + gap)) / WIDTH, (top - tile) / height,
                               tile / WIDTH, tile / height))
            _tile(ax, img, label, bool(wrong[k]))
        return fig


def _tile_label(classes: tuple, p: int, t: int, sure, fits: int) -> str:
    share = "" if sure is None else f"{math.floor(100 * sure + 1e-9):d}%"
    name = str(classes[p])
    first = f"{name} {share}".strip() if len(name) + len(share) + 1 <= fits else \
        f"{name}\n{share}".strip()
    return first if p == t else f"{first}\n({classes[t]})"


def _tile(ax, img: np.ndarray, label: str, wrong: bool) -> None:
    ax.imshow(_displayable(img), cmap="gray" if img.shape[0] == 1 else None,
              vmin=0, vmax=1, interpolation="nearest", aspect="auto")
    ax.set_title(label, color=VERMILION if wrong else BLACK, fontsize=8, pad=2,
                 linespacing=1.05)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set(color=VERMILION, linewidth=2.5, visible=wrong)


def _displayable(img: np.ndarray) -> np.ndarray:
    img = np.clip(img, 0.0, 1.0)
    return img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)


def confusion(matrix: np.ndarray, classes: tuple, title: str = "") -> Figure:
    """Counts per (true, predicted) class; colour is the share of the true class's row. The
    caller's `title` names the trial, the split and the accuracy."""
    matrix = np.asarray(matrix)
    k = len(classes)
    size = min(WIDTH - 1.0, max(3.2, 0.42 * k + 1.4))
    with styled():
        fig = Figure(figsize=(size + 1.0, size + 0.3), layout="constrained")
        ax = fig.subplots()
        shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1) if k else matrix
        im = ax.imshow(shares.reshape(k, k), cmap="Blues", vmin=0, vmax=1)
        ax.grid(False)
        if k <= 15:
            for i in range(k):
                for j in range(k):
                    if matrix[i, j]:
                        ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=8,
                                color="white" if shares[i, j] > 0.5 else BLACK)
        labels = [str(c) for c in classes]
        step = max(1, math.ceil(k / 20))  # every label up to 20 classes
        long = max((len(s) for s in labels), default=0) > 3
        ax.set_xticks(range(0, k, step), labels[::step], rotation=45 if long else 0,
                      ha="right" if long else "center", rotation_mode="anchor")
        ax.set_yticks(range(0, k, step), labels[::step])
        ax.set(xlabel="predicted", ylabel="true")
        if title:
            ax.set_title(textwrap.fill(title, 60))
        fig.colorbar(im, ax=ax, label="share of the true class", shrink=0.8)
        return fig


# ---------------------------------------------------------------------------- comparison

def comparison(rows: list, params: list, categorical: dict, log: dict,
               best_number: Optional[int] = None) -> Figure:
    """Validation accuracy against each searched parameter, the parameter count and the
    training time, one panel each, sharing the zoomed accuracy axis. Filled: completed;
    hollow grey: pruned at their last reported accuracy; in the training-seconds panel a
    pruned trial's time is its time until pruned, drawn as a hollow square."""
    panels = list(params) + ["parameters", "training seconds"]
    cols = 2 if len(panels) <= 4 else 3
    n_rows = math.ceil(len(panels) / cols)
    done = [r.value for r in rows if r.state == "COMPLETE"]
    low, high = zoom(done or [r.value for r in rows])
    best = next((r for r in rows if r.number == best_number), None)
    with styled():
        fig = Figure(figsize=(WIDTH, 0.9 + 2.0 * n_rows), layout="constrained")
        axes = np.atleast_1d(fig.subplots(n_rows, cols, squeeze=False, sharey=True)).ravel()
        for ax in axes[len(panels):]:
            ax.set_visible(False)
        if not rows:
            for ax, name in zip(axes, panels):
                empty(ax, "no finished trial yet")
                ax.set_xlabel(name)
            return fig
        for ax, name in zip(axes, panels):
            _panel(ax, rows, name, categorical.get(name, False), log.get(name, False),
                   (low, high), best)
        for ax in axes[::cols]:
            ax.set_ylabel("validation accuracy")
        accuracy_limits(axes[0], low, high)
        bottom_legend(fig, _comparison_handles(rows, low, best), ncols=2)
        return fig


def _panel(ax, rows: list, name: str, categorical: bool, log: bool, limits: tuple,
           best) -> None:
    xs, ticks = _x_values(rows, name, categorical)
    ys, below = clipped([r.value for r in rows], *limits)
    alpha = 0.85 if len(rows) <= 200 else 0.45
    pruned_marker = "s" if name == "training seconds" else "o"
    for state, look in (
            ("PRUNED", dict(facecolors="none", edgecolors=GREY, linewidths=0.8, s=16)),
            ("COMPLETE", dict(color=BLUE, s=14, linewidths=0))):
        for low_edge in (False, True):
            keep = [i for i, r in enumerate(rows) if r.state == state and xs[i] is not None
                    and below[i] == low_edge]
            marker = "v" if low_edge else pruned_marker if state == "PRUNED" else "o"
            ax.scatter([xs[i] for i in keep], ys[keep], marker=marker, alpha=alpha, **look)
    if best is not None:
        i = rows.index(best)
        if xs[i] is not None:
            ax.scatter([xs[i]], [ys[i]], marker="*", s=110, color=VERMILION,
                       edgecolors=BLACK, linewidths=0.6, zorder=5)
    if ticks:
        ax.set_xticks(range(len(ticks)), ticks)
        ax.set_xlim(-0.5, len(ticks) - 0.5)
    elif log or name == "parameters":
        # Three labels at most: a panel is under 2 in wide, and "0.003" beside "0.001" touch.
        log_axis(ax, [x for x in xs if x is not None], integer=name == "parameters", most=3)
    elif whole(values := [r.params.get(name) for r in rows]):
        integer_axis(ax, values)
    ax.set_xlabel(name)


def _comparison_handles(rows: list, low: float, best) -> list:
    dot = dict(ls="", markersize=5)
    handles = [Line2D([], [], marker="o", color=BLUE, label="completed", **dot)]
    if any(r.state == "PRUNED" for r in rows):
        hollow = dict(markerfacecolor="none", markeredgecolor=GREY, **dot)
        handles += [Line2D([], [], marker="o", label="pruned (last epoch reported)", **hollow),
                    Line2D([], [], marker="s", label="pruned: time until pruned", **hollow)]
    if best is not None:
        handles.append(best_handle(best.number, best.value))
    n_done = sum(r.value < low for r in rows if r.state == "COMPLETE")
    return handles + below_handles(low, n_done, sum(r.value < low for r in rows
                                                    if r.state == "PRUNED"))


def _x_values(rows: list, name: str, categorical: bool) -> tuple:
    if name == "parameters":
        return [r.n_params for r in rows], None
    if name == "training seconds":
        return [r.train_seconds for r in rows], None
    values = [r.params.get(name) for r in rows]
    # A small fixed spread keeps overlapping points of one choice or small integer visible.
    jitter = np.random.default_rng(0).uniform(-0.15, 0.15, len(values))
    if not categorical:
        if whole(values) and len(set(values) - {None}) <= 10:
            return [None if v is None else v + j for v, j in zip(values, jitter)], None
        return values, None
    ticks = levels(values)
    return [None if v is None else ticks.index(str(v)) + j for v, j in zip(values, jitter)], ticks


# --------------------------------------------------------------------------- other charts

def best_so_far(series: dict, title: str, xlabel: str, whole_x: bool = False) -> Figure:
    """Studies side by side, {name: compare.Progress}: each finished trial as a point in its
    study's colour (filled: completed; hollow: pruned, at its last reported accuracy) and the
    best completed accuracy so far as a step line to the study's last finished trial. The
    accuracy axis zooms as the optimization history's does; `whole_x`: trial numbers."""
    done = [v for p in series.values() for v in p.done[1]]
    pruned = [v for p in series.values() for v in p.pruned[1]]
    # The zoom is the completed trials'; a pruned one above them all stays in view too.
    above = [max(pruned)] if done and pruned and max(pruned) > max(done) else []
    low, high = zoom(done + above or pruned)
    with styled():
        fig = Figure(figsize=(WIDTH, 3.9), layout="constrained")
        ax = fig.subplots()
        ax.set(title=title, xlabel=xlabel, ylabel="validation accuracy")
        if not any(p.done[0] or p.pruned[0] for p in series.values()):
            empty(ax, "no finished trial yet")
            return fig
        handles, n_below = [], [0, 0]
        for i, (name, progress) in enumerate(series.items()):
            colour = PALETTE[i % len(PALETTE)]
            style = ("-", "--", ":", "-.")[i // len(PALETTE) % 4]
            ax.step(*progress.best, where="post", color=colour, lw=1.6, ls=style, zorder=4)
            for k, (xs, ys) in enumerate((progress.done, progress.pruned)):
                n_below[k] += _trial_points(ax, xs, ys, (low, high), colour, hollow=k == 1)
            handles.append(Line2D([], [], color=colour, lw=1.6, ls=style, label=name))
        dot = dict(ls="", marker="o", markersize=5, markeredgecolor=GREY)
        handles.append(Line2D([], [], markerfacecolor=GREY, label="completed", **dot))
        if any(p.pruned[0] for p in series.values()):
            handles.append(Line2D([], [], markerfacecolor="none",
                                  label="pruned (last epoch reported)", **dot))
        handles += below_handles(low, *n_below, colour=GREY)
        accuracy_limits(ax, low, high)
        if whole_x:
            integer_axis(ax, [x for p in series.values() for x in p.done[0] + p.pruned[0]])
        bottom_legend(fig, handles, ncols=3)
        return fig


def _trial_points(ax, xs: list, ys: list, limits: tuple, colour, hollow: bool) -> int:
    """One study's completed (filled) or pruned (hollow) trials; those below the zoomed axis
    as triangles on its lower edge. Returns how many are there."""
    ys, below = clipped(ys, *limits)
    xs = np.asarray(xs, dtype=float)
    look = dict(facecolors="none", edgecolors=colour, linewidths=0.9, s=16) if hollow else \
        dict(color=colour, linewidths=0, s=16)
    ax.scatter(xs[~below], ys[~below], alpha=0.85, zorder=3, **look)
    ax.scatter(xs[below], ys[below], marker="v", alpha=0.85, zorder=3, clip_on=False, **look)
    return int(below.sum())


def save(fig: Figure, path, tight: bool = False) -> None:
    """`tight` crops to what is drawn; hpsearch's figures are laid out already, and measuring
    the box again would double the drawing time."""
    fig.savefig(path, dpi=110, bbox_inches="tight" if tight else None)
