"""Samplers, pruners, create-or-resume, recovery of dead trials, stopping at the target
count or the time budget."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Optional

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch import interrupts, private, records
from hpsearch.config import Config
from hpsearch.params import Fixed, grid_values
from hpsearch.errors import SettingsMismatch
from hpsearch.owner import is_mine, is_provably_dead
from hpsearch.records import FINISHED, RetryStaleTrial, count_finished, retry_chain

MAX_FAILS_IN_A_ROW = 5
MAX_RETRIES = 1  # retries of a trial whose process died; Ctrl-C retries without limit


def sampler_seed(seed: int, n_stored: int, worker: int = 0) -> int:
    """A sampler seed per (study seed, trials already stored, worker): a resumed run never
    replays the random start-up points of an earlier one."""
    return int(np.random.SeedSequence([seed, n_stored, worker]).generate_state(1)[0])


def make_sampler(cfg: Config, seed: int, alone: bool = False) -> optuna.samplers.BaseSampler:
    """The study file's sampler. `alone`: this process runs the study's only trials."""
    name = cfg.study.sampler
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "grid":
        space = {p.name: grid_values(p) for p in cfg.space if not isinstance(p, Fixed)}
        return optuna.samplers.GridSampler(space, seed=seed)
    # Constant liar counts the other workers' running trials as bad, so that parallel workers
    # spread out. A process alone has none: it draws the same parameters without it (checked
    # on 60 trials) and saves a read of the study and a write per trial.
    return optuna.samplers.TPESampler(seed=seed, constant_liar=not alone)


def runs_alone(spec, workers: int) -> bool:
    """Whether a run's trials are its study's only ones: one process on a SQLite file, the
    store for one process. Journal files and database servers are there to be shared."""
    return workers == 1 and spec.kind == "sqlite"


def make_pruner(cfg: Config, epochs: int) -> optuna.pruners.BasePruner:
    """The study file's pruner for trials of at most `epochs` epochs."""
    name = cfg.study.pruner
    if name == "median":
        # The default, with Optuna's defaults: five finished trials to compare with, then
        # judged from the first epoch on; chosen by `make bench` (see BENCHMARKS.md).
        return CompletedOncePerTrial(
            optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0))
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=first_rung(epochs),
                                              max_resource=epochs, reduction_factor=3)
    if name == "sha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=first_rung(epochs),
                                                      reduction_factor=3)
    return optuna.pruners.NopPruner()


