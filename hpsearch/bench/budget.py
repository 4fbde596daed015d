"""Studies under a time budget: which pruner (or other setting) spends `--time` best on the
panel's data sets.

`python -m hpsearch.bench.budget --panel hard-500@32 easy-100@64 --time 240s --repeats 1`
runs studies/photos.toml on each data set with `hpsearch run --time` under each arm in turn
(by default each pruner of PRUNERS; `--arm "NAME=KEY=VALUE;KEY=VALUE"` names others, as
--set overrides), seeds alternating, each run its own process on a new store, as a user
starts it. From each run's best-so-far curve (bench.curves) come its best validation
accuracy at a quarter, a half and all of the budget, and its trials by state. Data sets are
made as the panel makes them (bench.panel.prepare), under the output folder's panel/.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from hpsearch.bench.curves import best_at
from hpsearch.bench.suite import PHOTOS_STUDY, run_hpsearch
from hpsearch.bench.tables import writer
from hpsearch.config import duration_seconds

PRUNERS = ("hyperband", "sha")  # the two that let the best trials train to the maximum
ARMS = {pruner: (f"study.pruner='{pruner}'",) for pruner in PRUNERS}
SHARES = (0.25, 0.5, 1.0)


def parse_arm(text: str) -> tuple:
    """`NAME=KEY=VALUE;KEY=VALUE` -> (NAME, (KEY=VALUE, ...)); a bare pruner name is its arm."""
    if text in ARMS:
        return text, ARMS[text]
    name, _, sets = text.partition("=")
    if not name or not sets:
        raise ValueError(f"expected NAME=KEY=VALUE;KEY=VALUE or a pruner, got {text!r}")
    return name, tuple(s.strip() for s in sets.split(";") if s.strip())


def bench_budget(data_names: tuple, budget: str, repeats: int, workdir: Path,
                 config: Path = PHOTOS_STUDY, arms: dict = ARMS,
                 done=lambda result: None) -> dict:
    """Every arm ({name: --set overrides}) on every data set under `budget`, seeds
    0..repeats-1; `done(result)` after each data set, so that a long run keeps what it
    measured."""
    from hpsearch.bench.panel import parse_data, prepare

    seconds = duration_seconds(budget)
    workdir.mkdir(parents=True, exist_ok=True)
    found: dict = {}
    result = {"budget": budget, "seconds": seconds, "repeats": repeats, "config": str(config),
              "arms": {name: list(sets) for name, sets in arms.items()}, "data": found}
    for data in map(parse_data, data_names):
        p = prepare(data, workdir, config, 10)
        runs: dict = {name: [] for name in arms}
        for seed in range(repeats):
            for name, sets in arms.items():
                run = run_hpsearch(None, seed, workdir, p.sets + tuple(sets),
                                   config=p.config, flags=("--time", budget))
                runs[name].append({"seed": seed, "wall_seconds": run["wall_seconds"],
                                     "best_value": run["best_value"], "states": run["states"],
                                     "best_at": [best_at(run["curve"], share * seconds)
                                                 for share in SHARES]})
        found[data.name] = {"images": p.meta["images"], "runs": runs,
                            "median": {pr: _medians(rs) for pr, rs in runs.items()}}
        done(result)
    return result


def _medians(runs: list) -> dict:
    def middle(values):
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None

    return {"best_value": middle(r["best_value"] for r in runs),
            "best_at": [middle(r["best_at"][i] for r in runs) for i in range(len(SHARES))],
            "trials": middle(sum(r["states"].values()) for r in runs),
            "complete": middle(r["states"].get("COMPLETE", 0) for r in runs)}


def table(r: dict) -> str:
    head = " | ".join(f"best at {share:g} of {r['budget']}" for share in SHARES)
    lines = [f"| data | arm | {head} | trials (completed) |",
             "|---|---|" + "---|" * len(SHARES) + "---|"]
    for name, d in r["data"].items():
        for pruner, m in d["median"].items():
            cells = " | ".join("-" if v is None else f"{v:.3f}" for v in m["best_at"])
            lines.append(f"| {name} | {pruner} | {cells} | {m['trials']:g} "
                         f"({m['complete']:g}) |")
    return "\n".join(lines)


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--panel", nargs="+", required=True, metavar="DATA")
    parser.add_argument("--time", required=True, metavar="DURATION", help="e.g. 240s, 5m")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--arm", action="append", type=parse_arm, metavar="ARM",
                        help="a pruner, or NAME=KEY=VALUE;KEY=VALUE (repeatable; default: "
                             "each pruner)")
    parser.add_argument("--config", type=Path, default=PHOTOS_STUDY)
    parser.add_argument("--out", type=Path, default=Path("studies/bench"))
    args = parser.parse_args()
    out = args.out.resolve()

    result = bench_budget(tuple(args.panel), args.time, args.repeats, out, args.config,
                          dict(args.arm) if args.arm else ARMS, writer(out, "budget", table))
    print(table(result))


if __name__ == "__main__":
    main()
