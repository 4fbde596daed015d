"""Study settings: frozen dataclasses read from a study TOML plus overrides, validated once."""

from __future__ import annotations

import math
import re
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
from hpsearch.params import (Fixed, Range, augment_name, build_param, check_type,
                             default_space, fixed_defaults, names, need, param_to_toml)


SAMPLERS = ("tpe", "random", "gp", "grid")
PRUNERS = ("median", "hyperband", "sha", "none")
DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
MAX_SEED = 2**32 - 1  # numpy's and Optuna's samplers take 32-bit seeds


@dataclass(frozen=True)
class StudyConfig:
    name: str = "digits-cnn"
    trials: int = 50  # the study's total of finished (complete or pruned) trials; 0: no limit
    # The seconds all its runs together may spend running trials (0: no budget); the file
    # says it as a duration (see DURATION_FORMS). A trial running when it ends finishes.
    time: float = 0.0
    sampler: str = "tpe"
    pruner: str = "hyperband"  # median | hyperband | sha | none (see study.make_pruner)
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
    # The most epochs a trial trains (the pruner stops poor ones earlier), or "auto": about
    # schedule.AUTO_STEPS optimizer steps, as epochs of this dataset (see schedule.auto_epochs)
    epochs: Union[int, str] = "auto"
    batch_size: int = 64  # used unless [space] names batch_size
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (see precision.choose_precision)
    # auto (by dataset: see params.PARAMS) | none | crop | flip | crop+flip; the file may
    # give a list (["crop", "flip"]). [space] augment searches or fixes it instead.
    augment: str = "auto"


