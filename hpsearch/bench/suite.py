"""The benchmark suite: hpsearch against the canonical recipe and the machine's limits.

Every measured run but the overhead's is its own process, started as a user would start
it, so import time, data loading and the store are counted; runs of the sides being
compared alternate within one invocation so that machine noise falls on both alike.
Figures are medians of the repeats (seeds 0, 1, ...). The method and the latest tables are
in BENCHMARKS.md.

Parts (`python -m hpsearch.bench --what PART`):
- throughput: one fixed trial (depth 3, width 32, batch 64, 16-pixel digits), recipe against
  hpsearch in float32 and in bfloat16;
- compute: that trial's counted FLOPs per second against a large matrix product's
  (bench.flops), and the profiler's split of its time;
- study: the default 50-trial study against the recipe on the same search space;
- pruning: the default study under each pruner;
- workers: the default study with 1 and 2 worker processes;
- overhead: milliseconds per trial outside training at 50 and 1,000 trials, per storage
  (bench.overhead), in this process after a warm-up, since start-up is not per trial;
- photos: a folder of photos (bench.photo_folder) through the photo recipe (bench.photo_recipe)
  and studies/photos.toml: the fixed trial at 32 and 64 pixels, a 20-trial study at 32;
- report: `hpsearch report`'s make_report on a drawn 1,000-trial store (bench.report_time);
- panel, run only when named, being long: the recipes and hpsearch on a panel of data sets in
  accuracy per minute, beside a long-trained reference (bench.panel).

Every study run also returns its best-so-far curve: the best validation accuracy against the
seconds since its process started (bench.curves).
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import optuna

from hpsearch.bench.curves import best_so_far, finished_trials
from hpsearch.bench.machine import commit, machine

PARTS = ("throughput", "compute", "study", "pruning", "workers", "overhead", "photos",
         "report", "panel")
NAMED_ONLY = ("panel",)  # left out of `all`: too long for a routine `make bench`
PRUNERS = ("none", "median", "hyperband", "sha")
POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


def timed(cmd: list) -> tuple:
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd[:4]))} ... failed:\n{out.stderr[-2000:]}")
    return seconds, out.stdout


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def median_of(runs: list, key: str) -> float:
    return statistics.median(r[key] for r in runs)


def alternate_fixed_trials(sides: dict, repeats: int) -> tuple:
    """(runs, medians) by side of each side's fixed trial, in turn, `repeats` rounds."""
    runs: dict = {side: [] for side in sides}
    for number in range(repeats):
        for side, cmd in sides.items():
            _, stdout = timed(cmd + ["--number", str(number)])
            r = last_json(stdout)
            runs[side].append({"images_per_second": r["images"] / r["seconds"],
                               "val_acc": r["val_acc"]})
    median = {side: {key: median_of(v, key) for key in ("images_per_second", "val_acc")}
              for side, v in runs.items()}
    return runs, median


# --- throughput -------------------------------------------------------------------------


def bench_throughput(repeats: int = 3, epochs: int = 10) -> dict:
    """Images per second and final validation accuracy of one fixed trial: the recipe,
    hpsearch in float32 and hpsearch in bfloat16, alternating, each run in a fresh process
    with the trial number (the model's seed) of the repeat. The speedup is that of the
    precision `auto` takes on this machine."""
    import torch

    from hpsearch.precision import choose_precision

    hpsearch_side = [sys.executable, "-m", "hpsearch.bench.fixed_trial", "--epochs",
                     str(epochs)]
    sides = {
        "recipe": [sys.executable, "-m", "hpsearch.bench.recipe", "--fixed-trial", "--epochs",
                   str(epochs)],
        "hpsearch fp32": hpsearch_side + ["--precision", "fp32"],
        "hpsearch bf16": hpsearch_side + ["--precision", "bf16"],
    }
    runs, median = alternate_fixed_trials(sides, repeats)
    rate = {side: m["images_per_second"] for side, m in median.items()}
    default = choose_precision(torch.device("cpu")).name
    return {"epochs": epochs, "repeats": repeats, "runs": runs, "median": median,
            "default_precision": default,
            "speedup": rate[f"hpsearch {default}"] / rate["recipe"],
            "bf16_speed": rate["hpsearch bf16"] / rate["hpsearch fp32"]}


