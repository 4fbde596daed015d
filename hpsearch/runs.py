"""A study's run from start to end, as a person sees it: the session opened, the header,
dead trials recovered, the trials with a progress bar, the summary. `hpsearch run` and the
notebook API (hpsearch.api) both run a study here, so that both take one path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

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
              callbacks: tuple = ()) -> Outcome:
    """Open the study of `cfg` and run its trials (`callbacks`: Optuna's, after each trial of
    this process, besides the progress bar's). A stop asked for by Ctrl-C or the notebook's
    stop button ends it as KeyboardInterrupt at the next safe point, the study intact."""
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
    try:
        result = run_trials(session, done, quiet, callbacks)
        interrupts.check()  # a stop the trials finished before: still an interrupted run
    finally:
        session.close()
    return finish(session, result)


def run_trials(session: Session, done: int, quiet: bool, callbacks: tuple = ()) -> RunResult:
    """The trials themselves: in this process, or in --workers spawned ones."""
    study, cfg = session.study, session.cfg
    with console.progress_bar(study, cfg.study.trials, done, quiet=quiet,
                              time_left=session.time_left) as bar:
        if session.options.workers == 1:
            return session.run(callbacks=(bar, *callbacks))
        from hpsearch.workers import run_workers

        with session.spending() as budget:
            return run_workers(cfg, session.options, poll=lambda: bar.poll(study),
                               budget=budget)


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
