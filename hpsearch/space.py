"""The search space: the only module that calls `trial.suggest_*`."""

from __future__ import annotations

import optuna

from hpsearch.config import Config
from hpsearch.params import PARAMS, Choice, Fixed, Param, Range, start_values


def suggest_params(trial: optuna.Trial, cfg: Config) -> dict:
    """Every model and training parameter for one trial, as a plain dict.

    Parameters the space fixes or leaves out are not suggested (so they do not clutter the
    sampler's space); they come from the study file or the defaults.
    """
    params = _start(cfg)
    for p in cfg.space:
        params[p.name] = p.value if isinstance(p, Fixed) else suggest(trial, p)
    return params


def suggest(trial: optuna.Trial, p: Param):
    if isinstance(p, Choice):
        return trial.suggest_categorical(p.name, list(p.values))
    if PARAMS[p.name].kind is int:
        step = 1 if p.step is None else int(p.step)
        return trial.suggest_int(p.name, int(p.low), int(p.high), step=step, log=p.log)
    assert isinstance(p, Range)
    return trial.suggest_float(p.name, p.low, p.high, step=p.step, log=p.log)


def fixed_params(cfg: Config) -> dict:
    """The parameters every trial shares: defaults, [train] batch size and fixed values."""
    params = _start(cfg)
    params.update({p.name: p.value for p in cfg.space if isinstance(p, Fixed)})
    return {k: v for k, v in params.items() if k not in searched_names(cfg)}


def searched_names(cfg: Config) -> list:
    return [p.name for p in cfg.space if not isinstance(p, Fixed)]


def middle_params(cfg: Config) -> dict:
    """A middling trial of the space: each range at its middle (on a log scale where it is
    one), each choice at its first value; what a study times to size its trials to a budget."""
    params = _start(cfg)
    for p in cfg.space:
        if isinstance(p, Fixed):
            params[p.name] = p.value
        elif isinstance(p, Choice):
            params[p.name] = p.values[0]
        else:
            middle = (p.low * p.high) ** 0.5 if p.log else (p.low + p.high) / 2
            params[p.name] = round(middle) if PARAMS[p.name].kind is int else middle
    return params


def _start(cfg: Config) -> dict:
    """The values a trial starts from: the table's defaults and [train] batch_size."""
    return {**start_values(), "batch_size": cfg.train.batch_size}