# --- compute ----------------------------------------------------------------------------


def bench_compute(epochs: int = 10) -> dict:
    _, stdout = timed([sys.executable, "-m", "hpsearch.bench.flops", "--epochs", str(epochs)])
    return last_json(stdout)


# --- studies ----------------------------------------------------------------------------


def run_recipe(trials: int, seed: int, module: str = "hpsearch.bench.recipe",
               args: tuple = ()) -> dict:
    """A recipe's study (`module` with `args`) in a process of its own."""
    started = time.time()
    seconds, stdout = timed([sys.executable, "-m", module, *args, "--trials", str(trials),
                             "--seed", str(seed)])
    result = last_json(stdout)
    return {"wall_seconds": seconds, "best_value": result["best_value"],
            "states": result["states"], "epochs_run": result["epochs_run"],
            "curve": best_so_far(result["trials"], started)}


def run_hpsearch(trials: Optional[int], seed: int, workdir: Path, sets: tuple = (),
                 workers: int = 1, config: Optional[Path] = None, flags: tuple = ()) -> dict:
    """One `hpsearch run` of the study file `config` (default study: None) to `trials` (None:
    no --trials flag), `--set` overrides and other `flags` applied, on a new store in a folder
    of its own under `workdir` that goes once the store is read: the run's weights and
    checkpoints land beside it (48 MB in a `make bench`)."""
    folder = Path(tempfile.mkdtemp(prefix=f"run-{seed}-", dir=workdir))
    try:
        return _run_hpsearch_in(folder, trials, seed, sets, workers, config, flags)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _run_hpsearch_in(folder: Path, trials: Optional[int], seed: int, sets: tuple,
                     workers: int, config: Optional[Path] = None, flags: tuple = ()) -> dict:
    url = f"sqlite:///{folder / 'bench.db'}"
    cmd = [sys.executable, "-m", "hpsearch.cli", "run", "--seed", str(seed), "--storage", url,
           "--quiet", "--study-name", "bench", "--workers", str(workers)]
    cmd += ["--trials", str(trials)] if trials is not None else []
    cmd += ["--config", str(config)] if config is not None else []
    for item in sets:
        cmd += ["--set", item]
    started = time.time()
    seconds, _ = timed(cmd + list(flags))
    storage = optuna.storages.RDBStorage(url)
    study = optuna.load_study(study_name="bench", storage=storage)
    states: dict = {}
    durations = []
    for t in study.trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
        if t.datetime_complete is not None and t.datetime_start is not None:
            durations.append((t.datetime_complete - t.datetime_start).total_seconds())
    epochs = sum(len(t.intermediate_values) for t in study.trials)
    finished = states.get("COMPLETE", 0) + states.get("PRUNED", 0)
    best = study.best_value
    storage.engine.dispose()  # its connections, before its folder goes
    return {"wall_seconds": seconds, "best_value": best, "states": states,
            "epochs_run": epochs, "trial_seconds_mean": statistics.mean(durations),
            "trials_per_minute": 60 * finished / seconds,
            "curve": best_so_far(finished_trials(study.trials), started)}


def bench_study(trials: int = 50, repeats: int = 1, workdir: Path = Path("studies/bench")) -> dict:
    """Alternate the recipe and hpsearch `repeats` times (seeds 0, 1, ...); medians and ratio."""
    workdir.mkdir(parents=True, exist_ok=True)
    runs = []
    for seed in range(repeats):
        runs.append({"seed": seed, "recipe": run_recipe(trials, seed),
                     "hpsearch": run_hpsearch(trials, seed, workdir)})
    return {"trials": trials, "repeats": repeats, **study_medians(runs)}