def first_rung(epochs: int) -> int:
    """The epoch at which hyperband and successive halving first judge a trial: a 27th of the
    longest (three rungs of reduction factor 3 below the maximum), so that a long trial is not
    judged on a few steps of its warmup; epoch 1 for short ones."""
    return max(1, epochs // 27)


class CompletedOncePerTrial(optuna.pruners.BasePruner):
    """A pruner that judges by completed trials (median, percentile) without reading them
    from the store after every epoch: it takes the list the sampler read when the trial
    started (Optuna's per-trial cache, which its own samplers use) and reads again only
    once that list is `max_age` seconds old.

    In one process no trial completes while another runs, so the decisions are the same as
    the wrapped pruner's; with several workers the list is at most `max_age` seconds old.
    A read per epoch was the largest part of the framework's time per trial (BENCHMARKS.md).
    """

    def __init__(self, pruner: optuna.pruners.BasePruner, max_age: float = 10.0):
        self.pruner, self.max_age = pruner, max_age
        self._key, self._read_at, self._completed = None, 0.0, []

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        key, now = (private.study_id(study), trial.number), time.monotonic()
        if key != self._key:
            # Optuna's cache: filled by the sampler after ask (or now), dropped at tell. Its
            # age is the trial's.
            started = trial.datetime_start or datetime.now()
            self._read_at = now - (datetime.now() - started).total_seconds()
            self._completed = private.completed_trials_cached(study, (TrialState.COMPLETE,))
            self._key = key
        if now - self._read_at > self.max_age:
            self._completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            self._read_at = now
        return self.pruner.prune(_WithCompleted(study, self._completed), trial)


class _WithCompleted:
    """The study as a pruner sees it, with its completed trials already read."""

    def __init__(self, study: optuna.Study, completed: list):
        self._study, self._completed = study, completed

    def get_trials(self, deepcopy: bool = True, states=None) -> list:
        if states is not None and tuple(states) == (TrialState.COMPLETE,):
            return list(self._completed)
        return self._study.get_trials(deepcopy=deepcopy, states=states)

    def __getattr__(self, name: str):
        return getattr(self._study, name)


def find_study(storage, name: str) -> Optional[optuna.Study]:
    if name not in optuna.get_all_study_names(storage=storage):
        return None
    return optuna.load_study(study_name=name, storage=storage)


def check_settings(study: optuna.Study, record: dict) -> None:
    """Refuse to resume a study whose stored settings differ from this run's."""
    stored = study.user_attrs.get(records.SETTINGS_ATTR)
    if not isinstance(stored, dict):
        raise SettingsMismatch(f"study {study.study_name!r} was not made by hpsearch; "
                               f"pass --study-name NEW to start a new one")
    # Package versions are kept for the record; a newer torch on a resumed Colab is fine.
    stored = records.with_later_defaults(stored)
    diffs = _differences({k: v for k, v in stored.items() if k != "versions"},
                         {k: v for k, v in record.items() if k != "versions"})
    if diffs:
        shown = "; ".join(f"{k} was {a!r}, now {b!r}" for k, a, b in diffs[:3])
        more = f" (and {len(diffs) - 3} more)" if len(diffs) > 3 else ""
        raise SettingsMismatch(
            f"study {study.study_name!r} was created with other settings: {shown}{more}; "
            f"rerun with the original settings or pass --study-name NEW for a new study")


# Not compared. The normalisation follows from the data's fingerprint, split seed and image
# size (its last digits depend on how it was summed, which a newer hpsearch may do otherwise);
# train.augment from config.space.augment, which holds the value it resolved to; and the
# precision may change with the machine, as the device may (a trial resumes in another one).
# max_epochs follows from train.epochs and the data (and the time budget, which may change):
# a resumed study keeps the stored one.
DERIVED_SETTINGS = ("data.normalization", "config.train.augment", "config.train.precision",
                    "max_epochs")


def _differences(stored: dict, now: dict, prefix: str = "") -> list:
    diffs = []
    for key in sorted(set(stored) | set(now), key=str):
        a, b, name = stored.get(key), now.get(key), f"{prefix}{key}"
        if name in DERIVED_SETTINGS:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += _differences(a, b, name + ".")
        elif not _same(a, b):
            diffs.append((name, a, b))
    return diffs


def _same(a, b) -> bool:
    """Equal, with floats (learning rates, normalization statistics) compared to a relative
    1e-9 so that a value read back from JSON is not a change; integers compare exactly."""
    if isinstance(a, float) or isinstance(b, float):
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b))
        return numbers and math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def open_study(storage, cfg: Config, record: dict, worker: int = 0,
               alone: bool = False) -> optuna.Study:
    """Create the study or resume it after checking its settings, its objective named for the
    dashboard; seed the sampler by the number of trials already stored. `alone`: see
    runs_alone."""
    study = find_study(storage, cfg.study.name)
    if study is None:
        study = optuna.create_study(study_name=cfg.study.name, storage=storage,
                                    direction="maximize", load_if_exists=True)
        if records.SETTINGS_ATTR not in study.user_attrs:
            records.write_settings(study, record)
    check_settings(study, record)
    records.name_the_metric(study)  # on resume too: studies stored before it was named
    n_stored = len(study.get_trials(deepcopy=False))
    study.sampler = make_sampler(cfg, sampler_seed(cfg.study.seed, n_stored, worker), alone)
    study.pruner = make_pruner(cfg, records.max_epochs_of(records.stored_settings(study), cfg))
    return study


def recover_dead_trials(study: optuna.Study, restored: bool = False) -> list:
    """Fail each RUNNING trial whose owner is provably dead on this host (every one, in a
    store just restored from a backup: nothing writes to that copy) and queue one retry with
    the same parameters. Returns (trial number, retry queued) pairs."""
    recovered = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not restored and not is_provably_dead(trial.user_attrs.get(records.OWNER_ATTR),
                                                 trial.number):
            continue
        failed = records.fail_dead_trial(study, trial)
        if failed is None:
            continue  # another worker got there first
        recovered.append((trial.number, queue_retry(study, failed, MAX_RETRIES)))
    return recovered


def queue_retry(study: optuna.Study, trial: FrozenTrial, max_retry: Optional[int]) -> bool:
    """Queue a failed trial again with its parameters and attributes (its retry chain, which
    gives the retry its origin's seed and checkpoint), unless it was already retried
    `max_retry` times: a trial that kills its process every time must not keep a study from
    finishing."""
    if max_retry is not None and len(retry_chain(trial)) >= max_retry:
        return False
    RetryStaleTrial(max_retry=max_retry)(study, trial)
    return True


