"""hpsearch's side of the throughput benchmarks: one trial of a fixed configuration.

`python -m hpsearch.bench.fixed_trial --epochs 10 --precision fp32 --number 0` prints, as
JSON, the seconds of the trial, the images it trained on and its final validation accuracy:
by default the default study's trial of bench.recipe.FIXED. `--config PATH` with `--set
KEY=VALUE` overrides and `--params JSON` times another study's trial instead (the photos
part: studies/photos.toml on a folder, with `--device auto` as `hpsearch run` chooses it).
The run is set up as `hpsearch run` sets it up (session.training_setup): threads configured,
the data loaded once per process; then the objective runs one trial, timed.
"""

from __future__ import annotations

import json
import time
from typing import Optional

import optuna

from hpsearch.bench.recipe import FIXED
from hpsearch import schedule
from hpsearch.build import max_epochs
from hpsearch.config import load_config
from hpsearch.objective import make_objective
from hpsearch.session import training_setup
from hpsearch.train import resolve_device


def time_fixed_trial(epochs=10, precision: Optional[str] = "fp32", number: int = 0,
                     config: Optional[str] = None, sets: tuple = (),
                     params: Optional[dict] = None, device: str = "cpu",
                     steps: Optional[int] = None) -> dict:
    """One trial of `params` (default: FIXED) in the study of `config` (default: the default
    study) with `sets` applied; `precision` None keeps the study's train.precision. `epochs`
    is a number or "auto"; `steps` sets the steps that "auto" aims at (schedule.AUTO_STEPS)."""
    overrides = [*sets, f"train.epochs={epochs!r}" if epochs == "auto"
                 else f"train.epochs={int(epochs)}"]
    if precision is not None:
        overrides.append(f"train.precision='{precision}'")
    cfg = load_config(config, overrides)
    dev = resolve_device(device)
    _, data = training_setup(cfg, dev)
    if steps is not None:  # "auto" at another number of steps, as the objective reads it
        schedule.AUTO_STEPS = steps
    most = max_epochs(cfg.train.epochs, len(data.y_train), cfg.train.batch_size)
    objective = make_objective(cfg, data, dev)
    trial = optuna.trial.FixedTrial(FIXED if params is None else params, number=number)
    start = time.perf_counter()
    accuracy = objective(trial)
    return {"seconds": time.perf_counter() - start, "images": len(data.y_train) * most,
            "epochs": most, "val_acc": accuracy}


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=lambda t: t if t == "auto" else int(t), default=10,
                        help="a number, or auto")
    parser.add_argument("--steps", type=int, help="the steps auto aims at (default: "
                                                   "schedule.AUTO_STEPS)")
    parser.add_argument("--precision", help="default: fp32 for the default study, the study "
                                            "file's train.precision with --config")
    parser.add_argument("--number", type=int, default=0)
    parser.add_argument("--config", metavar="PATH", help="a study file (default: the default)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a study file's key; repeat for more")
    parser.add_argument("--params", type=json.loads, metavar="JSON",
                        help="the trial's parameters (default: bench.recipe.FIXED)")
    parser.add_argument("--device", default="cpu", help="cpu (default), auto, cuda, ...")
    args = parser.parse_args()
    precision = args.precision or (None if args.config else "fp32")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(json.dumps(time_fixed_trial(args.epochs, precision, args.number, args.config,
                                      tuple(args.set), args.params, args.device,
                                      args.steps)))


if __name__ == "__main__":
    main()
