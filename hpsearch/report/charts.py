"""The study-level charts of the report, drawn from plain rows (collect.Row) in hpsearch's
look: the optimization history, the accuracy per epoch, the parameter importances and the
parallel coordinates. Their look is style.py's; the per-trial charts are in draw.py."""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from hpsearch.report.style import (BLACK, BLUE, GREY, VERMILION, WIDTH, accuracy_limits,
                                   below_handle, best_handle, bottom_legend, clipped, empty,
                                   fmt_acc, integer_axis, levels, nice_ticks, plain, styled,
                                   whole, zoom)

ACC = "validation accuracy"
MARGIN = 0.06  # of a parallel coordinates axis, beyond its lowest and its highest value
KEY = 0.06  # width of the accuracy axis's colour key, in gaps between axes


def _best(rows: list, best_number: Optional[int]):
    return next((r for r in rows if r.number == best_number and r.state == "COMPLETE"), None)


def _limits(rows: list) -> tuple:
    """The zoom of the completed trials' values, or of every value when none completed."""
    done = [r.value for r in rows if r.state == "COMPLETE"]
    return zoom(done or [r.value for r in rows])


def _below(rows: list, low: float) -> list:
    """The legend entries for the trials below the zoomed axis, if any is."""
    return below_handles(low, sum(r.value < low for r in rows if r.state == "COMPLETE"),
                         sum(r.value < low for r in rows if r.state == "PRUNED"))


def below_handles(low: float, n_done: int, n_pruned: int, colour=BLUE) -> list:
    """One legend entry per kind of trial drawn on the lower edge, each with the marker its
    points have there: filled for completed trials, hollow grey for pruned ones."""
    return [below_handle(low, n_done, colour=colour)] * bool(n_done) + \
        [below_handle(low, 0, n_pruned)] * bool(n_pruned)


# ------------------------------------------------------------------- optimization history

def _accuracy_figure(title: str, xlabel: str) -> tuple:
    """(figure, axes) of a chart of validation accuracy against `xlabel`."""
    fig = Figure(figsize=(WIDTH, 3.7), layout="constrained")
    ax = fig.subplots()
    ax.set(title=title, xlabel=xlabel, ylabel=ACC)
    return fig, ax


def optimization_history(rows: list, best_number: Optional[int]) -> Figure:
    """Each completed trial's validation accuracy by trial number with the best so far as a
    step line; pruned trials as small hollow grey markers at their last reported accuracy;
    the best trial starred and labelled."""
    with styled():
        fig, ax = _accuracy_figure("Optimization history", "trial")
        bottom_legend(fig, history_on(ax, rows, best_number), ncols=2)
        return fig


def history_on(ax, rows: list, best_number: Optional[int]) -> list:
    """The optimization history drawn on `ax`; returns its legend handles."""
    rows = sorted(rows, key=lambda r: r.number)
    done = [r for r in rows if r.state == "COMPLETE"]
    pruned = [r for r in rows if r.state == "PRUNED"]
    low, high = _limits(rows)
    best = _best(rows, best_number)
    if not rows:
        empty(ax, "no finished trial yet")
        return []
    handles = []
    if pruned:
        handles.append(_dots(ax, pruned, low, high, s=12, facecolors="none",
                             edgecolors=GREY, linewidths=0.8,
                             label="pruned (last epoch reported)"))
    if done:
        handles.insert(0, _dots(ax, done, low, high, s=18, color=BLUE, linewidths=0,
                                label="completed", zorder=3))
        xs = [r.number for r in done]
        ys = np.maximum.accumulate([r.value for r in done])
        xs.append(max(r.number for r in rows))
        ax.step(xs, [*ys, ys[-1]], where="post", color=BLACK, lw=1.2, zorder=4)
        handles.append(Line2D([], [], color=BLACK, lw=1.2, label="best so far"))
    if best is not None:
        _star(ax, best, rows)
        handles.append(best_handle(best.number, best.value))
    handles += _below(rows, low)
    accuracy_limits(ax, low, high)
    integer_axis(ax, [r.number for r in rows])
    return handles