def study_medians(runs: list) -> dict:
    """The runs, each side's medians and the ratio of the median wall times."""
    median = {side: {key: statistics.median(r[side][key] for r in runs)
                     for key in ("wall_seconds", "best_value", "epochs_run")}
              for side in ("recipe", "hpsearch")}
    ratio = median["recipe"]["wall_seconds"] / median["hpsearch"]["wall_seconds"]
    return {"runs": runs, "median": median, "speedup": ratio}


def bench_pruning(trials: int, repeats: int, workdir: Path,
                  default_runs: Optional[list] = None) -> dict:
    """The default study under every pruner, seeds alternating; the default pruner's runs
    are taken from the study benchmark when it ran in the same invocation."""
    from hpsearch.config import load_config

    workdir.mkdir(parents=True, exist_ok=True)
    runs: dict = {p: [] for p in PRUNERS}
    if default_runs:
        runs[load_config(None).study.pruner] = list(default_runs)
    for seed in range(repeats):
        for pruner in PRUNERS:
            if len(runs[pruner]) > seed:
                continue
            runs[pruner].append(run_hpsearch(trials, seed, workdir,
                                             sets=(f"study.pruner='{pruner}'",)))
    budget = trials * load_config(None).train.epochs
    table = {p: {"epochs_run": median_of(r, "epochs_run"), "budget": budget,
                 "best_value": median_of(r, "best_value"),
                 "wall_seconds": median_of(r, "wall_seconds"), "runs": r}
             for p, r in runs.items()}
    return {"trials": trials, "repeats": repeats, "pruners": table}


def bench_workers(trials: int, repeats: int, workdir: Path,
                  one_worker_runs: Optional[list] = None) -> dict:
    """Trials per minute of the default study with 1 and 2 worker processes."""
    workdir.mkdir(parents=True, exist_ok=True)
    runs: dict = {1: list(one_worker_runs or []), 2: []}
    for seed in range(repeats):
        for workers in (1, 2):
            if len(runs[workers]) <= seed:
                runs[workers].append(run_hpsearch(trials, seed, workdir, workers=workers))
    table = {str(w): {key: median_of(r, key) for key in
                      ("trials_per_minute", "wall_seconds", "epochs_run", "best_value")}
             for w, r in runs.items()}
    return {"trials": trials, "repeats": repeats, "workers": table,
            "ratio": table["2"]["trials_per_minute"] / table["1"]["trials_per_minute"]}


# --- overhead ---------------------------------------------------------------------------


def postgres_answers(url: str) -> bool:
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(url.replace("postgresql://", "postgresql+psycopg://"),
                                          connect_args={"connect_timeout": 3})
        with engine.connect():
            return True
    except Exception:
        return False


def bench_overhead(at: tuple = (50, 1000), repeats: int = 3,
                   postgres_url: str = POSTGRES_URL) -> dict:
    """bench.overhead on SQLite, a journal file and PostgreSQL (when one answers), each
    also with the bare objective under Optuna's own loop: Optuna's floor on that store. One
    study per side runs to the largest count; the smallest count, which the target is set at,
    is measured in `repeats` studies per side, alternating, and the median one is kept.

    Unlike the other parts this one runs in this process, after a short warm-up study on
    each side: imports and first uses are paid once per run, not per trial, and would
    otherwise fall on the first store measured."""
    from hpsearch.bench.overhead import measure

    stores = {"sqlite": "sqlite:///{tmp}/overhead.db", "journal": "journal:{tmp}/overhead.log"}
    if postgres_answers(postgres_url):
        stores["postgresql"] = postgres_url
    first, repeats = min(at), max(1, repeats)
    result, floor = {}, {}
    with tempfile.TemporaryDirectory(prefix="hpsearch-overhead-") as tmp:
        for bare in (False, True):
            warm = Path(tmp) / f"warm-up-{bare}"
            measure(f"sqlite:///{warm}/overhead.db", (5,), warm, bare=bare)
        for kind, url in stores.items():
            runs: dict = {False: [], True: []}
            for rep in range(repeats):
                for bare in (False, True):
                    work = Path(tmp) / f"{kind}-{'bare' if bare else 'hpsearch'}-{rep}"
                    counts = at if rep == 0 else (first,)
                    runs[bare].append(measure(url.replace("{tmp}", str(work)), counts, work,
                                              bare=bare))
            for found, bare in ((result, False), (floor, True)):
                found[kind] = with_median_first(runs[bare], str(first))
    return {"at": list(at), "repeats": repeats, "storages": result,
            "optuna_alone": floor,
            "skipped": [] if "postgresql" in stores else ["postgresql (no server answers)"]}


