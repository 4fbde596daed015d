"""Study settings: frozen dataclasses read from a study TOML plus overrides, validated once."""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Optional, Union

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib


from hpsearch.errors import ConfigError


SAMPLERS = ("tpe", "random", "gp", "grid")
PRUNERS = ("median", "hyperband", "sha", "none")
DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10")
OPTIMIZERS = ("adam", "adamw", "sgd")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
MAX_SEED = 2**32 - 1  # numpy's and Optuna's samplers take 32-bit seeds

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
}
PARAM_DEFAULTS = {
    "lr": 1e-3,
    "depth": 2,
    "width": 32,
    "dropout": 0.0,
    "weight_decay": 0.0,
    "optimizer": "adam",
}


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


@dataclass(frozen=True)
class StudyConfig:
    name: str = "digits-cnn"
    trials: int = 50  # the study's total of finished (complete or pruned) trials
    sampler: str = "tpe"
    pruner: str = "median"
    seed: int = 0
    heartbeat_interval: int = 30  # seconds between heartbeats of a running trial
    grace_period: int = 120  # seconds without a heartbeat before a trial counts as dead
    backup: str = ""  # a folder (Google Drive, say) that receives a copy of the store
    backup_interval: float = 30.0  # seconds at least between two backups during a trial


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "digits"  # digits | mnist | fashion-mnist | cifar10 | folder:PATH
    image_size: int = 16  # pixels per side after resizing
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    data_dir: str = "data"  # where mnist, fashion-mnist and cifar10 files live or are fetched


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 6
    batch_size: int = 64  # used unless [space] names batch_size
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (see train.choose_precision)


@dataclass(frozen=True)
class Config:
    study: StudyConfig = field(default_factory=StudyConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    space: tuple = ()  # of Range | Choice | Fixed, in file order

    def settings(self) -> dict:
        """The settings a resumed run must share with the first: everything but the target
        count and where the data files live (the dataset's fingerprint covers its content)."""
        local = ("trials", "backup", "backup_interval")  # may differ from machine to machine
        study = {k: v for k, v in asdict(self.study).items() if k not in local}
        data = {k: v for k, v in asdict(self.data).items() if k != "data_dir"}
        return {
            "study": study,
            "data": data,
            "train": asdict(self.train),
            "space": {p.name: _param_to_toml(p) for p in self.space},
        }


SECTIONS = {"study": StudyConfig, "data": DataConfig, "train": TrainConfig}


def default_config_path() -> Path:
    """The default study file, shipped inside the package so `hpsearch run` works anywhere."""
    return Path(str(resources.files("hpsearch") / "studies" / "digits.toml"))


def load_config(path: Union[str, Path, None], overrides: list[str] = (),
                flags: Optional[dict] = None) -> Config:
    """Read a study file, apply `section.key=value` overrides, then values of dedicated flags
    (`{"study.trials": 5}`, already typed), and validate the result."""
    raw = read_toml(Path(path) if path else default_config_path())
    for item in overrides:
        apply_override(raw, item)
    for key, value in (flags or {}).items():
        section, _, name = key.partition(".")
        _table(raw, section)[name] = value
    return build_config(raw)


def read_toml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass --config PATH to a study TOML")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config file {path} is not valid TOML: {err}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not valid TOML: it is not UTF-8 text; "
                          f"pass --config PATH to a study TOML") from None
    except OSError as err:
        raise ConfigError(f"config file {path} cannot be read: {err.strerror}") from None


def apply_override(raw: dict, item: str) -> None:
    """`section.key=value`; the value is read as TOML (`3`, `1e-3`, `["adam"]`,
    `{low=1,high=4}`) and taken as a plain string when it is not TOML."""
    key, sep, text = item.partition("=")
    section, dot, name = key.strip().partition(".")
    if not sep or not dot or not section or not name:
        raise ConfigError(f"--set expects section.key=value (e.g. train.epochs=5), got {item!r}")
    if section not in SECTIONS and section != "space":
        raise ConfigError(f"--set {item!r}: unknown section {section!r}; "
                          f"use {_names(_SECTION_NAMES)}")
    _table(raw, section)[name] = parse_value(text.strip())


