"""The parameters a study searches: their kinds, limits and defaults, the default space,
and how a [space] entry (a range, a list of choices or one value) is read and checked."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Union

from hpsearch.errors import ConfigError
from hpsearch.schedule import SCHEDULES

OPTIMIZERS = ("adam", "adamw", "sgd")
HEADS = ("flatten", "gap")  # the classifier on the last feature map: all of it, or its mean
AUGMENTS = ("crop", "flip")  # per-batch augmentations on the device (see augment.py)

# Every parameter the model and trainer understand: kind and the default used when [space]
# does not name it. batch_size defaults to [train] batch_size.
PARAM_KINDS = {
    "lr": float,
    "depth": int,
    "width": int,
    "dropout": float,
    "weight_decay": float,
    "batch_size": int,
    "optimizer": str,
    "head": str,
    "growth": int,
    "augment": str,
    "schedule": str,
    "label_smoothing": float,
}
PARAM_DEFAULTS = {
    "lr": 1e-3,
    "depth": 2,
    "width": 32,
    "dropout": 0.0,
    "weight_decay": 0.0,
    "optimizer": "adam",
}


def default_space() -> tuple:
    """What a study searches when its file has no [space], and what a [space] table adds to:
    the parameters it names are searched or fixed as it says, the others keep these."""
    return (Range("lr", 1e-4, 1e-1, log=True), Range("depth", 1, 4),
            Range("width", 8, 64, log=True), Range("dropout", 0.0, 0.5),
            Choice("optimizer", ("adam", "sgd")))


def shape_defaults(data) -> dict:
    """head, growth and augment when the study file leaves them out, by dataset.

    Measured (BENCHMARKS.md, "Choosing the defaults"): on a folder of photos at 32 and 64
    pixels and on the digits at 16, the flattened head with constant width was as accurate as
    global pooling with doubling widths or more, at a third of the time; crops and flips
    raised the photos' accuracy, and cost the digits some (a flipped digit is another
    glyph). CIFAR-10 takes the photos' defaults."""
    glyphs = data.dataset in ("digits", "mnist", "fashion-mnist")
    return {"head": "flatten", "growth": 1, "augment": "none" if glyphs else "crop+flip",
            "schedule": "wsd", "label_smoothing": 0.0}


@dataclass(frozen=True)
class Range:
    """A numeric range to sample from; `step` makes it discrete (and usable by grid search)."""

    name: str
    low: float
    high: float
    log: bool = False
    step: Union[float, None] = None


@dataclass(frozen=True)
class Choice:
    name: str
    values: tuple


@dataclass(frozen=True)
class Fixed:
    name: str
    value: Any


Param = Union[Range, Choice, Fixed]

# The values each parameter may take: (test, description).
_PARAM_LIMITS = {
    "lr": (lambda v: 0 < v <= 1e6, "a positive number"),
    "depth": (lambda v: 1 <= v <= 8, "1..8"),
    "width": (lambda v: 1 <= v <= 1024, "1..1024"),
    "dropout": (lambda v: 0 <= v < 1, "0 <= dropout < 1"),
    "weight_decay": (lambda v: 0 <= v <= 1, "0..1"),
    "batch_size": (lambda v: 2 <= v <= 65536, "2..65536"),
    "optimizer": (lambda v: v in OPTIMIZERS, " | ".join(OPTIMIZERS)),
    "head": (lambda v: v in HEADS, " | ".join(HEADS)),
    "growth": (lambda v: 1 <= v <= 4, "1..4 (1 keeps the width, 2 doubles it per block)"),
    "augment": (lambda v: True, ""),
    "schedule": (lambda v: v in SCHEDULES, " | ".join(SCHEDULES)),
    "label_smoothing": (lambda v: 0 <= v <= 0.5, "0..0.5"),
}


def build_param(name: str, value: Any) -> Param:
    if name not in PARAM_KINDS:
        raise ConfigError(f"unknown parameter space.{name}; parameters are {names(PARAM_KINDS)}")
    if isinstance(value, dict):
        return _build_range(name, value)
    if name == "augment":
        return _build_augment(value)
    if isinstance(value, list):
        need(len(value) > 0, f"space.{name} is an empty list; give at least one value")
        values = tuple(_check_value(name, v) for v in value)
        need(len(set(values)) == len(values), f"space.{name} lists a value twice: {value}")
        return Choice(name, values)
    return Fixed(name, _check_value(name, value))


