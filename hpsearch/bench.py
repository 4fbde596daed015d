"""Side-by-side benchmarks: hpsearch's default study against the canonical recipe.

Each side runs as its own process, as a user would start it, so import time, data loading
and the store are counted on both; the two alternate within one run so that machine noise
falls on both alike.
"""

from __future__ import annotations

import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import optuna


def timed(cmd: list) -> tuple:
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed:\n{out.stderr[-2000:]}")
    return seconds, out.stdout


def run_recipe(trials: int, seed: int) -> dict:
    seconds, stdout = timed([sys.executable, "-m", "hpsearch.recipe", "--trials", str(trials),
                             "--seed", str(seed)])
    result = json.loads(stdout.strip().splitlines()[-1])
    return {"wall_seconds": seconds, "best_value": result["best_value"],
            "states": result["states"]}


def run_hpsearch(trials: int, seed: int, workdir: Path, config: str = None) -> dict:
    db = workdir / f"bench-{seed}-{time.time_ns()}.db"
    url = f"sqlite:///{db}"
    cmd = [sys.executable, "-m", "hpsearch.cli", "run", "--trials", str(trials), "--seed",
           str(seed), "--storage", url, "--quiet", "--study-name", "bench"]
    seconds, _ = timed(cmd + (["--config", config] if config else []))
    study = optuna.load_study(study_name="bench", storage=url)
    states: dict = {}
    for t in study.trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    epochs = sum(len(t.intermediate_values) for t in study.trials)
    db.unlink(missing_ok=True)
    return {"wall_seconds": seconds, "best_value": study.best_value, "states": states,
            "epochs_run": epochs}


def bench_study(trials: int = 50, repeats: int = 1, workdir: Path = Path("studies/bench")) -> dict:
    """Alternate the recipe and hpsearch `repeats` times (seeds 0, 1, ...); medians and ratio."""
    workdir.mkdir(parents=True, exist_ok=True)
    runs = []
    for seed in range(repeats):
        runs.append({"seed": seed, "recipe": run_recipe(trials, seed),
                     "hpsearch": run_hpsearch(trials, seed, workdir)})
    median = {side: {key: statistics.median(r[side][key] for r in runs)
                     for key in ("wall_seconds", "best_value")}
              for side in ("recipe", "hpsearch")}
    ratio = median["recipe"]["wall_seconds"] / median["hpsearch"]["wall_seconds"]
    return {"trials": trials, "repeats": repeats, "runs": runs, "median": median,
            "speedup": ratio, "machine": machine()}


def time_fixed_trial(epochs: int = 10) -> dict:
    """hpsearch's objective for the fixed configuration, as `hpsearch run` sets it up: data
    loaded once per process, threads configured, then one trial timed."""
    import torch

    from hpsearch.config import load_config
    from hpsearch.data import load_dataset
    from hpsearch.objective import make_objective
    from hpsearch.recipe import FIXED
    from hpsearch.train import configure_threads

    configure_threads()
    cfg = load_config(None, [f"train.epochs={epochs}"])
    data = load_dataset(cfg.data, cfg.study.seed)
    objective = make_objective(cfg, data, torch.device("cpu"))
    trial = optuna.trial.FixedTrial(FIXED, number=0)
    start = time.perf_counter()
    objective(trial)
    return {"seconds": time.perf_counter() - start, "images": len(data.y_train) * epochs}


def bench_throughput(repeats: int = 3, epochs: int = 10) -> dict:
    """Images per second of one fixed trial, the recipe's and hpsearch's alternating, each in
    a fresh process; medians and their ratio."""
    sides = {
        "recipe": [sys.executable, "-m", "hpsearch.recipe", "--fixed-trial", "--epochs",
                   str(epochs)],
        "hpsearch": [sys.executable, "-m", "hpsearch.bench", "--fixed-trial", "--epochs",
                     str(epochs)],
    }
    rates: dict = {side: [] for side in sides}
    for _ in range(repeats):
        for side, cmd in sides.items():
            _, stdout = timed(cmd)
            r = json.loads(stdout.strip().splitlines()[-1])
            rates[side].append(r["images"] / r["seconds"])
    median = {side: statistics.median(v) for side, v in rates.items()}
    return {"epochs": epochs, "repeats": repeats, "images_per_second": rates,
            "median": median, "speedup": median["hpsearch"] / median["recipe"]}


def machine() -> dict:
    import os

    import torch

    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__,
            "optuna": optuna.__version__}


def markdown(result: dict) -> str:
    rows = ["| run | seed | wall s | best val acc | trials by state |", "|---|---|---|---|---|"]
    for r in result["runs"]:
        for side in ("recipe", "hpsearch"):
            s = r[side]
            states = ", ".join(f"{n} {k.lower()}" for k, n in sorted(s["states"].items()))
            rows.append(f"| {side} | {r['seed']} | {s['wall_seconds']:.1f} | "
                        f"{s['best_value']:.4f} | {states} |")
    m = result["median"]
    rows.append("")
    rows.append(f"Median wall time: recipe {m['recipe']['wall_seconds']:.1f} s, hpsearch "
                f"{m['hpsearch']['wall_seconds']:.1f} s: **{result['speedup']:.2f}x** faster; "
                f"best validation accuracy {m['recipe']['best_value']:.4f} vs "
                f"{m['hpsearch']['best_value']:.4f}.")
    mc = result["machine"]
    rows.append(f"Machine: {mc['cores']} cores ({mc['cpu']}), Python {mc['python']}, "
                f"torch {mc['torch']}, optuna {mc['optuna']}.")
    return "\n".join(rows)


def throughput_markdown(result: dict) -> str:
    m = result["median"]
    return (f"Training throughput, fixed configuration (depth 3, width 32, batch 64, "
            f"{result['epochs']} epochs, 16-pixel digits), median of {result['repeats']}: "
            f"recipe {m['recipe']:.0f} images/s, hpsearch {m['hpsearch']:.0f} images/s: "
            f"**{result['speedup']:.2f}x**.")


def main() -> None:
    """`python -m hpsearch.bench --fixed-trial` times hpsearch's side of the throughput
    benchmark in this process and prints it as JSON."""
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--fixed-trial", action="store_true", required=True)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(json.dumps(time_fixed_trial(args.epochs)))


if __name__ == "__main__":
    main()