def _dots(ax, rows: list, low: float, high: float, label: str, **look) -> Line2D:
    """Rows as points by trial number; those below `low` as small triangles on the edge."""
    ys, below = clipped([r.value for r in rows], low, high)
    xs = np.array([r.number for r in rows])
    alpha = 0.9 if len(rows) <= 300 else 0.55
    ax.scatter(xs[~below], ys[~below], alpha=alpha, **look)
    ax.scatter(xs[below], ys[below], marker="v", alpha=alpha, **{**look, "s": 14})
    colour = look.get("color", look.get("edgecolors"))
    return Line2D([], [], ls="", marker="o", markersize=5, label=label,
                  markerfacecolor=look.get("facecolors", colour), markeredgecolor=colour)


def _star(ax, best, rows: list) -> None:
    """The best trial starred, labelled above it, leaning away from the nearer side."""
    ax.scatter([best.number], [best.value], marker="*", s=150, color=VERMILION,
               edgecolors=BLACK, linewidths=0.6, zorder=6)
    numbers = [r.number for r in rows]
    lo, hi = min(numbers), max(numbers)
    where = 0.5 if hi == lo else (best.number - lo) / (hi - lo)
    ha = "left" if where < 0.3 else "right" if where > 0.7 else "center"
    ax.annotate(f"best: trial {best.number}, {best.value:.4f}", (best.number, best.value),
                xytext=(0, 9), textcoords="offset points", ha=ha, va="bottom", fontsize=8,
                zorder=7, bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none",
                                    alpha=0.9))


# ----------------------------------------------------------------------- intermediate values

def intermediate_values(rows: list, best_number: Optional[int], epochs: int) -> Figure:
    """Validation accuracy per epoch of every trial: completed thin in blue, pruned grey with
    a marker at the epoch they stopped, the best bold in vermillion on top."""
    with styled():
        fig, ax = _accuracy_figure("Validation accuracy per epoch", "epoch")
        bottom_legend(fig, epochs_on(ax, rows, best_number, epochs), ncols=2)
        return fig


def epochs_on(ax, rows: list, best_number: Optional[int], epochs: int,
              running: Optional[list] = None) -> list:
    """The accuracy per epoch drawn on `ax`, with `running` (the curves of trials still
    training, as rows) in black on top; returns the legend handles."""
    from matplotlib.collections import LineCollection

    best = _best(rows, best_number)
    curves = [r for r in rows if r.history.get("val_acc")]
    running = [r for r in running or () if r.history.get("val_acc")]
    # Where the curves end, pruned ones included: a pruner's cut is what this chart shows.
    low, high = zoom([r.history["val_acc"][-1] for r in curves + running], headroom=0.05)
    # A curve may peak before its last epoch: the top keeps every epoch in view.
    peak = max((max(r.history["val_acc"]) for r in curves + running), default=high)
    high = max(high, peak + 0.04 * (peak - low))
    if not curves and not running:
        empty(ax, "no trial has reported an epoch yet")
        return []
    many = len(curves) > 200
    handles = []
    for state, colour, lw, alpha in (("PRUNED", GREY, 0.7, 0.5),
                                     ("COMPLETE", BLUE, 0.8, 0.45)):
        group = [r for r in curves if r.state == state and r is not best]
        lines = [np.column_stack([np.arange(1, len(r.history["val_acc"]) + 1),
                                  r.history["val_acc"]]) for r in group]
        ax.add_collection(LineCollection(lines, colors=colour, linewidths=lw * (0.8 if many
                                         else 1), alpha=alpha * (0.6 if many else 1)))
        n = sum(r.state == state for r in curves)
        _ends(ax, group, low, high, pruned=state == "PRUNED")
        if state == "PRUNED" and n:
            handles.append(Line2D([], [], color=GREY, marker="o", markersize=4,
                                  markerfacecolor="none", lw=1,
                                  label=f"pruned ({n}): marker where it stopped"))
        elif n:
            handles.insert(0, Line2D([], [], color=BLUE, lw=1, label=f"completed ({n})"))
    if best is not None:
        ax.plot(np.arange(1, len(best.history.get("val_acc", [])) + 1),
                best.history.get("val_acc", []), color=VERMILION, lw=2.4, zorder=5)
        handles.append(best_handle(best.number, best.value, line=True))
    for r in running:
        values, _ = clipped(r.history["val_acc"], low, high)
        ax.plot(np.arange(1, len(values) + 1), values, color=BLACK, lw=1.6, ls="--",
                marker="o", markersize=3, zorder=6)
    if running:
        handles.append(Line2D([], [], color=BLACK, lw=1.6, ls="--", marker="o", markersize=3,
                              label="running: trial " + ", ".join(str(r.number)
                                                                  for r in running)))
    longest = max(epochs, max(len(r.history["val_acc"]) for r in curves + running))
    ax.set_xlim(0.7, longest + 0.3)
    integer_axis(ax)
    accuracy_limits(ax, low, high)
    handles += _off_edge(curves, low) if curves else []
    return handles


