"""The next study: a space narrowed around the best trials and changed by the diagnosis of
the best one, written as a study file that `hpsearch run --config` takes as it is, and plain
advice (more epochs, augmentation, a wider range)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from typing import Optional

from hpsearch.params import PARAMS, Choice, Fixed, Range, default_of, param_to_toml

# The best trials the next space is drawn around: a fifth of the completed ones, 5 to 20.
TOP_SHARE, TOP_MIN, TOP_MAX = 0.2, 5, 20
MARGIN = 0.1  # of a range's width (in log space for a log range) kept around those trials
EDGE = 0.05  # the share of a range's width at either end that counts as its edge
WIDEN = 0.25  # how far a range grows past an edge its best value sits at, of its width
MORE_EPOCHS = 1.5  # epochs of the next study when the best trial was still improving
DROPOUT_REACH = 0.2  # how much higher the dropout range reaches when the best trial overfits
CAPACITY = ("depth", "width")  # the ranges that grow when the best trial underfits


@dataclass
class NextStudy:
    settings: dict  # the study file's sections -> {key: value}
    advice: list = field(default_factory=list)  # sentences, in order of importance
    changes: list = field(default_factory=list)  # (parameter, this study, the next) as text


def next_study(cfg, top: list, findings: list, trials: int,
               max_epochs: Optional[int] = None) -> NextStudy:
    """The study to run next, from this one's config and its completed rows (best first):
    `trials` of them (as many as this one finished). It acts on `findings`, the diagnosis of
    the best trial (see diagnose.py); `max_epochs`: the epochs this study's trials could
    run, the number `epochs = "auto"` resolved to (train.epochs where None). Relative data
    paths are made absolute, so that the file runs from any folder."""
    settings = {
        "study": {"name": f"{cfg.study.name}-next", "trials": trials,
                  "sampler": cfg.study.sampler, "pruner": cfg.study.pruner,
                  "seed": cfg.study.seed},
        "data": absolute_paths({k: getattr(cfg.data, k) for k in (
            "dataset", "image_size", "val_fraction", "test_fraction", "data_dir")}),
        "train": {"epochs": cfg.train.epochs, "batch_size": cfg.train.batch_size,
                  "precision": cfg.train.precision, "augment": cfg.train.augment},
        "space": {},
    }
    out = NextStudy(settings)
    grow = any(f.kind == "underfitting" for f in findings)
    space, notes = _next_space(cfg.space, top, grow)
    out.advice += [_act_on(f, cfg, space, settings["train"], max_epochs) for f in findings]
    out.advice += notes
    for p in cfg.space:
        settings["space"][p.name] = param_to_toml(space[p.name])
        if space[p.name] != p:
            out.changes.append((p.name, _describe(p), _describe(space[p.name])))
    return out


def _next_space(space: tuple, top: list, grow: bool) -> tuple:
    """({name: parameter} narrowed around the best completed rows, or as it was where they
    are too few; sentences). `grow`: depth and width reach higher whatever the best trial's
    values (it underfits)."""
    chosen = top[:max(TOP_MIN, min(TOP_MAX, math.ceil(TOP_SHARE * len(top))))]
    enough = len(top) >= TOP_MIN
    best = top[0].params if top else {}
    params, notes = {p.name: p for p in space}, []
    for p in space:
        up = grow and p.name in CAPACITY and isinstance(p, Range)
        if not enough and not up:
            continue
        values = ([r.params[p.name] for r in chosen if p.name in r.params] if enough
                  else [p.low, p.high])
        params[p.name], note = narrowed(p, values, best.get(p.name), up)
        notes += [note] if note else []
    if enough:
        notes.append(f"The next space is narrowed around the {len(chosen)} best completed "
                     f"trials; `next.toml` holds it.")
    else:
        notes.insert(0, f"{len(top)} completed trial(s) are too few to narrow the space on: "
                        f"`next.toml` does not narrow it; run more trials first.")
    return params, notes


def _act_on(finding, cfg, space: dict, train: dict, max_epochs: Optional[int]) -> str:
    """What the next study changes for one finding (in `space` and `train`), as a sentence."""
    if finding.kind == "still learning":
        return _train_longer(cfg.train.epochs, max_epochs, train)
    if finding.kind == "overfitting":
        return _against_overfitting(cfg, space, train)
    if finding.kind == "underfitting":
        return _against_underfitting({p.name: p for p in cfg.space}, space)
    return finding.text  # few images: no setting adds photos


def _train_longer(epochs, max_epochs: Optional[int], train: dict) -> str:
    """`epochs`: train.epochs, a number or "auto"; then `max_epochs` is what it resolved to."""
    ran = max_epochs or (epochs if isinstance(epochs, int) else None)
    said = "The best trial was still improving at its last epochs"
    if ran is None:
        return f"{said}: train it longer (this store does not say how many epochs it had)."
    more = max(ran + 1, math.ceil(ran * MORE_EPOCHS))
    train["epochs"] = more
    if epochs == "auto":
        return (f"{said}: the next study trains {more} epochs, {MORE_EPOCHS:g} times the {ran} "
                f"that `epochs = \"auto\"` chose for this data (next.toml names the number; "
                f"\"auto\" would choose {ran} again).")
    return f"{said}: the next study trains {more} epochs instead of {ran}."


def _against_overfitting(cfg, space: dict, train: dict) -> str:
    """Augmentation on where the data are photos (as its default for the dataset gives it:
    none for digits), and a dropout range that reaches DROPOUT_REACH higher."""
    did = []
    photos = default_of("augment", cfg.data)
    aug = space.get("augment")
    used = aug.values if isinstance(aug, Choice) else (getattr(aug, "value", None),)
    if photos != "none" and photos not in used:
        space["augment"] = Fixed("augment", photos)
        train["augment"] = "auto"  # [space] names it now, and [train] must not disagree
        did.append(f"turns augmentation on ({photos})")
    drop = space.get("dropout")
    # A fixed dropout becomes a range, which a grid sampler cannot take without a step.
    if isinstance(drop, Range) or (isinstance(drop, Fixed) and cfg.study.sampler != "grid"):
        low = float(drop.low if isinstance(drop, Range) else drop.value)
        widest = PARAMS["dropout"].widest
        top = min(widest[1], _high(cfg.space, "dropout", low) + DROPOUT_REACH)
        if top > getattr(drop, "high", low):
            new = (replace(drop, high=top) if isinstance(drop, Range)
                   else Range("dropout", low, top))
            low, high = _inside(new, *_snap(new, low, top), *widest)
            space["dropout"] = replace(new, low=low, high=high)
            did.append(f"searches dropout up to {high:.2g}")
    what = " and ".join(did) if did else "cannot add images, which would help most"
    return f"The best trial overfits: next.toml {what}."


def _against_underfitting(original: dict, space: dict) -> str:
    """Depth and width have grown already (see _next_space); the learning rate is searched
    over its whole range again, as a poor one is the other cause."""
    lr, was = space.get("lr"), original.get("lr")
    if isinstance(lr, Range) and isinstance(was, Range):
        space["lr"] = replace(lr, low=min(lr.low, was.low), high=max(lr.high, was.high))
    grown = [f"{n} up to {_num(space[n].high, space[n])}" for n in CAPACITY
             if isinstance(space.get(n), Range) and space[n].high > original[n].high]
    reach = f"searches {' and '.join(grown)}, and " if grown else ""
    return (f"The best trial underfits: next.toml {reach}searches the learning rate over its "
            f"whole range again.")


def _high(space: tuple, name: str, default: float) -> float:
    """The top of parameter `name`'s range in `space`, else `default`."""
    return next((p.high for p in space if p.name == name and isinstance(p, Range)), default)


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


