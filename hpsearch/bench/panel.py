"""The panel: hpsearch against the canonical recipes on several data sets, in accuracy per
minute, beside what each data set allows.

Defaults are to be chosen on a panel of data, not on one data set. Each data set of the
panel goes, seed by seed, through three runs, each its own process as a user would start it:

- the recipe: bench.recipe on digits, bench.photo_recipe on a folder, `--trials` trials of
  `--epochs` epochs under the median pruner;
- hpsearch: `hpsearch run` of the default study on digits, of studies/photos.toml (or the
  given study file) on a folder with `--set data.dataset=folder:DIR --set data.image_size=N`,
  the same trials, or with `time` a budget passed as `--time` where `hpsearch run` has that
  flag, and no `--trials` (then the time, not a count, ends the study);
- the reference: one fixed good configuration (bench.recipe.FIXED: depth 3, width 32, Adam
  at 1e-3, with the study file's augmentation) trained long by hpsearch's own trainer
  (bench.fixed_trial), to show what the data allows.

From the two studies comes each one's best-so-far curve (bench.curves): the best validation
accuracy of the completed trials against the seconds since its process started. Read off it:
each side's best at a quarter, a half and all of the recipe's wall time, and the seconds
hpsearch needed to reach the recipe's final best (None: not reached).

Data sets are named `digits`, `easy-N@PX` and `hard-N@PX` (a drawn folder of N images per
class at PX pixels, bench.photo_folder) and `faces@PX` (real photographs, bench.real_photos).
Folders are made under the output folder's panel/ and kept for the next run.
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from hpsearch.bench.curves import best_at, time_to_reach
from hpsearch.config import duration_seconds
from hpsearch.bench.suite import (PHOTOS_STUDY, last_json, photo_sets, run_hpsearch,
                                  run_recipe, timed)

DEFAULT_PANEL = ("digits", "hard-500@32", "hard-100@64", "easy-500@32", "easy-100@64",
                 "faces@32")
SHARES = (0.25, 0.5, 1.0)  # of the recipe's wall time, where both sides' best is read
REFERENCE_EPOCHS = 40
NAME = re.compile(r"digits|faces@(?P<faces_size>\d+)"
                  r"|(?P<difficulty>easy|hard)-(?P<per_class>\d+)@(?P<size>\d+)")
DURATION = re.compile(r"\d[\d.hms]*")  # 90, 300s, 20m, 1.5h, 1h30m: hpsearch checks it


@dataclass(frozen=True)
class PanelData:
    """One data set of the panel, by name."""

    name: str
    kind: str  # digits | drawn | real
    size: Optional[int] = None  # pixels per side; None: the study file's (digits: 16)
    difficulty: Optional[str] = None  # of a drawn folder: easy | hard
    per_class: Optional[int] = None  # images per class of a drawn folder


def parse_data(text: str) -> PanelData:
    """`digits`, `faces@32`, `easy-100@64` or `hard-500@32` as a PanelData; ValueError else.
    Digits take no size: their recipe runs at the default study's 16 pixels."""
    name = text.strip()
    m = NAME.fullmatch(name)
    if m is None:
        raise ValueError(f"expected digits, faces@PX, easy-N@PX or hard-N@PX, got {text!r}")
    if name == "digits":
        return PanelData(name, "digits")
    size = int(m["size"] or m["faces_size"])
    if size < 8 or (m["per_class"] and int(m["per_class"]) < 1):
        raise ValueError(f"{text!r}: the size must be at least 8 pixels, the count 1 or more")
    if m["difficulty"] is None:
        return PanelData(name, "real", size)
    return PanelData(name, "drawn", size, m["difficulty"], int(m["per_class"]))


@dataclass(frozen=True)
class PanelOptions:
    data: tuple = DEFAULT_PANEL  # names of the data sets, in the order they run
    trials: int = 20  # per study, both sides
    time: Optional[str] = None  # hpsearch's budget: a duration (300s, 20m, 1.5h) or "recipe"
    reference_epochs: int = REFERENCE_EPOCHS
    sets: tuple = ()  # --set overrides of hpsearch's study (not of the reference)
    # With a time budget: hpsearch also runs on this share of it (0: not), a study sized
    # to the shorter budget from the start, not the longer run read early
    short: float = 0.0
    config: Path = PHOTOS_STUDY  # hpsearch's study file for folders


