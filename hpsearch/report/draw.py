"""Plain data -> matplotlib Figures. No pyplot, except Optuna's own plots (see optuna_plot)."""

from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np
from matplotlib.figure import Figure

BLUE, GREY, RED = "#1f77b4", "#9a9a9a", "#d62728"
STYLE = {"axes.spines.top": False, "axes.spines.right": False, "axes.grid": True,
         "grid.alpha": 0.3, "font.size": 9, "axes.titlesize": 10, "figure.dpi": 110}


@contextmanager
def styled():
    """hpsearch's look for its own figures, undone afterwards."""
    import matplotlib

    with matplotlib.rc_context(STYLE):
        yield


def learning_curves(rows: list) -> Figure:
    """Training (dashed) and validation (solid) accuracy and loss per epoch, one colour per
    trial, for the best trials."""
    with styled():
        fig = Figure(figsize=(10, 3.8), layout="constrained")
        acc, loss = fig.subplots(1, 2)
        colours = _colours(len(rows))
        for row, colour in zip(rows, colours):
            h = row.history
            epochs = np.arange(1, len(h.get("val_acc", [])) + 1)
            label = f"trial {row.number} (val {row.value:.4f})"
            acc.plot(epochs, h.get("val_acc", []), color=colour, label=label)
            acc.plot(epochs, h.get("train_acc", []), color=colour, ls="--", lw=1)
            loss.plot(epochs, h.get("val_loss", []), color=colour)
            loss.plot(epochs, h.get("train_loss", []), color=colour, ls="--", lw=1)
        acc.set(title="Accuracy (solid: validation, dashed: training)", xlabel="epoch",
                ylabel="accuracy")
        loss.set(title="Cross-entropy loss", xlabel="epoch", ylabel="loss", yscale="log")
        for ax in (acc, loss):
            ax.xaxis.get_major_locator().set_params(integer=True)
        if rows:
            acc.legend(loc="lower right", fontsize=8)
        return fig


def prediction_grid(images: np.ndarray, predicted: np.ndarray, true: np.ndarray,
                    classes: tuple, title: str) -> Figure:
    """Test images (N, C, H, W in 0..1) titled with prediction and truth; mistakes in red."""
    n = len(images)
    cols = min(8, max(n, 1))
    rows = max(1, math.ceil(n / cols))
    with styled():
        # A fixed grid: constrained layout would spend seconds measuring 32 tiny titles.
        fig = Figure(figsize=(1.25 * cols, 1.45 * rows + 0.5))
        fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=1 - 0.5 / (1.45 * rows + 0.5),
                            wspace=0.15, hspace=0.35)
        fig.suptitle(title + " (red: predicted / true)" if (predicted != true).any() else title)
        axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
        for ax in axes:
            ax.set_axis_off()
        for ax, img, p, t in zip(axes, images, predicted, true):
            ax.imshow(_displayable(img), cmap="gray" if img.shape[0] == 1 else None,
                      vmin=0, vmax=1, interpolation="nearest")
            wrong = p != t
            ax.set_title(f"{classes[p]} / {classes[t]}" if wrong else f"{classes[t]}",
                         color=RED if wrong else "black", fontsize=8,
                         fontweight="bold" if wrong else "normal")
            if wrong:
                ax.set_axis_on()
                ax.set_xticks([])
                ax.set_yticks([])
                ax.grid(False)
                for spine in ax.spines.values():
                    spine.set(color=RED, linewidth=2, visible=True)
        return fig


def _displayable(img: np.ndarray) -> np.ndarray:
    img = np.clip(img, 0.0, 1.0)
    return img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)


def comparison(rows: list, params: list, categorical: dict, log: dict) -> Figure:
    """Validation accuracy against each searched parameter, the parameter count and the
    training time. Filled: completed trials; hollow grey: pruned (their last reported value)."""
    panels = list(params) + ["parameters", "training seconds"]
    cols = min(4, len(panels))
    n_rows = math.ceil(len(panels) / cols)
    with styled():
        fig = Figure(figsize=(3.1 * cols, 2.7 * n_rows), layout="constrained")
        axes = np.atleast_1d(fig.subplots(n_rows, cols, squeeze=False)).ravel()
        for ax in axes[len(panels):]:
            ax.set_visible(False)
        for ax, name in zip(axes, panels):
            xs, ticks = _x_values(rows, name, categorical.get(name, False))
            for state, style in (("PRUNED", dict(facecolors="none", edgecolors=GREY)),
                                 ("COMPLETE", dict(color=BLUE))):
                keep = [i for i, r in enumerate(rows) if r.state == state and xs[i] is not None]
                ax.scatter([xs[i] for i in keep], [rows[i].value for i in keep], s=18,
                           label=state.lower(), **style)
            if ticks:
                ax.set_xticks(range(len(ticks)), ticks)
            if log.get(name) or name == "parameters":
                _log_axis(ax, [x for x in xs if x is not None])
            ax.set(xlabel=name, ylabel="validation accuracy")
        if rows:
            axes[0].legend(fontsize=8, loc="lower right")
        return fig


