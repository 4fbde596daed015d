"""hpsearch's chart look and the helpers its charts share: colours, sizes, the zoomed
accuracy axis and plain tick labels.

Every figure is at most WIDTH inches wide with 9 pt text and 8 pt ticks, so that a chart
printed at half the width of an A4 page is still legible, and uses the Okabe-Ito colours,
which stay apart for colour-blind readers. Accuracy axes zoom to where the good trials are;
trials below that are drawn as small down-pointing markers on the lower edge and counted in
the legend.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

# Okabe-Ito: blue, orange, bluish green, reddish purple, sky blue, vermillion, yellow, black.
BLUE, ORANGE, GREEN, PURPLE = "#0072B2", "#E69F00", "#009E73", "#CC79A7"
SKY, VERMILION, BLACK, GREY = "#56B4E9", "#D55E00", "#000000", "#8c8c8c"
RED = VERMILION  # mistakes and the best trial
PALETTE = (BLUE, ORANGE, GREEN, PURPLE, SKY, BLACK, "#F0E442")
MARKERS = ("o", "s", "^", "D", "v", "P", "X")
WIDTH = 6.0  # inches: the widest figure
STYLE = {"axes.spines.top": False, "axes.spines.right": False, "axes.grid": True,
         "grid.alpha": 0.3, "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9,
         "xtick.labelsize": 8, "ytick.labelsize": 8, "legend.fontsize": 8,
         "figure.titlesize": 10, "figure.dpi": 110, "legend.frameon": False}


@contextmanager
def styled():
    """hpsearch's look for its own figures, undone afterwards."""
    import matplotlib
    from cycler import cycler

    with matplotlib.rc_context({**STYLE, "axes.prop_cycle": cycler(color=PALETTE)}):
        yield


def zoom(values, quantile: float = 0.1, headroom: float = 0.18) -> tuple:
    """(low, high) of an accuracy axis: from a low quantile of `values` less a margin, so that
    a few very poor trials do not squash the good ones; everything when none is far below.
    `headroom` (a share of the range) leaves room above the best point for its label."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if not len(v):
        return 0.0, 1.0
    q, top = float(np.quantile(v, quantile)), float(v.max())
    span = max(top - q, 0.02)
    low = q - 0.5 * span
    if v.min() >= q - span:  # nothing far below: show every trial
        low = float(v.min()) - 0.08 * span
    low = min(low, top - 0.02)  # one value, or all alike: still a readable window
    return low, top + max(headroom, 0.04) * (top - low)


def accuracy_limits(ax, low: float, high: float) -> None:
    """The zoomed accuracy axis, ticked in steps of 1, 2 or 5 (never 0.0025)."""
    from matplotlib.ticker import MaxNLocator

    ax.set_ylim(low, high)
    ax.yaxis.set_major_locator(MaxNLocator(nbins=6, steps=[1, 2, 5, 10]))


def clipped(values, low: float, high: float) -> tuple:
    """(values with those below `low` moved onto the lower edge, mask of the moved ones)."""
    v = np.asarray(values, dtype=float)
    below = v < low
    return np.where(below, low + 0.015 * (high - low), v), below


def fmt_acc(x: float) -> str:
    return f"{x:.3f}" if abs(x - round(x, 2)) > 1e-9 else f"{x:.2f}"


def below_handle(low: float, n_done: int, n_pruned: int = 0, colour=BLUE) -> Line2D:
    """The legend entry that counts the trials drawn on the lower edge."""
    counts = [f"{n} {what}" for n, what in ((n_done, "completed"), (n_pruned, "pruned")) if n]
    label = f"below {fmt_acc(low)}, drawn on the lower edge:\n{', '.join(counts)}"
    face = colour if n_done else "none"
    return Line2D([], [], ls="", marker="v", markersize=5, markerfacecolor=face,
                  markeredgecolor=colour if n_done else GREY, label=label)


def best_handle(number: int, value: float, line: bool = False) -> Line2D:
    label = f"best: trial {number} ({value:.4f})"
    if line:
        return Line2D([], [], color=VERMILION, lw=2.4, label=label)
    return Line2D([], [], ls="", marker="*", markersize=11, markerfacecolor=VERMILION,
                  markeredgecolor=BLACK, markeredgewidth=0.6, label=label)


def bottom_legend(fig: Figure, handles: list, ncols: int = 2) -> None:
    """A legend under the axes, where it covers no data."""
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncols=min(ncols, len(handles)),
                   handlelength=1.8, columnspacing=1.2)


def empty(ax, text: str) -> None:
    """An axes that says why it holds no data."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color=GREY)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)


