"""The study drawn live in a notebook cell while it runs, with no server.

One figure, updated in place: on the left the optimization history (each finished trial,
the best so far), on the right the accuracy per epoch of every finished trial with the
running trial's curve on top, both drawn by the report's own chart code (report.charts).
It is drawn at the first epoch, then after epochs and trials, but never more often than
keeps its drawing under SHARE of the run's time: a redraw waits at least 1/SHARE times as
long as the last one took, and at least MIN_GAP seconds. A last update shows the study as it
ended.

Only where IPython runs a kernel (Jupyter, Colab); in a terminal or a script nothing is
drawn and nothing of this is imported.
"""

from __future__ import annotations

import io
import logging
import time
from typing import Optional

log = logging.getLogger("hpsearch")

SHARE = 0.02  # the most of the run's wall time the figure may take between updates
MIN_GAP = 2.0  # seconds between two updates at least


def in_notebook() -> bool:
    """Whether this process is a notebook's kernel (IPython with a kernel, not a terminal)."""
    import sys

    if "IPython" not in sys.modules:
        return False
    from IPython import get_ipython

    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


class LiveFigure:
    """Watches one run: `epoch_done` and `trial_done` are the objective's and Optuna's
    callbacks, `close` draws the end. `show(png)` puts a PNG in the cell (a display handle's
    update in a notebook)."""

    def __init__(self, study, max_epochs: int, show):
        self.study, self.max_epochs, self.show = study, max_epochs, show
        self.running: dict = {}  # trial number -> its history so far
        self.last_draw, self.draw_seconds = float("-inf"), 0.0
        self.spent = 0.0  # seconds drawing, in all
        self.updates = 0
        self.broken = False

    def epoch_done(self, number: int, history: dict) -> None:
        self.running = {number: history}
        self._maybe_draw()

    def trial_done(self, study, trial) -> None:
        if trial is not None:
            self.running.pop(trial.number, None)
        self._maybe_draw()

    def close(self) -> None:
        self.running = {}
        self.draw()

    def _maybe_draw(self) -> None:
        wait = max(MIN_GAP, self.draw_seconds / SHARE)
        if time.perf_counter() - self.last_draw >= wait:
            self.draw()

    def draw(self) -> None:
        """One picture; a figure that cannot be drawn stops drawing, never the study (it
        runs inside the objective: an error here would fail the trial)."""
        if self.broken:
            return
        start = time.perf_counter()
        try:
            self.show(png_of(figure(self.study, self.running, self.max_epochs)))
        except Exception as err:  # noqa: BLE001 (a picture is never worth a trial)
            self.broken = True
            log.warning("the live figure stopped: %s: %s", type(err).__name__, err)
            return
        self.last_draw = time.perf_counter()
        self.draw_seconds = self.last_draw - start
        self.spent += self.draw_seconds
        self.updates += 1


def figure(study, running: dict, max_epochs: int):
    """The live figure of `study` now, with `running` ({trial number: history}) on top."""
    from matplotlib.figure import Figure

    from hpsearch.records import count_states
    from hpsearch.report import collect
    from hpsearch.report.charts import epochs_on, history_on
    from hpsearch.report.style import WIDTH, styled

    trials = study.get_trials(deepcopy=False)
    rows = collect.finished_rows(trials)
    best = collect.best_trial(trials)
    chosen = best.number if best is not None else None
    now = [collect.Row(n, "RUNNING", h["val_acc"][-1] if h.get("val_acc") else 0.0, {}, None,
                       0.0, len(h.get("val_acc") or []), h) for n, h in running.items()]
    with styled():
        # Fixed margins: the constrained layout would double the cost of each picture.
        fig = Figure(figsize=(2 * WIDTH, 3.9))
        fig.subplots_adjust(left=0.06, right=0.99, top=0.86, bottom=0.3, wspace=0.15)
        left, right = fig.subplots(1, 2)
        left.set(title="Optimization history", xlabel="trial", ylabel="validation accuracy")
        right.set(title="Validation accuracy per epoch", xlabel="epoch")
        for ax, handles in ((left, history_on(left, rows, chosen)),
                            (right, epochs_on(right, rows, chosen, max_epochs, now))):
            if handles:  # long entries one per line, or they run past the figure's edge
                wide = max(len(h.get_label()) for h in handles) > 34
                ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.18),
                          ncols=1 if wide else 2, fontsize=7 if wide else 8)
        states = count_states(trials)
        counts = ", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items()))
        found = "" if best is None else f"; best {best.value:.4f} (trial {best.number})"
        fig.suptitle(f"Study {study.study_name!r}: {counts or 'no trial yet'}{found}")
        return fig


def png_of(fig, dpi: int = 80) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def in_cell(session) -> Optional[LiveFigure]:
    """A LiveFigure showing in the running cell, or None outside a notebook."""
    if not in_notebook():
        return None
    from IPython.display import Image, display

    shown: list = []  # the display handle, once the first picture is in the cell

    def show(png: bytes) -> None:
        if shown:
            shown[0].update(Image(png))
        else:
            shown.append(display(Image(png), display_id=True))

    return LiveFigure(session.study, session.max_epochs, show)  # drawn at the first epoch