def _log_axis(ax, xs: list) -> None:
    """Log scale with plain numbers (20, 50, 0.001) rather than 2x10^1 where it is short."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    if xs and max(xs) / max(min(xs), 1e-300) < 100:
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1, 2, 5)))
    ax.xaxis.set_major_formatter(FuncFormatter(
        lambda v, _: f"{v / 1000:g}k" if v >= 1000 else f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _x_values(rows: list, name: str, categorical: bool) -> tuple:
    if name == "parameters":
        return [r.n_params for r in rows], None
    if name == "training seconds":
        return [r.train_seconds for r in rows], None
    values = [r.params.get(name) for r in rows]
    # A small fixed spread keeps overlapping points of one choice or small integer visible.
    jitter = np.random.default_rng(0).uniform(-0.15, 0.15, len(values))
    if not categorical:
        few_ints = all(isinstance(v, int) for v in values if v is not None) and \
            len(set(values) - {None}) <= 10
        if few_ints:
            return [None if v is None else v + j for v, j in zip(values, jitter)], None
        return values, None
    ticks = sorted({str(v) for v in values if v is not None})
    return [None if v is None else ticks.index(str(v)) + j for v, j in zip(values, jitter)], ticks


def confusion(matrix: np.ndarray, classes: tuple) -> Figure:
    """Counts per (true, predicted) class; colour is the share of the true class's row."""
    k = len(classes)
    size = max(3.5, 0.45 * k + 1.5)
    with styled():
        fig = Figure(figsize=(size + 0.8, size), layout="constrained")
        ax = fig.subplots()
        shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
        im = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
        ax.grid(False)
        if k <= 30:
            for i in range(k):
                for j in range(k):
                    if matrix[i, j]:
                        ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7,
                                color="white" if shares[i, j] > 0.5 else "black")
        labels = [str(c) for c in classes]
        ax.set_xticks(range(k), labels, rotation=90 if k > 10 else 0)
        ax.set_yticks(range(k), labels)
        ax.set(xlabel="predicted", ylabel="true")
        fig.colorbar(im, ax=ax, label="share of the true class", shrink=0.8)
        return fig


def best_so_far(series: dict, title: str, xlabel: str) -> Figure:
    """Best validation accuracy so far, one step line per study: {name: (xs, best values)}."""
    with styled():
        fig = Figure(figsize=(6.5, 3.8), layout="constrained")
        ax = fig.subplots()
        for name, (xs, best) in series.items():
            ax.step(xs, best, where="post", label=name)
        ax.set(title=title, xlabel=xlabel, ylabel="best validation accuracy so far")
        ax.legend(fontsize=8, loc="lower right")
        return fig


def optuna_plot(plot, study, *, legend: bool = True, xlabel: str = None,
                ylabel: str = None) -> Figure:
    """One of `optuna.visualization.matplotlib`'s plots as a Figure. They set a pyplot style
    and open figures: the style is undone by rc_context and the figure is closed at once, so
    pyplot keeps nothing open. A legend of one entry per trial is dropped with `legend=False`;
    "Objective Value" becomes what the value is with `ylabel`."""
    import matplotlib
    import matplotlib.pyplot as plt

    before = set(plt.get_fignums())
    with matplotlib.rc_context():
        try:
            ax = np.atleast_1d(plot(study)).ravel()[0]
            if not legend and ax.get_legend() is not None:
                ax.get_legend().remove()
            if xlabel:
                ax.set_xlabel(xlabel)
            if ylabel:
                ax.set_ylabel(ylabel)
            fig = ax.figure
            fig.set_size_inches(7.5, 4.2)
        finally:
            for number in set(plt.get_fignums()) - before:
                plt.close(number)
    return fig


def _colours(n: int) -> list:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def save(fig: Figure, path, tight: bool = False) -> None:
    """`tight` for Optuna's figures, whose legends sit outside the axes; ours are laid out
    already, and measuring the box again would double the drawing time."""
    fig.savefig(path, dpi=110, bbox_inches="tight" if tight else None)
