"""hpsearch's side of the throughput benchmark: one trial of the fixed configuration.

`python -m hpsearch.bench.fixed_trial --epochs 10 --precision fp32 --number 0` prints, as
JSON, the seconds of the trial, the images it trained on and its final validation accuracy.
The run is set up as `hpsearch run` sets it up (session.training_setup): threads configured,
the data loaded once per process; then the objective runs one trial, timed.
"""

from __future__ import annotations

import json
import time

import optuna
import torch

from hpsearch.bench.recipe import FIXED
from hpsearch.config import load_config
from hpsearch.objective import make_objective
from hpsearch.session import training_setup


def time_fixed_trial(epochs: int = 10, precision: str = "fp32", number: int = 0) -> dict:
    cfg = load_config(None, [f"train.epochs={epochs}", f"train.precision='{precision}'"])
    device = torch.device("cpu")
    _, data = training_setup(cfg, device)
    objective = make_objective(cfg, data, device)
    trial = optuna.trial.FixedTrial(FIXED, number=number)
    start = time.perf_counter()
    accuracy = objective(trial)
    return {"seconds": time.perf_counter() - start, "images": len(data.y_train) * epochs,
            "val_acc": accuracy}


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--number", type=int, default=0)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(json.dumps(time_fixed_trial(args.epochs, args.precision, args.number)))


if __name__ == "__main__":
    main()