def _off_edge(curves: list, low: float) -> list:
    """A legend line saying what the zoom leaves out below the axis."""
    done = sum(r.history["val_acc"][-1] < low for r in curves if r.state == "COMPLETE")
    pruned = sum(r.history["val_acc"][-1] < low for r in curves if r.state == "PRUNED")
    if done or pruned:
        return below_handles(low, done, pruned)
    if any(v < low for r in curves for v in r.history["val_acc"]):
        return [Line2D([], [], ls="", label=f"early epochs below {fmt_acc(low)} run off the "
                                            f"lower edge")]
    return []


def _ends(ax, rows: list, low: float, high: float, pruned: bool) -> None:
    """Where each pruned curve stops; completed curves ending below the axis, on its edge."""
    ends, below = clipped([r.history["val_acc"][-1] for r in rows], low, high)
    xs = np.array([len(r.history["val_acc"]) for r in rows], dtype=float)
    look = dict(facecolors="none", edgecolors=GREY, linewidths=0.8) if pruned else \
        dict(color=BLUE, linewidths=0)
    if pruned:
        ax.scatter(xs[~below], ends[~below], s=14, zorder=3, **look)
    ax.scatter(xs[below], ends[below], s=14, marker="v", zorder=3, clip_on=False, **look)


# ------------------------------------------------------------------------ param importances

def importance_shares(importances: dict) -> list:
    """[(parameter, share of the total importance, its label)], the largest first: the chart
    draws these and the report's table lists them, so that the two say the same."""
    items = sorted(importances.items(), key=lambda kv: (-float(kv[1]), kv[0]))
    total = sum(max(float(v), 0.0) for _, v in items)
    shares = [max(float(v), 0.0) / total if total > 0 else 0.0 for _, v in items]
    return [(name, share, share_label(share)) for (name, _), share in zip(items, shares)]


def share_label(share: float) -> str:
    """42.1%, 0.3%; <0.1% for a share too small to show but not nothing; 0% for nothing."""
    return "0%" if share <= 0 else "<0.1%" if share < 0.0005 else f"{share:.1%}"


def param_importances(importances: dict, n_trials: int) -> Figure:
    """Horizontal bars, the most important parameter on top, each labelled with its share of
    the total importance."""
    items = importance_shares(importances)
    with styled():
        fig = Figure(figsize=(WIDTH, 1.3 + 0.32 * max(len(items), 2)), layout="constrained")
        ax = fig.subplots()
        ax.set_title(f"Parameter importance (from {n_trials} completed trials)")
        if not items:
            empty(ax, "no importance to show")
            return fig
        shares = [share for _, share, _ in items]
        y = np.arange(len(items))[::-1]
        ax.barh(y, shares, color=BLUE, height=0.6)
        for yi, (_, share, label) in zip(y, items):
            ax.text(share + 0.01, yi, label, va="center", ha="left", fontsize=8)
        ax.set_yticks(y, [name for name, _, _ in items])
        ax.tick_params(axis="y", labelsize=9, length=0)
        ax.set_xlim(0, max(max(shares), 0.05) * 1.15 + 0.04)
        ax.set_ylim(-0.6, len(items) - 0.4)
        ax.set_xlabel("share of the total importance")
        ax.xaxis.set_major_formatter(lambda v, _: f"{v:.0%}")
        ax.grid(axis="y", visible=False)
        return fig


