"""The report's sections that state facts: summary, dataset, search space, model, training,
next study and run. Each takes plain values and returns a Section; the charts are placed by
the caller (see report.__init__)."""

from __future__ import annotations

from datetime import datetime
from typing import Optional

from hpsearch.params import Choice, Range
import hpsearch.report.facts as facts
from hpsearch import records
from hpsearch.report.render import Section, Table, Text

SECTIONS = ("Summary", "Dataset", "Search space", "Model", "Training", "Results",
            "What mattered", "Next study", "Run")


def summary(name: str, states: dict, best: Optional[dict], n_val: int, classes: int,
            tied: int, test: Optional[tuple], wall: float, device: Optional[str]) -> Section:
    """`test`: (accuracy, images) or None; `tied`: completed trials within one validation
    image of the best, the best included; `classes`: how many (0 when not recorded)."""
    counts = ", ".join(f"{n} {k.lower()}" for k, n in sorted(states.items())) or "none"
    blocks = [Text(f"Study `{name}`: {sum(states.values())} trials ({counts}) in "
                   f"{facts.duration_text(wall)} on {device or 'an unrecorded device'}.")]
    if best is None:
        return Section("Summary", blocks + [Text(
            "No trial has completed yet, so there is no best configuration, model or test "
            "accuracy.")])
    rows = [["chosen trial", best["trial"]],
            ["validation accuracy", facts.interval_text(best["validation_accuracy"], n_val)]]
    if classes >= 2:
        rows.append(["validation accuracy against chance level (1 / classes)",
                     facts.against_chance(best["validation_accuracy"], classes, n_val)])
    rows.append(["test accuracy (held out, measured once)",
                 facts.interval_text(*test) if test else "not measured (see Results)"])
    rows.append(["trials within one validation image of the best", tied])
    blocks.append(Table(["", ""], rows))
    blocks.append(Text("Intervals are 95% Wilson score intervals for the number of images "
                       "each accuracy was measured on."))
    if facts.near_chance(best["validation_accuracy"], classes, n_val):
        blocks.append(Text(
            f"The best trial is no better than guessing: a model that picks one of the "
            f"{classes} classes at random scores {1 / classes:.3f} on average, and "
            f"{best['validation_accuracy']:.3f} on {n_val:,} validation images could be that "
            f"luck. Results says why, from the chosen trial's curves."))
    if tied > 1:
        blocks.append(Text(
            f"{tied} completed trials lie within one validation image ({1 / n_val:.4f}) of "
            f"the best: the validation split cannot tell them apart, so choosing trial "
            f"{best['trial']} among them is arbitrary (the earliest of the best). Results "
            f"lists {'them' if tied <= 10 else 'the first ten'}."))
    return Section("Summary", blocks)


def dataset(cfg, record: dict, per_class: Optional[list]) -> Section:
    """`record`: the data the study stored (classes, sizes, normalisation, fingerprint);
    `per_class`: rows (class, train, val, test) when the data was loaded."""
    classes = record.get("classes") or []
    sizes = record.get("sizes") or {}
    norm = record.get("normalization") or {}
    mean, std = norm.get("mean") or [], norm.get("std") or []
    source = cfg.data.dataset
    if source.startswith("folder:"):
        source = f"the image folder `{source[len('folder:'):]}` (one subfolder per class)"
    shown = ", ".join(map(str, classes[:20])) + (", ..." if len(classes) > 20 else "")
    rows = [["source", source],
            ["classes", f"{len(classes)}: {shown}" if classes else "-"],
            ["images", " / ".join(f"{sizes.get(k, 0):,} {k}" for k in ("train", "val", "test"))],
            ["split", f"stratified by class; validation {cfg.data.val_fraction:.0%}, test "
                      f"{cfg.data.test_fraction:.0%}, seed {cfg.study.seed}"],
            ["image size", f"{cfg.data.image_size} x {cfg.data.image_size} px, "
                           f"{len(mean) or '?'} channel(s)"],
            ["normalisation", "per channel, from the training split: mean "
                              f"{_floats(mean)}, std {_floats(std)}"],
            ["fingerprint", f"`{str(record.get('fingerprint', ''))[:16]}`"]]
    blocks = [Table(["", ""], rows)]
    if per_class:
        blocks.append(Text("Images per class and split:"))
        blocks.append(Table(["class", "train", "val", "test"], per_class))
    return Section("Dataset", blocks)


def search_space(cfg, n_trials: int) -> Section:
    rows = []
    for p in cfg.space:
        if isinstance(p, Range):
            how = "log range" if p.log else "range"
            values = f"{_num(p.low)} .. {_num(p.high)}" + (f", step {_num(p.step)}"
                                                          if p.step else "")
        elif isinstance(p, Choice):
            how, values = "choice", " | ".join(map(str, p.values))
        else:
            how, values = "fixed", str(p.value)
        rows.append([p.name, how, values])
    pruner = ("no pruner: every trial ran all its epochs" if cfg.study.pruner == "none" else
              f"the {cfg.study.pruner} pruner stopped trials that fell behind at an epoch")
    text = (f"The {cfg.study.sampler} sampler drew {n_trials} finished trials from this "
            f"space; {pruner}.")
    return Section("Search space", [Text(text), Table(["parameter", "searched as", "values"],
                                                      rows)])


