"""Accuracy per minute: a study's best validation accuracy so far against the wall time since
its process started, and what is read off that curve. Plain data in, plain data out.

A study's trials come as `[finish time (seconds since the epoch), state, value]`; only
completed trials count, as in Optuna's `best_value`.
"""

from __future__ import annotations

from typing import Optional


def finished_trials(trials) -> list:
    """`[finish time, state, value]` of each of Optuna's FrozenTrials that finished."""
    return [[t.datetime_complete.timestamp(), t.state.name, t.value] for t in trials
            if t.datetime_complete is not None]


def best_so_far(finished: list, started: float) -> list:
    """`[[seconds since started, best value so far], ...]` at each completed trial, in time
    order."""
    curve, best = [], None
    for at, state, value in sorted(finished, key=lambda f: f[0]):
        if state != "COMPLETE" or value is None:
            continue
        best = value if best is None else max(best, value)
        curve.append([at - started, best])
    return curve


def best_at(curve: list, seconds: float) -> Optional[float]:
    """The best value reached within `seconds`; None before the first completed trial."""
    reached = [best for at, best in curve if at <= seconds]
    return reached[-1] if reached else None


def time_to_reach(curve: list, value: float) -> Optional[float]:
    """Seconds until the best value first reached `value`; None if it never did."""
    return next((at for at, best in curve if best >= value), None)