def time_budget(text: str) -> str:
    """A budget as the panel takes it: "recipe" (the recipe's wall time on the same data set
    and seed) or a duration as `hpsearch run --time` takes it; ValueError else."""
    if text != "recipe" and not DURATION.fullmatch(text):
        raise ValueError(f"expected a duration such as 300s, 20m or 1.5h, or recipe, got "
                         f"{text!r}")
    return text


@dataclass(frozen=True)
class Prepared:
    """A data set made ready: what each of the three runs is given."""

    config: Optional[Path]  # hpsearch's study file; None: the default study
    sets: tuple  # hpsearch's --set overrides naming the data
    recipe: tuple  # (module, arguments) of the recipe
    meta: dict  # what the table says of the data


def prepare(data: PanelData, workdir: Path, config: Path, recipe_epochs: int) -> Prepared:
    """Draw or write the data set's folder (kept under workdir/panel/) and say how to run."""
    from hpsearch.data import digits_images
    from hpsearch.images import list_image_files

    epochs = ("--epochs", str(recipe_epochs))
    if data.kind == "digits":
        y = digits_images(8).y
        meta = {"images": len(y), "classes": [str(c) for c in sorted(set(y.tolist()))],
                "folder": None, "size": None}
        return Prepared(None, (), ("hpsearch.bench.recipe", epochs), meta)
    root = make_folder(data, workdir / "panel").resolve()
    files, _, classes = list_image_files(root)
    meta = {"images": len(files), "classes": list(classes), "folder": str(root),
            "size": data.size}
    recipe = ("hpsearch.bench.photo_recipe",
              ("--folder", str(root), "--size", str(data.size), *epochs))
    return Prepared(config, photo_sets(root, data.size), recipe, meta)


def make_folder(data: PanelData, under: Path) -> Path:
    if data.kind == "real":
        from hpsearch.bench.real_photos import make_real_folder

        return make_real_folder(under / "faces")
    from hpsearch.bench.photo_folder import make_photo_folder

    return make_photo_folder(under / f"{data.difficulty}-{data.per_class}", data.per_class,
                             difficulty=data.difficulty)


def bench_panel(options: PanelOptions, repeats: int, recipe_epochs: int,
                workdir: Path) -> dict:
    """Every data set of `options.data` through the recipe, hpsearch and the reference,
    `repeats` times (seeds 0, 1, ...), data sets in turn within a seed."""
    from hpsearch.bench import real_photos

    workdir.mkdir(parents=True, exist_ok=True)
    takes_time = hpsearch_takes_time()
    ready, skipped = {}, []
    for data in map(parse_data, options.data):
        if data.kind == "real" and not real_photos.available():
            skipped.append(f"{data.name} ({real_photos.missing_reason()})")
            continue
        ready[data.name] = prepare(data, workdir, options.config, recipe_epochs)
    found = {name: {**p.meta, "runs": []} for name, p in ready.items()}
    for seed in range(repeats):
        for name, p in ready.items():
            found[name]["runs"].append(panel_run(p, seed, options, takes_time, workdir))
    from hpsearch.bench.recipe import FIXED

    return {"trials": options.trials, "time": options.time if takes_time else None,
            "time_unused": bool(options.time) and not takes_time, "repeats": repeats,
            "recipe_epochs": recipe_epochs, "sets": list(options.sets),
            "config": str(options.config), "short": options.short if takes_time else 0.0,
            "reference": {"params": FIXED, "epochs": options.reference_epochs},
            "data": found, "rows": [panel_row(name, v) for name, v in found.items()],
            "skipped": skipped}


def hpsearch_takes_time() -> bool:
    """Whether this checkout's `hpsearch run` has a --time budget flag."""
    out = subprocess.run([sys.executable, "-m", "hpsearch.cli", "run", "--help"],
                         capture_output=True, text=True)
    return "--time" in out.stdout.replace(",", " ").split()