def _table(raw: dict, section: str) -> dict:
    """The section's table, made when the file has none; a section that is a plain value is
    an error here, before an override would write into it."""
    table = raw.setdefault(section, {})
    _need(isinstance(table, dict), f"[{section}] must be a table, got {section} = {table!r}")
    return table


def parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def build_config(raw: dict) -> Config:
    unknown = sorted(set(raw) - set(_SECTION_NAMES))
    if unknown:
        raise ConfigError(f"unknown section [{unknown[0]}]; sections are {_names(_SECTION_NAMES)}")
    parts = {name: _build_section(name, cls, raw.get(name, {})) for name, cls in SECTIONS.items()}
    space_raw = raw.get("space", {})
    if not isinstance(space_raw, dict):
        raise ConfigError("[space] must be a table of parameters")
    space = tuple(_build_param(name, value) for name, value in space_raw.items())
    cfg = Config(space=space, **parts)
    _check_grid(cfg)
    return cfg


_SECTION_NAMES = ("study", "data", "train", "space")


def _build_section(section: str, cls: type, values: Any):
    if not isinstance(values, dict):
        raise ConfigError(f"[{section}] must be a table, got {values!r}")
    allowed = cls.__dataclass_fields__
    for key in values:
        if key not in allowed:
            raise ConfigError(f"unknown key {section}.{key}; [{section}] takes {_names(allowed)}")
    defaults = cls()
    checked = {}
    for key, value in values.items():
        expected = type(getattr(defaults, key))
        checked[key] = _check_type(f"{section}.{key}", value, expected)
    obj = cls(**checked)
    _CHECKS[section](obj)
    return obj


def _check_type(key: str, value: Any, expected: type) -> Any:
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, bool) or not isinstance(value, expected):
        raise ConfigError(f"{key} must be {_kind(expected)}, got {value!r}")
    return value


def _check_study(s: StudyConfig) -> None:
    _need(bool(s.name.strip()), "study.name must not be empty")
    _need(s.trials >= 1, f"study.trials must be at least 1, got {s.trials}")
    _need(s.sampler in SAMPLERS,
          f"study.sampler must be one of {_names(SAMPLERS)}, got {s.sampler!r}")
    _need(s.pruner in PRUNERS, f"study.pruner must be one of {_names(PRUNERS)}, got {s.pruner!r}")
    _need(0 <= s.seed <= MAX_SEED, f"study.seed must be 0..{MAX_SEED}, got {s.seed}")
    _need(s.heartbeat_interval >= 1,
          f"study.heartbeat_interval must be at least 1 second, got {s.heartbeat_interval}")
    _need(s.backup_interval >= 0,
          f"study.backup_interval must be 0 or more seconds, got {s.backup_interval}")
    _need(s.grace_period > s.heartbeat_interval,
          f"study.grace_period must exceed study.heartbeat_interval ({s.heartbeat_interval}),"
          f" got {s.grace_period}")


def _check_data(d: DataConfig) -> None:
    ok = d.dataset in DATASETS or (d.dataset.startswith("folder:") and len(d.dataset) > 7)
    _need(ok, f"data.dataset must be one of {_names(DATASETS)} or folder:PATH, got {d.dataset!r}")
    _need(8 <= d.image_size <= 256, f"data.image_size must be 8..256, got {d.image_size}")
    for key in ("val_fraction", "test_fraction"):
        value = getattr(d, key)
        _need(0.0 < value < 0.5, f"data.{key} must be between 0 and 0.5, got {value}")


def _check_train(t: TrainConfig) -> None:
    _need(1 <= t.epochs <= 10_000, f"train.epochs must be 1..10000, got {t.epochs}")
    _need(t.batch_size >= 2, f"train.batch_size must be at least 2, got {t.batch_size}")
    _need(t.precision in PRECISIONS,
          f"train.precision must be one of {' | '.join(PRECISIONS)}, got {t.precision!r}")


