"""The defaults against their alternatives, on the panel's data sets.

A default of the photo study (the head, the growth of widths, the augmentation, the schedule,
the length of a trial, label smoothing) is chosen on a panel of data, not one data set. Here
one good configuration (bench.recipe.FIXED: depth 3, width 32, Adam at 1e-3) trains with the
study file's defaults, then with one of them changed at a time (VARIANTS), on every data set
of the panel and for each seed, each run its own process (bench.fixed_trial). Each data set
is made as the panel makes it (bench.panel.prepare); digits run the default study.

Read per data set: each variant's final validation accuracy and trial seconds, median over
the seeds, beside the defaults'. Accuracy is the trial's own (deterministic for a seed),
the seconds depend on what else the machine runs.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from hpsearch.bench.suite import last_json, timed
from hpsearch.bench.tables import writer

# name: (the --set overrides, steps of a trial: None for the study's auto length, values of
# the fixed configuration changed). Each changes one default of studies/photos.toml;
# "defaults" changes none; the weight-decay pair compares what decay applies to.
VARIANTS = {
    "defaults": ((), None, {}),
    "augment none": (("train.augment=[]",), None, {}),
    "head gap": (("space.head='gap'",), None, {}),
    "growth 2": (("space.growth=2",), None, {}),
    "gap, growth 2": (("space.head='gap'", "space.growth=2"), None, {}),
    "schedule constant": (("space.schedule='constant'",), None, {}),
    "label smoothing 0.1": (("space.label_smoothing=0.1",), None, {}),
    "600 steps": ((), 600, {}),
    "2400 steps": ((), 2400, {}),
    "adamw 0.1, all": (("space.optimizer='adamw'", "space.weight_decay=0.1",
                        "space.decay_on='all'"), None, {"optimizer": "adamw"}),
    "adamw 0.1, weights": (("space.optimizer='adamw'", "space.weight_decay=0.1",
                            "space.decay_on='weights'"), None, {"optimizer": "adamw"}),
}


def bench_defaults(data_names: tuple, repeats: int, workdir: Path, config: Path,
                   variants: tuple = tuple(VARIANTS), done=lambda result: None) -> dict:
    """Every variant on every data set, seeds 0..repeats-1; `done(result)` after each data
    set, so that a long run keeps what it measured."""
    from hpsearch.bench.panel import parse_data, prepare
    from hpsearch.bench.recipe import FIXED

    workdir.mkdir(parents=True, exist_ok=True)
    found: dict = {}
    result = {"params": FIXED, "repeats": repeats, "config": str(config),
              "variants": {v: list(VARIANTS[v][0]) + ([f"{VARIANTS[v][1]} steps"]
                                                        if VARIANTS[v][1] else [])
                           + [f"{k}={x}" for k, x in VARIANTS[v][2].items()]
                           for v in variants},
              "data": found}
    for data in map(parse_data, data_names):
        p = prepare(data, workdir, config, 10)
        runs = {v: [run_variant(p, v, seed) for seed in range(repeats)] for v in variants}
        found[data.name] = {"images": p.meta["images"], "classes": len(p.meta["classes"]),
                            "runs": runs,
                            "median": {v: {key: statistics.median(r[key] for r in rs)
                                           for key in ("val_acc", "seconds", "epochs")}
                                       for v, rs in runs.items()}}
        done(result)
    return result


def run_variant(p, variant: str, seed: int) -> dict:
    from hpsearch.bench.recipe import FIXED

    sets, steps, changed = VARIANTS[variant]
    cmd = [sys.executable, "-m", "hpsearch.bench.fixed_trial", "--epochs", "auto",
           "--number", str(seed), "--params", json.dumps({**FIXED, **changed}),
           "--device", "auto",
           *(["--config", str(p.config)] if p.config else []),
           *(f"--set={s}" for s in p.sets + sets),
           *(["--steps", str(steps)] if steps else [])]
    wall, stdout = timed(cmd)
    r = last_json(stdout)
    return {"seed": seed, "wall_seconds": wall, "seconds": r["seconds"],
            "val_acc": r["val_acc"], "epochs": r["epochs"]}


def table(r: dict) -> str:
    """Accuracy (seconds) of each variant by data set, medians over the seeds."""
    names = list(r["variants"])
    rows = ["| variant | " + " | ".join(r["data"]) + " |",
            "|---|" + "---|" * len(r["data"])]
    for v in names:
        cells = [f"{d['median'][v]['val_acc']:.3f} ({d['median'][v]['seconds']:.0f} s)"
                 for d in r["data"].values()]
        rows.append(f"| {v} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main() -> None:
    import argparse

    from hpsearch.bench.suite import PHOTOS_STUDY

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--panel", nargs="+", required=True, metavar="DATA")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--variants", nargs="+", choices=tuple(VARIANTS),
                        default=tuple(VARIANTS))
    parser.add_argument("--config", type=Path, default=PHOTOS_STUDY)
    parser.add_argument("--out", type=Path, default=Path("studies/bench"))
    args = parser.parse_args()
    out = args.out.resolve()

    bench_defaults(tuple(args.panel), args.repeats, out, args.config, tuple(args.variants),
                   writer(out, "defaults", table, echo=True))


if __name__ == "__main__":
    main()