def panel_run(p: Prepared, seed: int, options: PanelOptions, takes_time: bool,
              workdir: Path) -> dict:
    """The recipe, hpsearch and the reference on one data set with one seed, in turn."""
    recipe = run_recipe(options.trials, seed, *p.recipe)
    trials, flags, seconds = options.trials, (), None
    if options.time and takes_time:
        seconds = (recipe["wall_seconds"] if options.time == "recipe"
                   else duration_seconds(options.time))
        trials, flags = None, ("--time", f"{seconds:.0f}s")
    sets = p.sets + tuple(options.sets)
    hpsearch = run_hpsearch(trials, seed, workdir, sets, config=p.config, flags=flags)
    short = None
    if seconds and options.short:
        short = run_hpsearch(None, seed, workdir, sets, config=p.config,
                             flags=("--time", f"{options.short * seconds:.0f}s"))
    return {"seed": seed, "recipe": recipe, "hpsearch": hpsearch, "short": short,
            "reference": run_reference(p, seed, options.reference_epochs),
            "read": read_curves(recipe, hpsearch)}


def run_reference(p: Prepared, seed: int, epochs: int) -> dict:
    """bench.recipe.FIXED trained `epochs` epochs by hpsearch's trainer on the data set, in
    the study file's other settings, the seed as the trial's number."""
    from hpsearch.bench.recipe import FIXED

    cmd = [sys.executable, "-m", "hpsearch.bench.fixed_trial", "--epochs", str(epochs),
           "--number", str(seed), "--params", json.dumps(FIXED), "--device", "auto",
           *(["--config", str(p.config)] if p.config else []),
           *(f"--set={s}" for s in p.sets)]
    wall, stdout = timed(cmd)
    r = last_json(stdout)
    return {"wall_seconds": wall, "train_seconds": r["seconds"], "val_acc": r["val_acc"]}


def read_curves(recipe: dict, hpsearch: dict) -> dict:
    """Both sides' best at each share of the recipe's wall time, and the seconds hpsearch
    took to reach the recipe's final best (None: not reached)."""
    wall = recipe["wall_seconds"]
    at = {f"{share:.0%}": {side: best_at(r["curve"], share * wall)
                           for side, r in (("recipe", recipe), ("hpsearch", hpsearch))}
          for share in SHARES}
    return {"at_recipe_time": at,
            "hpsearch_reaches_recipe_best_seconds": time_to_reach(hpsearch["curve"],
                                                                  recipe["best_value"])}


def panel_row(name: str, found: dict) -> dict:
    """One data set's row of the table: medians over the seeds."""
    runs = found["runs"]

    def median(side: str, key: str) -> float:
        return statistics.median(r[side][key] for r in runs)

    at = {share: {side: middle([r["read"]["at_recipe_time"][share][side] for r in runs],
                               float("-inf"))
                  for side in ("recipe", "hpsearch")}
          for share in runs[0]["read"]["at_recipe_time"]}
    reach = middle([r["read"]["hpsearch_reaches_recipe_best_seconds"] for r in runs],
                   float("inf"))
    return {"data": name, "images": found["images"], "classes": len(found["classes"]),
            "recipe_seconds": median("recipe", "wall_seconds"),
            "recipe_best": median("recipe", "best_value"),
            "hpsearch_seconds": median("hpsearch", "wall_seconds"),
            "hpsearch_best": median("hpsearch", "best_value"),
            "reference_acc": median("reference", "val_acc"),
            "reference_seconds": median("reference", "wall_seconds"),
            "at_recipe_time": at, "hpsearch_reaches_recipe_best_seconds": reach,
            "short_seconds": median("short", "wall_seconds") if runs[0]["short"] else None,
            "short_best": median("short", "best_value") if runs[0]["short"] else None}


def middle(values: list, none_is: float) -> Optional[float]:
    """The median of `values` with None counted as `none_is` (-inf: nothing yet, inf:
    never); of an even count the lower middle, so that it is one of the values."""
    ordered = sorted(values, key=lambda v: none_is if v is None else v)
    return ordered[(len(ordered) - 1) // 2]