def plain(v: float) -> str:
    """20, 0.003 and 2k rather than 2x10^1, 3e-03 or 2e+03."""
    if v == 0 or not math.isfinite(v):
        return "0" if v == 0 else str(v)
    if abs(v) >= 1000:
        return f"{v / 1000:g}k"
    return np.format_float_positional(float(f"{v:.3g}"), trim="-")


def whole(values) -> bool:
    """Whether every value given is an int (an Optuna IntDistribution's values are)."""
    vals = [v for v in values if v is not None]
    return bool(vals) and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                              for v in vals)


def log_ticks(lo: float, hi: float, integer: bool = False, most: int = 6) -> list:
    """Plain tick values between lo and hi (> 0) of a log axis: 1-2-5 steps where they are
    few enough, else 1-3, else powers of ten."""
    from matplotlib.ticker import LogLocator

    for subs in ((1, 2, 5), (1, 3), (1,)):
        ticks = [t for t in LogLocator(base=10, subs=subs, numticks=99).tick_values(lo, hi)
                 if lo * (1 - 1e-9) <= t <= hi * (1 + 1e-9)]
        if integer:
            ticks = [t for t in ticks if abs(t - round(t)) < 1e-9]
        if len(ticks) <= most:
            break
    return ticks


def nice_ticks(lo: float, hi: float, log: bool = False, integer: bool = False,
               most: int = 6) -> list:
    """At least two plain tick values from lo to hi: log ones where the axis is log and
    they fall inside (4..8 holds no 1-2-5 value but 5), else steps of 1, 2 or 5, else
    the ends."""
    from matplotlib.ticker import MaxNLocator

    ticks = log_ticks(lo, hi, integer, most) if log else []
    if len(ticks) < 2:
        steps = MaxNLocator(nbins=min(most, 5), steps=[1, 2, 5, 10], integer=integer)
        ticks = [float(t) for t in steps.tick_values(lo, hi)
                 if lo - 1e-9 * abs(lo) <= t <= hi + 1e-9 * abs(hi)]
    return ticks if len(ticks) >= 2 else sorted({lo, hi})


def log_axis(ax, values: list, integer: bool = False, which: str = "x", most: int = 4) -> None:
    """A log axis labelled with plain numbers (20, 50, 0.001) rather than 2x10^1."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

    values = [v for v in values if v is not None and v > 0]
    if not values:  # nothing to place: a log scale of no data cannot pick ticks
        return
    axis = ax.xaxis if which == "x" else ax.yaxis
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    if max(values) > min(values):
        axis.set_major_locator(FixedLocator(nice_ticks(min(values), max(values), True,
                                                       integer, most)))
        axis.set_minor_locator(NullLocator())
    axis.set_major_formatter(FuncFormatter(lambda v, _: plain(v)))
    axis.set_minor_formatter(NullFormatter())


def integer_axis(ax, values=(), which: str = "x") -> None:
    """Whole-number ticks; around one value or two neighbours, ticks at those values only,
    else the locator would fall back to 1.95, 2.0, 2.05."""
    from matplotlib.ticker import FixedLocator, MaxNLocator

    axis = ax.xaxis if which == "x" else ax.yaxis
    values = [v for v in values if v is not None]
    if values and max(values) - min(values) < 2:
        axis.set_major_locator(FixedLocator(sorted({round(v) for v in values})))
        (ax.set_xlim if which == "x" else ax.set_ylim)(min(values) - 0.6, max(values) + 0.6)
    else:
        axis.set_major_locator(MaxNLocator(nbins=6, steps=[1, 2, 5, 10], integer=True))


def levels(values) -> list:
    """The distinct choices among `values`, as tick labels in their natural order: numbers
    by value (16, 32, 128, not "128", "16", "32"), anything else by name."""
    known = {v for v in values if v is not None}
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in known):
        return [str(v) for v in sorted(known)]
    return sorted({str(v) for v in known})
