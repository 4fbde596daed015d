"""A study's run from start to end, as a person sees it: the session opened, the header,
dead trials recovered, the trials with a progress bar, the summary. `hpsearch run` and the
notebook API (hpsearch.api) both run a study here, so that both take one path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from hpsearch import console, interrupts
from hpsearch.config import Config
from hpsearch.session import RunOptions, Session
from hpsearch.study import RunResult


@dataclass(frozen=True)
class Outcome:
    """How a run ended: the session it ran in, what its trials did (None: there was nothing
    to do) and whether it stopped because its trials kept failing."""

    session: Session
    result: Optional[RunResult]
    failed: bool = False


def run_study(cfg: Config, options: RunOptions, quiet: bool = False,
              watch: Optional[Callable] = None) -> Outcome:
    """Open the study of `cfg` and run its trials. `watch(session)`, where given, returns
    what watches the trials in this process (the notebook's live figure: see live.py), or
    None. A stop asked for by Ctrl-C or the notebook's stop button ends the run as
    KeyboardInterrupt at the next safe point, the study intact."""
    interrupts.check()
    console.nothing_searched(cfg)
    session = Session.open(cfg, options, on_note=console.say,
                           on_progress=console.decode_progress(quiet))
    console.skipped_images(session.data.skipped)
    done = session.finished()
    console.header(session, done)
    if session.nothing_to_do(done):
        interrupts.check()
        console.nothing_to_do(session, done)
        return Outcome(session, None)
    for number, queued in session.recover_dead_trials():
        console.recovered(number, queued)
    watcher = watch(session) if watch is not None else None
    try:
        result = run_trials(session, done, quiet, watcher)
        interrupts.check()  # a stop the trials finished before: still an interrupted run
    finally:
        session.close()
        if watcher is not None:
            watcher.close()
    return finish(session, result)


def run_trials(session: Session, done: int, quiet: bool, watcher=None) -> RunResult:
    """The trials themselves: in this process, or in --workers spawned ones. `watcher`
    (a live.LiveFigure) hears each epoch and each trial of this process."""
    study, cfg = session.study, session.cfg
    with console.progress_bar(study, cfg.study.trials, done, quiet=quiet,
                              time_left=session.time_left) as bar:
        if session.options.workers == 1:
            if watcher is None:
                return session.run(callbacks=(bar,))
            return session.run(callbacks=(bar, watcher.trial_done),
                               objective=session.objective(on_epoch=watcher.epoch_done))
        from hpsearch.workers import run_workers

        with session.spending() as budget:
            def poll():
                bar.poll(study)
                if watcher is not None:
                    watcher.trial_done(study, None)

            return run_workers(cfg, session.options, poll=poll, budget=budget)


def finish(session: Session, result: RunResult) -> Outcome:
    cfg, timeout = session.cfg, session.options.timeout
    console.summary(session.study, result, session.spec.display, cfg)
    if result.stopped_by_failures:
        console.stopped_by_failures(result.last_fail_reason)
        return Outcome(session, result, failed=True)
    done = session.finished()
    if cfg.study.trials and done >= cfg.study.trials:
        return Outcome(session, result)
    if session.time_left() == 0:
        console.time_budget_spent(session, done)
    else:
        console.short_of_target(done, cfg, bool(timeout and result.seconds >= timeout))
    return Outcome(session, result)