_CHECKS = {"study": _check_study, "data": _check_data, "train": _check_train}

# The values each parameter may take: (test, description).
_PARAM_LIMITS = {
    "lr": (lambda v: 0 < v <= 1e6, "a positive number"),
    "depth": (lambda v: 1 <= v <= 8, "1..8"),
    "width": (lambda v: 1 <= v <= 1024, "1..1024"),
    "dropout": (lambda v: 0 <= v < 1, "0 <= dropout < 1"),
    "weight_decay": (lambda v: 0 <= v <= 1, "0..1"),
    "batch_size": (lambda v: 2 <= v <= 65536, "2..65536"),
    "optimizer": (lambda v: v in OPTIMIZERS, " | ".join(OPTIMIZERS)),
}


def _build_param(name: str, value: Any) -> Param:
    if name not in PARAM_KINDS:
        raise ConfigError(f"unknown parameter space.{name}; parameters are {_names(PARAM_KINDS)}")
    if isinstance(value, dict):
        return _build_range(name, value)
    if isinstance(value, list):
        _need(len(value) > 0, f"space.{name} is an empty list; give at least one value")
        values = tuple(_check_value(name, v) for v in value)
        _need(len(set(values)) == len(values), f"space.{name} lists a value twice: {value}")
        return Choice(name, values)
    return Fixed(name, _check_value(name, value))


def _build_range(name: str, table: dict) -> Range:
    kind = PARAM_KINDS[name]
    key = f"space.{name}"
    _need(kind is not str, f"{key} takes a list of choices or one value, not a range")
    extra = sorted(set(table) - {"low", "high", "log", "step"})
    if extra:
        raise ConfigError(f"{key} has unknown key {extra[0]!r}; "
                          f"a range takes low, high, log, step")
    _need("low" in table and "high" in table, f"{key} needs both low and high, got {table}")
    low, high = (_check_value(name, table[k]) for k in ("low", "high"))
    log = table.get("log", False)
    _need(isinstance(log, bool), f"{key}.log must be true or false, got {log!r}")
    _need(low < high, f"{key}: low must be below high, got low={low} high={high}")
    _need(not log or low > 0, f"{key}: a log range needs low > 0, got low={low}")
    step = table.get("step")
    if step is not None:
        step = _check_type(f"{key}.step", step, kind)
        _need(step > 0, f"{key}.step must be positive, got {step}")
        _need(not log, f"{key}: use either log or step, not both")
    return Range(name, low, high, log, step)


def _check_value(name: str, value: Any) -> Any:
    value = _check_type(f"space.{name}", value, PARAM_KINDS[name])
    test, allowed = _PARAM_LIMITS[name]
    if isinstance(value, float):
        _need(math.isfinite(value), f"space.{name} must be finite, got {value}")
    _need(test(value), f"space.{name} must be {allowed}, got {value!r}")
    return value


def _check_grid(cfg: Config) -> None:
    if cfg.study.sampler != "grid":
        return
    for p in cfg.space:
        _need(not isinstance(p, Range) or p.step is not None,
              f"study.sampler=grid needs a list or a step for every parameter; space.{p.name} is "
              f"a range without step (add step = ... or list the values)")


def grid_values(p: Param) -> list:
    """Every value grid search tries for one parameter."""
    if isinstance(p, Fixed):
        return [p.value]
    if isinstance(p, Choice):
        return list(p.values)
    count = int(math.floor((p.high - p.low) / p.step + 1e-9)) + 1
    values = [p.low + i * p.step for i in range(count)]
    return [int(v) for v in values] if PARAM_KINDS[p.name] is int else values


def _param_to_toml(p: Param) -> Any:
    if isinstance(p, Fixed):
        return p.value
    if isinstance(p, Choice):
        return list(p.values)
    table = {"low": p.low, "high": p.high, "log": p.log}
    return table if p.step is None else {**table, "step": p.step}


def _need(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _names(items) -> str:
    return ", ".join(items)


def _kind(t: type) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}[t]