# ---------------------------------------------------------------------- parallel coordinates

def parallel_coordinates(rows: list, params: list, categorical: dict, log: dict,
                         best_number: Optional[int]) -> Figure:
    """One vertical axis per searched parameter and a last one for the validation accuracy;
    each completed trial is a line through its values, coloured by its accuracy (darker is
    better); the best trial in vermillion on top. Each axis spans the values drawn with a
    margin at either end, so that no line runs along an edge: log ones in log space,
    categorical ones as evenly spaced levels. The accuracy axis is painted in the lines'
    colours, height for height: it is their colour key, so no colour bar can disagree."""
    from matplotlib.collections import LineCollection
    from matplotlib.colors import Normalize

    done = sorted((r for r in rows if r.state == "COMPLETE"), key=lambda r: (r.value, -r.number))
    best = _best(done, best_number)
    names = list(params) + [ACC]
    # Past six axes the names stand upright, and the figure grows to hold them.
    upright = max(map(len, names)) if len(names) > 6 else 0
    with styled():
        fig = Figure(figsize=(WIDTH, 3.9 + 0.07 * upright), layout="constrained")
        ax = fig.subplots()
        ax.set_title(f"Parallel coordinates of {len(done)} completed trial"
                     f"{'s' if len(done) != 1 else ''}", pad=10 + 5.0 * upright if upright
                     else 32)
        if not done:
            empty(ax, "no completed trial yet")
            return fig
        low, high = zoom([r.value for r in done], headroom=0.04)
        columns = [_axis([r.params.get(p) for r in done], categorical.get(p, False),
                         log.get(p, False)) for p in params]
        columns.append(_accuracy_axis([r.value for r in done], low, high))
        pos = np.column_stack([c[0] for c in columns])
        cmap, norm = _colormap(), Normalize(low, high)
        lines = [seg for row in pos for seg in _pieces(row)]
        colours = [v for row, v in zip(pos, [r.value for r in done]) for _ in _pieces(row)]
        many = len(done) > 150
        ax.add_collection(LineCollection(lines, array=np.clip(colours, low, high), cmap=cmap,
                                         norm=norm, linewidths=0.6 if many else 1.1,
                                         alpha=0.35 if many else 0.75, zorder=2))
        handles = []
        if best is not None:
            _best_line(ax, pos[done.index(best)])
            handles.append(best_handle(best.number, best.value, line=True))
        n_below = sum(r.value < low for r in done)
        if n_below:
            handles.append(below_handle(low, n_below, colour=cmap(0.0)))
        pad = MARGIN / (1 - 2 * MARGIN) * (high - low)  # the key runs on into the margins
        ax.imshow(np.linspace(low - pad, high + pad, 256)[:, None], cmap=cmap, norm=norm,
                  origin="lower", aspect="auto", extent=(len(params), len(params) + KEY, 0, 1),
                  zorder=4.5)
        _draw_axes(ax, names, [c[1] for c in columns], bool(upright))
        bottom_legend(fig, handles, ncols=2)
        return fig


def _colormap():
    """Blues to navy: light teal for the worst trial, still clear on white, navy for the best."""
    import matplotlib
    from matplotlib.colors import ListedColormap

    return ListedColormap(matplotlib.colormaps["YlGnBu"](np.linspace(0.35, 1.0, 256)))


def _pieces(row: np.ndarray) -> list:
    """A trial's polyline, split where a parameter is missing (a conditional one)."""
    xs = np.arange(len(row))
    ok = np.isfinite(row)
    if ok.all():
        return [np.column_stack([xs, row])]
    pieces, start = [], None
    for i in range(len(row) + 1):
        if i < len(row) and ok[i]:
            start = i if start is None else start
        elif start is not None:
            if i - start >= 2:
                pieces.append(np.column_stack([xs[start:i], row[start:i]]))
            start = None
    return pieces