def with_median_first(runs: list, first: str) -> dict:
    """The first run (it went to every count) with its figures at `first` taken from the run
    whose total there is the median: one run's parts, which add up, as medians per part
    would not."""
    ordered = sorted(runs, key=lambda r: r["ms_per_trial"][first]["total"])
    chosen = dict(runs[0])
    chosen["ms_per_trial"] = {**runs[0]["ms_per_trial"],
                              first: ordered[len(ordered) // 2]["ms_per_trial"][first]}
    chosen["totals_at_first"] = [r["ms_per_trial"][first]["total"] for r in runs]
    return chosen


# --- photos -----------------------------------------------------------------------------

PHOTO_SIZES = (32, 64)  # pixels per side of the fixed trial; the study runs at the first
PHOTOS_STUDY = Path(__file__).resolve().parents[1] / "studies" / "photos.toml"  # packaged
TARGET_SPEEDUP, TARGET_ACCURACY = 5.0, 0.85  # see photo_targets


@dataclass(frozen=True)
class PhotoOptions:
    trials: int = 20  # per study
    folder: Optional[Path] = None  # default: one drawn under the output folder, kept there
    per_class: int = 500  # images per class of the drawn folder
    config: Path = PHOTOS_STUDY  # hpsearch's study file


def bench_photos(trials: int, repeats: int, workdir: Path, folder: Optional[Path] = None,
                 per_class: int = 500, epochs: int = 10, config: Path = PHOTOS_STUDY) -> dict:
    """One folder through the photo recipe and through hpsearch run as a user runs it
    (`--config studies/photos.toml --set data.dataset=folder:DIR`), alternating: the fixed
    trial at each of PHOTO_SIZES, then the study at the first, `repeats` times each. hpsearch
    decodes a folder once per size and caches it, as for a user's next study on it."""
    from hpsearch.bench.photo_folder import make_photo_folder
    from hpsearch.images import list_image_files

    workdir.mkdir(parents=True, exist_ok=True)
    root = Path(folder or make_photo_folder(workdir / "photo-folder", per_class)).resolve()
    files, _, classes = list_image_files(root)
    fixed = {str(size): photo_fixed_trials(root, size, repeats, epochs, config)
             for size in PHOTO_SIZES}
    recipe = ("hpsearch.bench.photo_recipe", ("--folder", str(root), "--size",
                                              str(PHOTO_SIZES[0])))
    runs = [{"seed": seed, "recipe": run_recipe(trials, seed, *recipe),
             "hpsearch": run_hpsearch(trials, seed, workdir, photo_sets(root), config=config)}
            for seed in range(repeats)]  # in this order: the sides alternate
    study = {"size": PHOTO_SIZES[0], **study_medians(runs)}
    return {"folder": str(root), "images": len(files), "classes": list(classes),
            "trials": trials, "repeats": repeats, "epochs": epochs, "config": str(config),
            "fixed": fixed, "study": study, "targets": photo_targets(fixed, study)}


def photo_sets(root: Path, size: int = PHOTO_SIZES[0]) -> tuple:
    return (f"data.dataset='folder:{root}'", f"data.image_size={size}")


def photo_fixed_trials(root: Path, size: int, repeats: int, epochs: int, config: Path) -> dict:
    from hpsearch.bench.photo_recipe import FIXED_PHOTOS

    sides = {"recipe": [sys.executable, "-m", "hpsearch.bench.photo_recipe", "--fixed-trial",
                        "--folder", str(root), "--size", str(size), "--epochs", str(epochs)],
             "hpsearch": [sys.executable, "-m", "hpsearch.bench.fixed_trial", "--config",
                          str(config), *(f"--set={s}" for s in photo_sets(root, size)),
                          "--params", json.dumps(FIXED_PHOTOS), "--device", "auto",
                          "--epochs", str(epochs)]}
    runs, median = alternate_fixed_trials(sides, repeats)
    rate = {side: m["images_per_second"] for side, m in median.items()}
    return {"params": FIXED_PHOTOS, "runs": runs, "median": median,
            "speedup": rate["hpsearch"] / rate["recipe"]}


def photo_targets(fixed: dict, study: dict) -> dict:
    """Each target: what it asks, the measured value and whether it is met."""
    best, speed = study["median"]["hpsearch"]["best_value"], f">= {TARGET_SPEEDUP:g}x"
    floor = max(study["median"]["recipe"]["best_value"], TARGET_ACCURACY)
    rate = fixed[str(PHOTO_SIZES[-1])]["speedup"]
    return {"study": {"target": speed, "value": study["speedup"],
                      "met": study["speedup"] >= TARGET_SPEEDUP},
            "study best val acc": {"target": f">= the recipe's and >= {TARGET_ACCURACY}",
                                   "value": best, "met": best >= floor},
            f"fixed trial {PHOTO_SIZES[-1]} px": {"target": speed, "value": rate,
                                                 "met": rate >= TARGET_SPEEDUP}}


# --- the whole run ----------------------------------------------------------------------


def run_all(parts: tuple, trials: int, repeats: int, epochs: int, workdir: Path,
            overhead_at: tuple = (50, 1000), say=print, done=lambda result: None,
            photos: PhotoOptions = PhotoOptions(), named: Optional[dict] = None) -> dict:
    """The parts in order; `done(result)` after each, so a long run keeps what it measured.
    `named`: the parts run only when named (the panel, which imports this module), as
    {part: (the line that announces it, a function that measures it)}."""
    result: dict = {"commit": commit(), "machine": machine()}

    def start(line: str) -> None:  # announces a part, after saving the parts before it
        if len(result) > 2:
            done(result)
        say(line)

    if "throughput" in parts:
        start(f"Throughput: one fixed trial, recipe / hpsearch fp32 / bf16, {repeats}x each.")
        result["throughput"] = bench_throughput(repeats, epochs)
    if "compute" in parts:
        start("Compute: FLOPs of the fixed trial against the matrix-product peak.")
        result["compute"] = bench_compute(epochs)
    default_runs = None
    if "study" in parts:
        start(f"Study: the recipe and hpsearch {repeats}x each, {trials} trials per study.")
        result["study"] = bench_study(trials, repeats, workdir)
        default_runs = [r["hpsearch"] for r in result["study"]["runs"]]
    if "pruning" in parts:
        start(f"Pruning: the default study under {', '.join(PRUNERS)}, {repeats}x each.")
        result["pruning"] = bench_pruning(trials, repeats, workdir, default_runs)
    if "workers" in parts:
        start(f"Workers: the default study with 1 and 2 worker processes, {repeats}x each.")
        result["workers"] = bench_workers(trials, repeats, workdir, default_runs)
    if "overhead" in parts:
        start(f"Overhead: {max(overhead_at)} trials without training per storage, "
              f"{min(overhead_at)} trials {repeats}x.")
        result["overhead"] = bench_overhead(overhead_at, repeats)
    if "photos" in parts:
        start(f"Photos: the photo recipe and hpsearch on a folder, fixed trials and a "
              f"{photos.trials}-trial study, {repeats}x each.")
        result["photos"] = bench_photos(photos.trials, repeats, workdir, photos.folder,
                                        photos.per_class, epochs, photos.config)
    if "report" in parts:
        from hpsearch.bench.report_time import REPORT_TRIALS, bench_report

        start(f"Report: make_report of a {REPORT_TRIALS:,}-trial study, {repeats}x.")
        result["report"] = bench_report(repeats)
    for part, (line, measure) in (named or {}).items():
        if part in parts:
            start(line)
            result[part] = measure()
    done(result)
    return result
