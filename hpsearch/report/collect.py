"""A study -> plain data for the report: rows per trial, the summary, the best configuration.

Nothing here draws or writes; every function reads the trials it is given, so a report of
1,000 trials reads the store once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from hpsearch import records
from hpsearch.params import PARAM_DEFAULTS
from hpsearch.errors import ReportError
from hpsearch.records import device_of, trial_seed


@dataclass(frozen=True)
class Row:
    """One finished trial as the report shows it."""

    number: int
    state: str  # COMPLETE | PRUNED
    value: float  # final validation accuracy, or the last one reported before pruning
    params: dict  # searched values only
    n_params: Optional[int]
    train_seconds: float  # sum of the epochs' wall times
    epochs_run: int
    history: dict = field(default_factory=dict)  # per-epoch lists (see train.History)


def finished_rows(trials: list) -> list:
    """Complete and pruned trials that reported at least one epoch, in trial order."""
    rows = []
    for t in trials:
        if t.state not in (TrialState.COMPLETE, TrialState.PRUNED):
            continue
        value = t.value if t.state == TrialState.COMPLETE else _last_reported(t)
        if value is None:
            continue
        history = records.history_of(t)
        seconds = history.get("epoch_seconds") or []
        rows.append(Row(t.number, t.state.name, float(value), dict(t.params),
                        records.n_params_of(t), float(sum(seconds)),
                        len(t.intermediate_values), history))
    return rows


def _last_reported(t: FrozenTrial) -> Optional[float]:
    if not t.intermediate_values:
        return None
    return t.intermediate_values[max(t.intermediate_values)]


def top_rows(rows: list, n: int = 10) -> list:
    """The n best completed trials, best first (ties: the earlier trial)."""
    done = [r for r in rows if r.state == "COMPLETE"]
    return sorted(done, key=lambda r: (-r.value, r.number))[:n]


def study_settings(study) -> dict:
    settings = records.stored_settings(study)
    if settings is None:
        raise ReportError(f"study {study.study_name!r} was not made by hpsearch run; "
                          f"use optuna-dashboard to look at it")
    return settings


@dataclass(frozen=True)
class Summary:
    name: str
    states: dict  # state name -> count
    wall_seconds: float  # first trial start to last trial end
    device: Optional[str]
    sampler: str
    pruner: str
    epochs: int
    epochs_run: int  # by finished trials
    epochs_possible: int  # finished trials x epochs


def summarize(study, trials: list, settings: dict) -> Summary:
    states = records.count_states(trials)
    starts = [t.datetime_start for t in trials if t.datetime_start]
    ends = [t.datetime_complete for t in trials if t.datetime_complete]
    wall = (max(ends) - min(starts)).total_seconds() if starts and ends else 0.0
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    devices = {device_of(t) for t in finished} - {None}
    cfg = settings["config"]
    epochs = records.stored_max_epochs(settings) or max(
        (len(t.intermediate_values) for t in finished), default=0)
    return Summary(
        name=study.study_name, states=states, wall_seconds=wall,
        device=", ".join(sorted(devices)) or None, sampler=cfg["study"]["sampler"],
        pruner=cfg["study"]["pruner"], epochs=epochs,
        epochs_run=sum(len(t.intermediate_values) for t in finished),
        epochs_possible=len(finished) * epochs)


def best_trial(trials: list) -> Optional[FrozenTrial]:
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    return min(done, key=lambda t: (-t.value, t.number)) if done else None


def all_params(trial: FrozenTrial, cfg) -> dict:
    """Every value the trial trained with: searched, fixed in [space], or the defaults."""
    from hpsearch.space import fixed_params

    params = {**PARAM_DEFAULTS, "batch_size": cfg.train.batch_size, **fixed_params(cfg)}
    params.update(trial.params)
    return params


def best_config(study, trial: FrozenTrial, settings: dict, cfg) -> dict:
    """What best_config.json holds: the best trial's values merged with the study's fixed
    settings, its validation accuracy, and what `hpsearch train --best` needs to retrain it."""
    data = settings.get("data", {})
    return {
        "study": study.study_name,
        "trial": trial.number,
        "validation_accuracy": trial.value,
        "params": all_params(trial, cfg),
        "seed": trial_seed(cfg.study.seed, trial),
        "dataset": cfg.data.dataset,
        "image_size": cfg.data.image_size,
        "epochs": records.max_epochs_of(settings, cfg),  # a number to retrain with
        "precision": cfg.train.precision,
        "split_seed": settings.get("split_seed", cfg.study.seed),
        "normalization": data.get("normalization"),
        "classes": data.get("classes"),
        "data_fingerprint": data.get("fingerprint"),
        "n_params": records.n_params_of(trial),
        "config": settings["config"],
    }


def best_so_far(trials: list) -> tuple:
    """(trial numbers, best completed value up to each) for the optimization history."""
    numbers, best, current = [], [], -math.inf
    for t in sorted(trials, key=lambda t: t.number):
        if t.state == TrialState.COMPLETE and t.value is not None:
            current = max(current, t.value)
            numbers.append(t.number)
            best.append(current)
    return numbers, best


def is_categorical(trials: list, name: str) -> bool:
    for t in trials:
        if name in t.distributions:
            return isinstance(t.distributions[name], CategoricalDistribution)
    return False


def is_log(trials: list, name: str) -> bool:
    for t in trials:
        if name in t.distributions:
            return bool(getattr(t.distributions[name], "log", False))
    return False


def searched(trials: list) -> list:
    """Parameter names the sampler chose, in first-seen order."""
    names: dict = {}
    for t in trials:
        for name in t.distributions:
            names.setdefault(name, None)
    return list(names)