def _best_line(ax, row: np.ndarray) -> None:
    from matplotlib import patheffects

    halo = [patheffects.withStroke(linewidth=4.5, foreground="white")]
    for piece in _pieces(row):
        ax.plot(piece[:, 0], piece[:, 1], color=VERMILION, lw=2.4, zorder=4,
                path_effects=halo, solid_capstyle="round")


def _inset(share):
    """A share 0..1 of a parameter's range -> its height on the axis, MARGIN from each end."""
    return MARGIN + (1 - 2 * MARGIN) * share


def _axis(values: list, categorical: bool, log: bool) -> tuple:
    """(positions of the values, MARGIN..1-MARGIN, NaN where missing; [(position, tick
    label)], ticks in the margins included)."""
    known = [v for v in values if v is not None]
    if categorical or (known and not all(isinstance(v, (int, float)) for v in known)):
        names = levels(known)
        where = {lev: (_inset(i / (len(names) - 1)) if len(names) > 1 else 0.5)
                 for i, lev in enumerate(names)}
        pos = [np.nan if v is None else where[str(v)] for v in values]
        return np.array(pos, dtype=float), [(where[lev], lev) for lev in names]
    integer = whole(known)
    raw = np.array([np.nan if v is None else float(v) for v in values])
    log = log and bool(known) and min(known) > 0
    t = np.log10(raw) if log else raw
    if not known or np.nanmax(t) == np.nanmin(t):
        label = plain(known[0]) if known else "-"
        return np.where(np.isnan(raw), np.nan, 0.5), [(0.5, label)]
    lo, hi = float(np.nanmin(t)), float(np.nanmax(t))
    pad = MARGIN / (1 - 2 * MARGIN) * (hi - lo)  # the margins in the axis's own units
    ends = (10 ** (lo - pad), 10 ** (hi + pad)) if log else (lo - pad, hi + pad)
    ticks = nice_ticks(*ends, log, integer, most=6 if log else 5)
    scale = (lambda x: _inset((math.log10(x) - lo) / (hi - lo))) if log else \
        (lambda x: _inset((x - lo) / (hi - lo)))
    return _inset((t - lo) / (hi - lo)), [(scale(x), plain(x)) for x in ticks]


def _accuracy_axis(values: list, low: float, high: float) -> tuple:
    from matplotlib.ticker import MaxNLocator

    shown, _ = clipped(values, low, high)
    ticks = [t for t in MaxNLocator(nbins=5, steps=[1, 2, 5, 10]).tick_values(low, high)
             if low <= t <= high]
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 0.01
    decimals = 1
    while decimals < 6 and abs(round(step, decimals) - step) > 1e-9:
        decimals += 1
    span = high - low
    return _inset((shown - low) / span), [(_inset((t - low) / span), f"{t:.{decimals}f}")
                                          for t in ticks]


def _draw_axes(ax, names: list, ticks: list, upright: bool) -> None:
    """The vertical axes over the lines, labels in opaque white boxes on top, so that no line
    runs over them: left of each axis and right of the last one (the accuracy, whose ticks
    cross its colour key); on the axis itself where the axes stand close (upright names)."""
    k = len(names)
    ax.set_xlim(-0.5 if k > 1 else -0.8, k - 1 + (0.45 if k > 1 else 0.8))
    ax.set_ylim(-0.03, 1.03)
    ax.set_axis_off()
    box = dict(boxstyle="square,pad=0.1", fc="white", ec="none", alpha=1.0)
    for x, (name, marks) in enumerate(zip(names, ticks)):
        last = x == k - 1
        dx, ha = (KEY + 0.05, "left") if last else (0, "center") if upright else (-0.05, "right")
        ax.plot([x, x], [0, 1], color=BLACK, lw=0.9, zorder=5)
        for y, label in marks:
            ax.plot([x, x + KEY + 0.02] if last else [x - 0.03, x], [y, y], color=BLACK,
                    lw=0.9, zorder=5)
            ax.text(x + dx, y, label, ha=ha, va="center", fontsize=8, bbox=box, zorder=6)
        ax.text(x, 1.05, name if upright or name != ACC else "validation\naccuracy",
                ha="center", va="bottom", fontsize=9, rotation=90 if upright else 0, zorder=6)