def narrowed(p, values: list, best, up: bool = False) -> tuple:
    """(the parameter for the next study, a sentence or "") from the values the best trials
    took: a choice keeps the values they used, a range shrinks to theirs plus a margin and
    grows past an edge the best value sits at (`up`: past its top, wherever the best value
    sits, and without a sentence), within what the trainer accepts. Whatever the result, it
    reads back as a study file would (else the parameter stays as it was)."""
    from hpsearch.errors import ConfigError
    from hpsearch.params import build_param

    if isinstance(p, Fixed) or not values:
        return p, ""
    if isinstance(p, Choice):
        kept = tuple(v for v in p.values if v in values)
        if len(kept) == len(p.values):
            return p, ""
        return (Fixed(p.name, kept[0]) if len(kept) == 1 else Choice(p.name, kept)), ""
    new, note = _narrowed_range(p, values, best, up)
    try:
        build_param(p.name, param_to_toml(new))
    except ConfigError:
        return p, ""
    return new, note


def _narrowed_range(p: Range, values: list, best, up: bool) -> tuple:
    fwd = math.log if p.log else (lambda v: v)
    back = math.exp if p.log else (lambda v: v)
    low_t, high_t = fwd(p.low), fwd(p.high)
    width = high_t - low_t
    lo = max(low_t, fwd(min(values)) - MARGIN * width)
    hi = min(high_t, fwd(max(values)) + MARGIN * width)
    floor, ceiling = PARAMS[p.name].widest
    edge = None
    if not up and fwd(best) - low_t <= EDGE * width and p.low > floor:
        lo, edge = fwd(max(floor, back(low_t - WIDEN * width))), "bottom"
    elif (up or high_t - fwd(best) <= EDGE * width) and p.high < ceiling:
        hi, edge = fwd(min(ceiling, back(high_t + WIDEN * width))), "top"
    edge = None if up else edge  # the caller says why it grew
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
        return (int(round(low)), int(round(high))) if PARAMS[p.name].kind is int else \
            (_tidy(low), _tidy(high))
    if PARAMS[p.name].kind is int:  # the trials' own values are whole: rounding keeps them
        return int(math.floor(low + 0.5)), int(math.ceil(high - 0.5))
    if p.log:
        return _significant(low, math.floor), _significant(high, math.ceil)
    unit = (p.high - p.low) / 100
    return (_tidy(p.low + math.floor((low - p.low) / unit + 1e-9) * unit),
            _tidy(p.low + math.ceil((high - p.low) / unit - 1e-9) * unit))


def _inside(p: Range, low, high, floor: float, ceiling: float) -> tuple:
    """Bounds moved back inside floor..ceiling, the parameter's widest (params.Spec.widest),
    or the old range where that reached further; a step or a whole unit at a time, so that
    a stepped range stays on its grid."""
    floor, ceiling = min(floor, p.low), max(ceiling, p.high)
    step = p.step or (1 if PARAMS[p.name].kind is int else None)
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
    if p is not None and PARAMS[p.name].kind is int:
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
