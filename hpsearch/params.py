"""The one table of parameters (PARAMS): each one's kind, default by dataset, limits, how far
next.toml may widen its range, its TOML form and the value older stores ran with; and how a
[space] entry (a range, a list of choices or one value) is read and checked against it.

Config, space, build, records and the report's advice read the table; a parameter added here
is read, fixed or searched, written and widened by all of them (tests/test_params.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations
from typing import Any, Callable, Optional, Union

from hpsearch.errors import ConfigError
from hpsearch.schedule import SCHEDULES

OPTIMIZERS = ("adam", "adamw", "sgd")  # see optim.py
DECAY_ON = ("all", "weights")  # see optim.decay_groups
HEADS = ("flatten", "gap")  # the classifier on the last feature map: all of it, or its mean
AUGMENTS = ("crop", "flip")  # per-batch augmentations on the device (see augment.py)
# Their canonical names as one value: "none", "crop", "flip", "crop+flip".
AUGMENT_NAMES = ("none",) + tuple("+".join(c) for n in range(1, len(AUGMENTS) + 1)
                                  for c in combinations(AUGMENTS, n))


@dataclass(frozen=True)
class Limits:
    """The values a parameter may take: `test`, and `text`, as an error message says them
    (`space.depth must be 1..8, got 9`)."""

    test: Callable[[Any], bool]
    text: str


def between(low, high, note: str = "") -> Limits:
    return Limits(lambda v: low <= v <= high, f"{low}..{high}{note}")


def one_of(values: tuple) -> Limits:
    return Limits(lambda v: v in values, " | ".join(values))


class _FromTheStart:
    def __repr__(self) -> str:
        return "FROM_THE_START"


# Spec.before of a parameter that every stored study names, or fixes at its default.
FROM_THE_START = _FromTheStart()
FEEDS = ("model", "training")


@dataclass(frozen=True)
class Spec:
    """One parameter of the model or its training, as hpsearch knows it.

    From this entry config reads and checks the parameter's [space] value and fixes it at its
    default when [space] leaves it out; space suggests it; a study's record, study.toml and
    next.toml write it; next.toml widens its range up to `widest`; records completes an
    earlier study's record with `before`; the report's Search space section lists it.
    build.py passes its value by name to the part it `feeds`, which must take it: a new
    parameter needs a keyword of model.build_cnn ("model"), or a field of train.FitSettings
    and its use in train.fit ("training"); tests/test_params.py checks that each one has."""

    kind: type  # int | float | str
    # The value when [space] leaves it out: a function of the DataConfig where it depends on
    # the dataset; None for batch_size, which [train] batch_size gives.
    default: Any
    limits: Limits
    feeds: str  # one of FEEDS
    about: str  # what it is, in one line
    # The default space's entry for it, as a [space] value in a study file ({low, high, log}
    # or a list); None: fixed at its default unless [space] names it.
    search: Any = None
    listed: bool = True  # False: out of the space unless [space] names it; trials take default
    # (low, high): how far next.toml may widen a range of it. Every number has one, within
    # its limits; a wider range a study file gives itself is kept.
    widest: Optional[tuple] = None
    # The value studies stored before the parameter existed ran with: records completes their
    # record with it, and build.py a trial's values that predate it.
    before: Any = FROM_THE_START
    read: Optional[Callable] = None  # a [space] value -> its Param, where the usual forms differ
    # A choice's values as TOML, where the plain list would read back as something else.
    toml_choice: Optional[Callable] = None

    def __post_init__(self):
        number = self.kind in (int, float)
        if self.feeds not in FEEDS or number != (self.widest is not None):
            raise ValueError(f"a Spec feeds one of {FEEDS}, and has `widest` if a number")
        if number and not all(self.limits.test(v) for v in self.widest):
            raise ValueError(f"widest {self.widest} lies outside the limits {self.limits.text}")


def _augment_default(data) -> str:
    """Measured (BENCHMARKS.md, "Choosing the defaults"): crops and flips raised the photos'
    accuracy, and cost the digits some (a flipped digit is another glyph). CIFAR-10 takes the
    photos' default."""
    return "none" if data.dataset in ("digits", "mnist", "fashion-mnist") else "crop+flip"


def _augment_lists(values: tuple) -> list:
    # As lists of augmentations: ["crop", "flip"] would read back as one fixed set.
    return [[] if v == "none" else v.split("+") for v in values]


def _build_augment(value: Any) -> Param:
    """`augment = "crop+flip"` or `["crop", "flip"]` fixes it; a list of those
    (`["none", "crop+flip"]`, `[[], ["crop", "flip"]]`) is a choice."""
    key = "space.augment"
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value) \
            and not any(v == "none" or "+" in v for v in value) and len(value) <= len(AUGMENTS) \
            and all(v in AUGMENTS for v in value):
        return Fixed("augment", augment_name(value, key))  # one list of augmentations
    if isinstance(value, list):
        need(len(value) > 0, f"{key} is an empty list; give at least one value")
        names = tuple(augment_name(v, key) for v in value)
        need(len(set(names)) == len(names), f"{key} lists a value twice: {value}")
        return Choice("augment", names) if len(names) > 1 else Fixed("augment", names[0])
    return Fixed("augment", augment_name(value, key))