def requeue_interrupted(study: optuna.Study, finished: set) -> Optional[int]:
    """After Ctrl-C: Optuna has marked the trial this process was running as failed; queue
    it again so the next run starts with it. Returns its number, if there was one. A trial
    already queued again (one a dead owner's images ended, see sharing) is not queued twice."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.system_attrs.get("failed_trial") for t in trials}
    for trial in reversed([t for t in trials if t.state == TrialState.FAIL]):
        owner = records.owner_of(trial)
        if trial.number in finished or trial.number in retried or not is_mine(owner):
            continue
        if owner.get("trial") != trial.number:
            continue  # an attribute copied into a retry that never started
        return trial.number if queue_retry(study, trial, max_retry=None) else None
    return None


def grid_is_exhausted(study: optuna.Study) -> bool:
    sampler = study.sampler
    return isinstance(sampler, optuna.samplers.GridSampler) and sampler.is_exhausted(study)


class FailStreak:
    """Stops the study after `limit` failed trials in a row."""

    def __init__(self, limit: int = MAX_FAILS_IN_A_ROW):
        self.limit = limit
        self.streak = 0
        self.last_reason: Optional[str] = None

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state != TrialState.FAIL:
            self.streak = 0
            return
        self.streak += 1
        self.last_reason = records.fail_reason_of(trial) or "see the log above"
        if self.streak >= self.limit:
            study.stop()


class TrialTarget:
    """Stops the study once it holds `target` finished trials, as Optuna's MaxTrialsCallback
    does by reading every trial from the store after each one. A run alone on its store (see
    runs_alone) counts the trials it finishes instead, and reads the store only when a trial
    number shows that another process created trials in between (so it counts those one trial
    late): the read after every trial was a tenth of the framework's time per trial."""

    def __init__(self, study: optuna.Study, target: int, alone: bool):
        self.target = target
        self.alone = alone
        trials = study.get_trials(deepcopy=False)
        self.finished = sum(t.state in FINISHED for t in trials)
        self.last_number = len(trials) - 1

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if self.alone and trial.number == self.last_number + 1:
            self.finished += trial.state in FINISHED
        else:
            self.finished = count_finished(study)
        self.last_number = max(self.last_number, trial.number)
        if self.finished >= self.target:
            study.stop()


@dataclass
class TimeBudget:
    """A study's time budget as a run spends it: the study's total, what earlier runs spent
    and when this run's trials began. Its worker processes get a copy, so that they share
    one clock and none counts the others' time twice (the clock starts as they are spawned:
    their start-up counts). Optuna's timeout ends a run: no trial starts once the budget is
    spent, and the one running then finishes."""

    total: float  # seconds the study may spend running trials in all (cfg.study.time); 0: none
    spent: float  # seconds spent before this run's trials began (records.time_spent)
    # time.time() when this run's trials began (a clock its worker processes share, as
    # perf_counter is not); None before they begin and after they end
    since: Optional[float] = None

    @classmethod
    def of(cls, study: optuna.Study, total: float) -> "TimeBudget":
        """The budget `total` of a study, less what its earlier runs spent."""
        return cls(total, records.time_spent(study))

    def start(self) -> None:
        if self.since is None:
            self.since = time.time()

    def stop(self) -> None:
        self.spent, self.since = self.spent_now(), None

    def spent_now(self) -> float:
        return self.spent + (0.0 if self.since is None else max(0.0, time.time() - self.since))

    def left(self) -> Optional[float]:
        """Seconds left of the budget now, or None without one."""
        return max(0.0, self.total - self.spent_now()) if self.total else None

    def record(self, study: optuna.Study, trial: Optional[FrozenTrial] = None) -> None:
        """Store the time spent so far (also a study callback, run as each trial ends)."""
        records.write_time_spent(study, self.spent_now())


@dataclass
class RunResult:
    ran: int  # trials this run finished (any state)
    seconds: float
    states: dict = field(default_factory=dict)  # state name -> count, whole study
    stopped_by_failures: bool = False
    last_fail_reason: Optional[str] = None
    lock_retries: int = 0  # statements retried because the SQLite store was locked


def run(study: optuna.Study, objective, target: Optional[int], *,
        timeout: Optional[float] = None, callbacks: tuple = (), alone: bool = False) -> RunResult:
    """Run trials until the study holds `target` finished ones (None: no limit), the timeout
    passes or trials keep failing. Crashing trials are recorded as FAIL and the study goes
    on. `alone`: this process runs the study's only trials (see runs_alone). A Ctrl-C or
    SIGTERM (see interrupts) stops the running trial at its next batch, or the study after
    its trial; the interrupted trial is queued for the next run and KeyboardInterrupt
    raised."""
    from hpsearch.sqlite import lock_retries
    from hpsearch.train import release_device_memory

    interrupts.check()  # asked for since the last start-up step: no trial starts
    streak = FailStreak()
    ran = []
    start = time.perf_counter()
    try:
        study.optimize(
            objective,
            timeout=timeout,
            catch=(Exception,),
            gc_after_trial=False,  # the trainer holds no reference cycles worth a collection
            callbacks=[*([TrialTarget(study, target, alone)] if target else []), streak,
                       lambda s, t: ran.append(t.number),
                       lambda s, t: release_device_memory(), *callbacks,
                       interrupts.stop_study],
        )
        interrupts.check()  # asked for between two trials: stopped after the first
    except KeyboardInterrupt:
        requeue_interrupted(study, set(ran))
        raise
    return RunResult(ran=len(ran), seconds=time.perf_counter() - start,
                     states=records.state_counts(study),
                     stopped_by_failures=streak.streak >= streak.limit,
                     last_fail_reason=streak.last_reason, lock_retries=lock_retries())