def model(best: Optional[dict], layers: Optional[list]) -> Section:
    if best is None:
        return Section("Model", [Text("No completed trial, so no model to describe.")])
    if not layers:
        return Section("Model", [Text("The study's stored settings do not name its classes, "
                                      "so the chosen trial's layers cannot be listed.")])
    p = best["params"]
    head = "global average pooling" if p.get("head") == "gap" else "the flattened feature map"
    text = (f"Trial {best['trial']}'s network: {p['depth']} convolution block(s) "
            f"(3x3 convolution, batch norm, 2x2 max pooling, ReLU) starting at {p['width']} "
            f"channels (x{p.get('growth', 1)} per block), then {head}, dropout "
            f"{p['dropout']:.2g} and a linear classifier.")
    rows = [[name, facts.shape_text(shape), f"{count:,}"] for name, shape, count in layers]
    return Section("Model", [Text(text), Table(["layer", "output shape", "parameters"], rows)])


def training(cfg, best: Optional[dict], precision_run: Optional[str]) -> Section:
    p = (best or {}).get("params") or {}
    rows = [["optimizer", p.get("optimizer", "-")],
            ["learning rate", _num(p["lr"]) if "lr" in p else "-"],
            ["weight decay", _decay(p)],
            ["batch size", p.get("batch_size", cfg.train.batch_size)],
            ["epochs (the most a trial trains)", _epochs(cfg, best)],
            ["learning-rate schedule", _schedule(p)],
            ["label smoothing", _num(p.get("label_smoothing", 0.0))],
            ["augmentation", p.get("augment", cfg.train.augment)],
            ["precision (setting, then as run)",
             f"{cfg.train.precision}; {precision_run or 'not recorded'}"],
            ["loss", "cross-entropy"],
            ["seed", best.get("seed", "-") if best else "-"]]
    text = ("Each trial trained from scratch on the training split and was scored on the "
            "validation split after every epoch; the values are the chosen trial's.")
    return Section("Training", [Text(text), Table(["", ""], rows)])


def _decay(p: dict) -> str:
    """`0`, `0.1 (all parameters)` or `0.1 (weights only: not batch norm, not biases)`."""
    decay = p.get("weight_decay", 0.0)
    if not decay:
        return _num(decay)
    on = ("all parameters" if p.get("decay_on", "all") == "all"
          else "weights only: not batch norm, not biases")
    return f"{_num(decay)} ({on})"


def _epochs(cfg, best: Optional[dict]) -> str:
    """`40` as the file said it, `auto: 40` where hpsearch worked it out."""
    resolved = (best or {}).get("epochs")
    if cfg.train.epochs == "auto":
        return f"auto: {resolved}" if resolved else "auto"
    return str(cfg.train.epochs)


def _schedule(p: dict) -> str:
    if p.get("schedule") == "wsd":
        return "warmup, hold, linear decay to 0 at the last epoch"
    return "constant" if p else "-"


def next_study(plan, command: str) -> Section:
    blocks = [Text(sentence) for sentence in plan.advice]
    if plan.changes:
        blocks.append(Table(["parameter", "this study", "next study"],
                            [list(c) for c in plan.changes]))
    where = ("into this study's store, where `hpsearch compare` can set the two side by "
             "side" if "--storage" in command else "from the folder the study ran in")
    blocks.append(Text(f"Run it {where}: `{command}`."))
    return Section("Next study", blocks)


def run(first: Optional[datetime], last: Optional[datetime], wall: float,
        device: Optional[str], versions: dict, now_versions: dict, command: str) -> Section:
    rows = [["first trial started", _when(first)], ["last trial finished", _when(last)],
            ["wall time", facts.duration_text(wall)],
            ["device (precision)", device or "not recorded"]]
    for package, version in versions.items():
        now = now_versions.get(package)
        shown = version or "-"
        if now and now != version:
            shown += f" (this report: {now})"
        rows.append([package, shown])
    return Section("Run", [Table(["", ""], rows), Text(
        f"To run the same study again (same settings and seeds) into a new store: "
        f"`{command}`.")])


def _when(t: Optional[datetime]) -> str:
    return "-" if t is None else records.local_time(t)


def _floats(values: list) -> str:
    return "(" + ", ".join(f"{v:.3f}" for v in values) + ")" if values else "-"


def _num(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if v == 0 or 1e-4 <= abs(v) < 1e5 else f"{v:.1e}"
    return str(v)