@dataclass(frozen=True)
class Config:
    study: StudyConfig = field(default_factory=StudyConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    space: tuple = ()  # of Range | Choice | Fixed, in file order

    def settings(self) -> dict:
        """The settings a resumed run must share with the first: everything but the target
        count and where the data files live (the dataset's fingerprint covers its content)."""
        # may differ from run to run and machine to machine
        local = ("trials", "time", "backup", "backup_interval")
        study = {k: v for k, v in asdict(self.study).items() if k not in local}
        data = {k: v for k, v in asdict(self.data).items() if k != "data_dir"}
        return {
            "study": study,
            "data": data,
            "train": asdict(self.train),
            "space": {p.name: param_to_toml(p) for p in self.space},
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
                          f"use {names(_SECTION_NAMES)}")
    _table(raw, section)[name] = parse_value(text.strip())


def _table(raw: dict, section: str) -> dict:
    """The section's table, made when the file has none; a section that is a plain value is
    an error here, before an override would write into it."""
    table = raw.setdefault(section, {})
    need(isinstance(table, dict), f"[{section}] must be a table, got {section} = {table!r}")
    return table


def parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


DURATION_FORMS = "90 (seconds), 300s, 20m, 1.5h or 1h30m"
_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_DURATION = re.compile(rf"{_NUMBER}|(?:{_NUMBER}h)?\s*(?:{_NUMBER}m)?\s*(?:{_NUMBER}s)?")


def duration_seconds(value: Any) -> Optional[float]:
    """The seconds of a duration above zero: a number (of seconds) or a text such as "300s",
    "20m", "1.5h", "1h30m". None when it is none of these."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.fullmatch(value.strip().lower())):
        bare, h, m, s = (float(g) if g else None for g in match.groups())
        seconds = bare if bare is not None else (h or 0) * 3600 + (m or 0) * 60 + (s or 0)
    else:
        return None
    return seconds if math.isfinite(seconds) and seconds > 0 else None


def duration(key: str, value: Any) -> float:
    """A duration setting's seconds, or a ConfigError naming the key, the value and the forms."""
    seconds = duration_seconds(value)
    need(seconds is not None,
         f"{key} must be a duration above zero: {DURATION_FORMS}; got {value!r}")
    return seconds


def build_config(raw: dict) -> Config:
    unknown = sorted(set(raw) - set(_SECTION_NAMES))
    if unknown:
        raise ConfigError(f"unknown section [{unknown[0]}]; sections are {names(_SECTION_NAMES)}")
    parts = {name: _build_section(name, cls, raw.get(name, {})) for name, cls in SECTIONS.items()}
    space_raw = raw.get("space", {})
    if not isinstance(space_raw, dict):
        raise ConfigError("[space] must be a table of parameters")
    named = tuple(build_param(name, value) for name, value in space_raw.items())
    cfg = Config(space=_full_space(named, parts["data"], parts["train"]), **parts)
    _check_grid(cfg)
    return cfg


_SECTION_NAMES = ("study", "data", "train", "space")


def _full_space(named: tuple, data: DataConfig, train: TrainConfig) -> tuple:
    """The default space with the file's parameters in place of (or after) the defaults',
    and the parameters the table fixes by default (head, growth, augment, ...) fixed at
    their defaults unless named."""
    by_name = {p.name: p for p in named}  # a stored study's record names both when they agree
    if train.augment != "auto" and by_name.get("augment", Fixed("augment", train.augment)) != \
            Fixed("augment", train.augment):
        raise ConfigError("augment is set both in [train] and in [space]; keep one "
                          "([space] to search it)")
    shape = fixed_defaults(data)
    if train.augment != "auto":
        shape["augment"] = train.augment
    space = [by_name.pop(p.name, p) for p in default_space()]
    space += [by_name.pop(name, Fixed(name, value)) for name, value in shape.items()]
    return tuple(space) + tuple(by_name.values())


def _build_section(section: str, cls: type, values: Any):
    if not isinstance(values, dict):
        raise ConfigError(f"[{section}] must be a table, got {values!r}")
    allowed = cls.__dataclass_fields__
    for key in values:
        if key not in allowed:
            raise ConfigError(f"unknown key {section}.{key}; [{section}] takes {names(allowed)}")
    defaults = cls()
    checked = {}
    for key, value in values.items():
        if (section, key) == ("study", "time"):
            checked[key] = duration(f"{section}.{key}", value)
            continue
        if (section, key) == ("train", "augment"):
            checked[key] = value if value == "auto" else augment_name(value)
            continue
        if (section, key) == ("train", "epochs"):
            need(value == "auto" or (isinstance(value, int) and not isinstance(value, bool)),
                 f"train.epochs must be auto or a whole number of epochs, got {value!r}")
            checked[key] = value
            continue
        expected = type(getattr(defaults, key))
        checked[key] = check_type(f"{section}.{key}", value, expected)
    obj = cls(**checked)
    _CHECKS[section](obj)
    return obj


def _check_study(s: StudyConfig) -> None:
    need(bool(s.name.strip()), "study.name must not be empty")
    need(s.trials >= 1 or (s.trials == 0 and s.time > 0),
         f"study.trials must be at least 1, got {s.trials}; 0 (no limit) needs a study.time")
    need(s.sampler in SAMPLERS,
         f"study.sampler must be one of {names(SAMPLERS)}, got {s.sampler!r}")
    need(s.pruner in PRUNERS, f"study.pruner must be one of {names(PRUNERS)}, got {s.pruner!r}")
    need(0 <= s.seed <= MAX_SEED, f"study.seed must be 0..{MAX_SEED}, got {s.seed}")
    need(s.heartbeat_interval >= 1,
         f"study.heartbeat_interval must be at least 1 second, got {s.heartbeat_interval}")
    need(s.backup_interval >= 0,
         f"study.backup_interval must be 0 or more seconds, got {s.backup_interval}")
    need(s.grace_period > s.heartbeat_interval,
         f"study.grace_period must exceed study.heartbeat_interval ({s.heartbeat_interval}),"
         f" got {s.grace_period}")


def _check_data(d: DataConfig) -> None:
    ok = d.dataset in DATASETS or (d.dataset.startswith("folder:") and len(d.dataset) > 7)
    need(ok, f"data.dataset must be one of {names(DATASETS)} or folder:PATH, got {d.dataset!r}")
    need(8 <= d.image_size <= 256, f"data.image_size must be 8..256, got {d.image_size}")
    for key in ("val_fraction", "test_fraction"):
        value = getattr(d, key)
        need(0.0 < value < 0.5, f"data.{key} must be between 0 and 0.5, got {value}")


def _check_train(t: TrainConfig) -> None:
    need(t.epochs == "auto" or 1 <= t.epochs <= 10_000,
         f"train.epochs must be auto or 1..10000, got {t.epochs!r}")
    need(t.batch_size >= 2, f"train.batch_size must be at least 2, got {t.batch_size}")
    need(t.precision in PRECISIONS,
         f"train.precision must be one of {' | '.join(PRECISIONS)}, got {t.precision!r}")


_CHECKS = {"study": _check_study, "data": _check_data, "train": _check_train}


def _check_grid(cfg: Config) -> None:
    if cfg.study.sampler != "grid":
        return
    defaults = {p.name: p for p in default_space()}
    for p in cfg.space:
        where = " (the default space's: [space] does not name it)" \
            if defaults.get(p.name) == p else ""
        need(not isinstance(p, Range) or p.step is not None,
             f"study.sampler=grid needs a list or a step for every parameter; space.{p.name} is "
             f"a range without step{where}; add step = ..., list the values or fix one")


