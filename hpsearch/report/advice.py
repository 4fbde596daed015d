"""The next study: a space narrowed around the best trials, written as a study file that
`hpsearch run --config` takes as it is, and plain advice (more epochs, a wider range)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace

from hpsearch.params import PARAM_KINDS, Choice, Fixed, Range, param_to_toml

# The best trials the next space is drawn around: a fifth of the completed ones, 5 to 20.
TOP_SHARE, TOP_MIN, TOP_MAX = 0.2, 5, 20
MARGIN = 0.1  # of a range's width (in log space for a log range) kept around those trials
EDGE = 0.05  # the share of a range's width at either end that counts as its edge
WIDEN = 0.25  # how far a range grows past an edge its best value sits at, of its width
MORE_EPOCHS = 1.5  # epochs of the next study when the best trial was still improving
# How far a range may be widened: the values the trainer accepts (see params).
WIDEST = {"lr": (1e-6, 1.0), "depth": (1, 8), "width": (1, 1024), "dropout": (0.0, 0.9),
          "weight_decay": (0.0, 1.0), "batch_size": (2, 65536), "growth": (1, 4)}


@dataclass
class NextStudy:
    settings: dict  # the study file's sections -> {key: value}
    advice: list = field(default_factory=list)  # sentences, in order of importance
    changes: list = field(default_factory=list)  # (parameter, this study, the next) as text


def next_study(cfg, top: list, improving: bool, trials: int) -> NextStudy:
    """The study to run next, from this one's config and its completed rows (best first):
    `trials` of them (as many as this one finished); `improving`: the best trial was still
    improving at its last epoch. Relative data paths are made absolute, so that the file
    runs from any folder."""
    chosen = top[:max(TOP_MIN, min(TOP_MAX, math.ceil(TOP_SHARE * len(top))))]
    settings = {
        "study": {"name": f"{cfg.study.name}-next", "trials": trials,
                  "sampler": cfg.study.sampler, "pruner": cfg.study.pruner,
                  "seed": cfg.study.seed},
        "data": absolute_paths({k: getattr(cfg.data, k) for k in (
            "dataset", "image_size", "val_fraction", "test_fraction", "data_dir")}),
        "train": {"epochs": cfg.train.epochs, "batch_size": cfg.train.batch_size,
                  "precision": cfg.train.precision, "augment": cfg.train.augment},
        "space": {p.name: param_to_toml(p) for p in cfg.space},
    }
    out = NextStudy(settings)
    if improving:
        more = max(cfg.train.epochs + 1, math.ceil(cfg.train.epochs * MORE_EPOCHS))
        settings["train"]["epochs"] = more
        out.advice.append(f"The best trial was still improving at its last epoch: the next "
                          f"study trains {more} epochs instead of {cfg.train.epochs}.")
    if len(top) < TOP_MIN:
        out.advice.append(f"{len(top)} completed trial(s) are too few to narrow the space on: "
                          f"`next.toml` searches the same space; run more trials first.")
        return out
    for p in cfg.space:
        values = [r.params[p.name] for r in chosen if p.name in r.params]
        new, note = narrowed(p, values, top[0].params.get(p.name))
        settings["space"][p.name] = param_to_toml(new)
        if note:
            out.advice.append(note)
        if new != p:
            out.changes.append((p.name, _describe(p), _describe(new)))
    out.advice.append(f"The next space is narrowed around the {len(chosen)} best completed "
                      f"trials; `next.toml` holds it.")
    return out


def absolute_paths(data: dict) -> dict:
    """A folder dataset's path and data_dir made absolute (from this folder) where they are
    relative and exist here."""
    from pathlib import Path

    out = dict(data)
    if out["dataset"].startswith("folder:"):
        folder = Path(out["dataset"][len("folder:"):]).expanduser()
        if not folder.is_absolute() and folder.is_dir():
            out["dataset"] = f"folder:{folder.resolve()}"
    data_dir = Path(out["data_dir"]).expanduser()
    if not data_dir.is_absolute() and data_dir.is_dir():
        out["data_dir"] = str(data_dir.resolve())
    return out


def narrowed(p, values: list, best) -> tuple:
    """(the parameter for the next study, a sentence or "") from the values the best trials
    took: a choice keeps the values they used, a range shrinks to theirs plus a margin and
    grows past an edge the best value sits at, within what the trainer accepts. Whatever
    the result, it reads back as a study file would (else the parameter stays as it was)."""
    from hpsearch.errors import ConfigError
    from hpsearch.params import build_param

    if isinstance(p, Fixed) or not values:
        return p, ""
    if isinstance(p, Choice):
        kept = tuple(v for v in p.values if v in values)
        if len(kept) == len(p.values):
            return p, ""
        return (Fixed(p.name, kept[0]) if len(kept) == 1 else Choice(p.name, kept)), ""
    new, note = _narrowed_range(p, values, best)
    try:
        build_param(p.name, param_to_toml(new))
    except ConfigError:
        return p, ""
    return new, note


def _narrowed_range(p: Range, values: list, best) -> tuple:
    fwd = math.log if p.log else (lambda v: v)
    back = math.exp if p.log else (lambda v: v)
    low_t, high_t = fwd(p.low), fwd(p.high)
    width = high_t - low_t
    lo = max(low_t, fwd(min(values)) - MARGIN * width)
    hi = min(high_t, fwd(max(values)) + MARGIN * width)
    floor, ceiling = WIDEST.get(p.name, (-math.inf, math.inf))
    edge = None
    if fwd(best) - low_t <= EDGE * width and p.low > floor:
        lo, edge = fwd(max(floor, back(low_t - WIDEN * width))), "bottom"
    elif high_t - fwd(best) <= EDGE * width and p.high < ceiling:
        hi, edge = fwd(min(ceiling, back(high_t + WIDEN * width))), "top"
    low, high = _snap(p, back(lo), back(hi))
    low, high = _inside(p, low, high, floor, ceiling)
    if not low < high:  # every best trial took one whole value: a step either side of it
        unit = p.step or 1
        low, high = max(p.low, low - unit), min(p.high, high + unit)
        if not low < high:
            return p, ""
    note = ""
    if edge == "bottom" and low < p.low:
        note = (f"{p.name}: the best trial's value {_num(best, p)} sits at the bottom of its "
                f"range: widen it downwards (next.toml starts at {_num(low, p)}).")
    elif edge == "top" and high > p.high:
        note = (f"{p.name}: the best trial's value {_num(best, p)} sits at the top of its "
                f"range: widen it upwards (next.toml goes up to {_num(high, p)}).")
    return replace(p, low=low, high=high), note


def _snap(p: Range, low: float, high: float) -> tuple:
    """Bounds as the parameter's kind, rounded outwards (the range keeps every value it was
    meant to hold): whole numbers, the step's grid from the old low, two significant digits
    on a log scale, hundredths of the old width from the old low on a linear one."""
    if p.step is not None:
        low = p.low + math.floor((low - p.low) / p.step + 1e-9) * p.step
        high = p.low + math.ceil((high - p.low) / p.step - 1e-9) * p.step
        return (int(round(low)), int(round(high))) if PARAM_KINDS[p.name] is int else \
            (_tidy(low), _tidy(high))
    if PARAM_KINDS[p.name] is int:  # the trials' own values are whole: rounding keeps them
        return int(math.floor(low + 0.5)), int(math.ceil(high - 0.5))
    if p.log:
        return _significant(low, math.floor), _significant(high, math.ceil)
    unit = (p.high - p.low) / 100
    return (_tidy(p.low + math.floor((low - p.low) / unit + 1e-9) * unit),
            _tidy(p.low + math.ceil((high - p.low) / unit - 1e-9) * unit))


def _inside(p: Range, low, high, floor: float, ceiling: float) -> tuple:
    """Bounds moved back inside WIDEST (or the old range, where that reached further), a
    step or a whole unit at a time, so that a stepped range stays on its grid."""
    floor, ceiling = min(floor, p.low), max(ceiling, p.high)
    step = p.step or (1 if PARAM_KINDS[p.name] is int else None)
    if step is None:
        return max(low, floor), min(high, ceiling)
    while low < floor:
        low += step
    while high > ceiling:
        high -= step
    return low, high


def _significant(v: float, direction) -> float:
    scale = 10 ** (math.floor(math.log10(abs(v))) - 1)
    return _tidy(direction(v / scale - 1e-9 if direction is math.ceil else v / scale + 1e-9)
                 * scale)


def _tidy(v: float) -> float:
    return float(f"{v:.6g}")


def _num(v, p=None) -> str:
    if p is not None and PARAM_KINDS[p.name] is int:
        return str(int(round(v)))
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _describe(p) -> str:
    if isinstance(p, Fixed):
        return f"fixed {p.value}"
    if isinstance(p, Choice):
        return " | ".join(map(str, p.values))
    return f"{_num(p.low, p)} .. {_num(p.high, p)}" + (" (log)" if p.log else "")


def to_toml(settings: dict, header: str = "") -> str:
    """A study file: each section a table, each value in TOML's syntax."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    for section, values in settings.items():
        lines += ["", f"[{section}]"]
        lines += [f"{key} = {toml_value(value)}" for key, value in values.items()]
    return "\n".join(lines).lstrip("\n") + "\n"


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"TOML has no {v}")
        return repr(v)
    if isinstance(v, str):  # a TOML basic string: JSON's escapes, and DEL escaped too
        return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    raise ValueError(f"no TOML for {v!r}")
