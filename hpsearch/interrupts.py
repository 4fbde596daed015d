"""Ctrl-C and SIGTERM: recorded the moment they come, acted on at the run's next safe point.

A handler that raises wherever the signal lands can leave a store's write transaction open,
or land inside a weakref callback or a destructor, where Python prints the exception and
drops it: the run goes on as if nothing was pressed. So the handler only records the
request; the run checks it at points where stopping is clean (between the steps of its
start-up, after every training batch, after every trial) and raises KeyboardInterrupt
there. A second signal that finds the first still unheeded after PATIENCE seconds raises at
once, wherever it lands; once a safe point has acted on the first, further signals wait
for the clean stop it began (queueing the trial again, the last backup).
"""

from __future__ import annotations

import signal
import time
from typing import Callable, Optional

PATIENCE = 5.0  # seconds a request may wait for a safe point before a second one forces it

_requested: Optional[int] = None  # the signal number of the pending request
_since = 0.0
_heeded = False  # a safe point has acted on it: the run is stopping cleanly
_watches: list = []  # further checks of every safe point (see watch)


def install() -> None:
    """Record Ctrl-C and SIGTERM (a stopped VM, Colab's stop button) from now on. Call it
    from the main thread, first thing in a run."""
    for name in ("SIGINT", "SIGTERM"):
        signal.signal(getattr(signal, name), _record)


def _record(signum, frame) -> None:
    global _requested, _since
    now = time.monotonic()
    if _requested is None:
        _requested, _since = signum, now
    elif not _heeded and now - _since > PATIENCE:
        raise KeyboardInterrupt  # the first request was never acted on: stop here


def requested() -> bool:
    """Whether a stop was asked for."""
    return _requested is not None


def check() -> None:
    """A safe point: raise KeyboardInterrupt if a stop was asked for."""
    global _heeded
    if _requested is not None:
        _heeded = True
        raise KeyboardInterrupt
    for watched in _watches:
        watched()


def watch(check: Callable[[], None]) -> None:
    """Run `check` at every safe point from now on: it raises to stop the run there (a
    worker whose shared images' owner died: see sharing). `unwatch` ends it."""
    _watches.append(check)


def unwatch() -> None:
    _watches.clear()


def stop_study(study, trial) -> None:
    """A study callback: once a stop is asked for, run no further trial."""
    if _requested is not None:
        study.stop()


def forget() -> None:
    """Drop a pending request (for a process that goes on after handling it)."""
    global _requested, _heeded
    _requested, _heeded = None, False