def _build_augment(value: Any) -> Param:
    """`augment = "crop+flip"` or `["crop", "flip"]` fixes it; a list of those
    (`["none", "crop+flip"]`, `[[], ["crop", "flip"]]`) is a choice."""
    key = "space.augment"
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value) \
            and not any(v == "none" or "+" in v for v in value) and len(value) <= 2 \
            and all(v in AUGMENTS for v in value):
        return Fixed("augment", augment_name(value, key))  # one list of augmentations
    if isinstance(value, list):
        need(len(value) > 0, f"{key} is an empty list; give at least one value")
        names = tuple(augment_name(v, key) for v in value)
        need(len(set(names)) == len(names), f"{key} lists a value twice: {value}")
        return Choice("augment", names) if len(names) > 1 else Fixed("augment", names[0])
    return Fixed("augment", augment_name(value, key))


def _build_range(name: str, table: dict) -> Range:
    kind = PARAM_KINDS[name]
    key = f"space.{name}"
    need(kind is not str, f"{key} takes a list of choices or one value, not a range")
    extra = sorted(set(table) - {"low", "high", "log", "step"})
    if extra:
        raise ConfigError(f"{key} has unknown key {extra[0]!r}; "
                          f"a range takes low, high, log, step")
    need("low" in table and "high" in table, f"{key} needs both low and high, got {table}")
    low, high = (_check_value(name, table[k]) for k in ("low", "high"))
    log = table.get("log", False)
    need(isinstance(log, bool), f"{key}.log must be true or false, got {log!r}")
    need(low < high, f"{key}: low must be below high, got low={low} high={high}")
    need(not log or low > 0, f"{key}: a log range needs low > 0, got low={low}")
    step = table.get("step")
    if step is not None:
        step = check_type(f"{key}.step", step, kind)
        need(step > 0, f"{key}.step must be positive, got {step}")
        need(not log, f"{key}: use either log or step, not both")
    return Range(name, low, high, log, step)


def _check_value(name: str, value: Any) -> Any:
    value = check_type(f"space.{name}", value, PARAM_KINDS[name])
    test, allowed = _PARAM_LIMITS[name]
    if isinstance(value, float):
        need(math.isfinite(value), f"space.{name} must be finite, got {value}")
    need(test(value), f"space.{name} must be {allowed}, got {value!r}")
    return value


def augment_name(value: Any, key: str = "train.augment") -> str:
    """A list of augmentations (["flip", "crop"]) or their name ("crop+flip", "none") as
    one canonical name: "none", "crop", "flip" or "crop+flip"."""
    if isinstance(value, str):
        parts = [] if value == "none" else value.split("+")
    elif isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        parts = list(value)
    else:
        raise ConfigError(f"{key} must be a list of augmentations ({names(AUGMENTS)}) or "
                          f"none, got {value!r}")
    for part in parts:
        need(part in AUGMENTS, f"{key}: unknown augmentation {part!r} in {value!r}; use "
                                f"{names(AUGMENTS)} or none")
    need(len(set(parts)) == len(parts), f"{key} names an augmentation twice: {value!r}")
    return "+".join(a for a in AUGMENTS if a in parts) or "none"


def grid_values(p: Param) -> list:
    """Every value grid search tries for one parameter."""
    if isinstance(p, Fixed):
        return [p.value]
    if isinstance(p, Choice):
        return list(p.values)
    count = int(math.floor((p.high - p.low) / p.step + 1e-9)) + 1
    values = [p.low + i * p.step for i in range(count)]
    return [int(v) for v in values] if PARAM_KINDS[p.name] is int else values


def param_to_toml(p: Param) -> Any:
    if isinstance(p, Fixed):
        return p.value
    if isinstance(p, Choice) and p.name == "augment":
        # As lists of augmentations: ["crop", "flip"] would read back as one fixed set.
        return [[] if v == "none" else v.split("+") for v in p.values]
    if isinstance(p, Choice):
        return list(p.values)
    table = {"low": p.low, "high": p.high, "log": p.log}
    return table if p.step is None else {**table, "step": p.step}


def check_type(key: str, value: Any, expected: type) -> Any:
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, bool) or not isinstance(value, expected):
        raise ConfigError(f"{key} must be {kind(expected)}, got {value!r}")
    return value


def need(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def names(items) -> str:
    return ", ".join(items)


def kind(t: type) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}[t]