# Head and growth: on a folder of photos at 32 and 64 pixels and on the digits at 16, the
# flattened head with constant width was as accurate as global pooling with doubling widths
# or more, at a third of the time (BENCHMARKS.md, "Choosing the defaults").
PARAMS = {
    "lr": Spec(float, 1e-3, Limits(lambda v: 0 < v <= 10, "0 < lr <= 10"), "training",
               "the learning rate (its peak under a schedule)",
               search={"low": 1e-4, "high": 1e-1, "log": True}, widest=(1e-6, 1.0)),
    "depth": Spec(int, 2, between(1, 8), "model", "convolution blocks",
                  search={"low": 1, "high": 4}, widest=(1, 8)),
    "width": Spec(int, 32, between(1, 1024), "model", "channels of the first block",
                  search={"low": 8, "high": 64, "log": True}, widest=(1, 1024)),
    "dropout": Spec(float, 0.0, Limits(lambda v: 0 <= v < 1, "0 <= dropout < 1"), "model",
                    "the share of features dropped before the classifier",
                    search={"low": 0.0, "high": 0.5}, widest=(0.0, 0.9)),
    "weight_decay": Spec(float, 0.0, between(0, 1), "training",
                         "weight decay (decoupled under adamw)", listed=False,
                         widest=(0.0, 1.0)),
    # Measured on the panel with AdamW at 0.1 (BENCHMARKS.md): the weights only, as good or
    # better; studies stored before it decayed all parameters.
    "decay_on": Spec(str, "weights", one_of(DECAY_ON), "training",
                     "what weight decay applies to: all parameters, or the weights only "
                     "(not batch norm, not biases)", before="all"),
    "batch_size": Spec(int, None, between(2, 65536), "training", "images per optimizer step",
                       listed=False, widest=(2, 65536)),
    "optimizer": Spec(str, "adam", one_of(OPTIMIZERS), "training",
                      "adam, adamw or sgd (Nesterov momentum 0.9)", search=["adam", "sgd"]),
    "head": Spec(str, "flatten", one_of(HEADS), "model",
                 "the classifier on the flattened last feature map, or on its means (gap)",
                 before="flatten"),
    "growth": Spec(int, 1, between(1, 4, " (1 keeps the width, 2 doubles it per block)"),
                   "model", "the factor of channels from one block to the next",
                   widest=(1, 4), before=1),
    "augment": Spec(str, _augment_default, one_of(AUGMENT_NAMES), "training",
                    "per-batch augmentation: none, crop, flip or crop+flip", before="none",
                    read=_build_augment, toml_choice=_augment_lists),
    "schedule": Spec(str, "wsd", one_of(SCHEDULES), "training",
                     "the learning rate over the steps (see schedule.py)", before="constant"),
    "label_smoothing": Spec(float, 0.0, between(0, 0.5), "training",
                            "the share of the target spread over the other classes",
                            widest=(0.0, 0.5), before=0.0),
}


def default_of(name: str, data) -> Any:
    """Parameter `name`'s default for the dataset of DataConfig `data`."""
    default = PARAMS[name].default
    return default(data) if callable(default) else default


def default_space() -> tuple:
    """What a study searches when its file has no [space], and what a [space] table adds to:
    the parameters it names are searched or fixed as it says, the others keep these."""
    return tuple(build_param(name, spec.search) for name, spec in PARAMS.items()
                 if spec.search is not None)


def fixed_defaults(data) -> dict:
    """The parameters the space fixes at their defaults unless [space] names them, with their
    defaults for the dataset of DataConfig `data`."""
    return {name: default_of(name, data) for name, spec in PARAMS.items()
            if spec.listed and spec.search is None}


def start_values() -> dict:
    """The values a trial starts from, before its space fixes or draws the rest and [train]
    gives the batch size: the defaults of the parameters the space searches by default or
    leaves out."""
    return {name: spec.default for name, spec in PARAMS.items()
            if (spec.search is not None or not spec.listed) and spec.default is not None}


# start_values() as PARAMS was at import, for report/collect.py; the rest reads PARAMS.
PARAM_DEFAULTS = start_values()


def later_params() -> dict:
    """{name: the value studies stored before it existed ran with} of the parameters added
    after the first stored studies."""
    return {name: spec.before for name, spec in PARAMS.items()
            if spec.before is not FROM_THE_START}


def values_for(part: str, params: dict) -> dict:
    """The trial values (`params`) of the parameters that feed `part` ("model" or
    "training"), by name; a parameter the values predate (a best_config.json of an earlier
    hpsearch) takes the value it had before it existed."""
    return {name: params[name] if name in params or spec.before is FROM_THE_START
            else spec.before for name, spec in PARAMS.items() if spec.feeds == part}


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


def build_param(name: str, value: Any) -> Param:
    spec = PARAMS.get(name)
    if spec is None:
        raise ConfigError(f"unknown parameter space.{name}; parameters are {names(PARAMS)}")
    if isinstance(value, dict):
        return _build_range(name, value)
    if spec.read is not None:
        return spec.read(value)
    if isinstance(value, list):
        need(len(value) > 0, f"space.{name} is an empty list; give at least one value")
        values = tuple(_check_value(name, v) for v in value)
        need(len(set(values)) == len(values), f"space.{name} lists a value twice: {value}")
        return Choice(name, values)
    return Fixed(name, _check_value(name, value))


def _build_range(name: str, table: dict) -> Range:
    kind = PARAMS[name].kind
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
    spec = PARAMS[name]
    value = check_type(f"space.{name}", value, spec.kind)
    if isinstance(value, float):
        need(math.isfinite(value), f"space.{name} must be finite, got {value}")
    need(spec.limits.test(value), f"space.{name} must be {spec.limits.text}, got {value!r}")
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
    return [int(v) for v in values] if PARAMS[p.name].kind is int else values


def param_to_toml(p: Param) -> Any:
    if isinstance(p, Fixed):
        return p.value
    if isinstance(p, Choice) and PARAMS[p.name].toml_choice is not None:
        return PARAMS[p.name].toml_choice(p.values)
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
