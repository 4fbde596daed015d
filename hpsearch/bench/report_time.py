"""The report of a large study: `make_report` on a 1,000-trial store (the target: under
30 s). The store is drawn, not trained: the default study's settings and space, each trial
with a per-epoch history, a parameter count, an owner, and a third of them completed; no
weights, so the test-split charts are left out (they cost the same for any number of
trials)."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

REPORT_TRIALS = 1000
TARGET_SECONDS = 30.0


def drawn_study(storage, trials: int = REPORT_TRIALS, epochs: int = 6, seed: int = 0):
    """A study of `trials` finished trials over the default space, as hpsearch stores one."""
    import optuna
    from optuna.distributions import (CategoricalDistribution, FloatDistribution,
                                      IntDistribution)
    from optuna.trial import TrialState, create_trial

    from hpsearch.config import load_config
    from hpsearch.records import HISTORY_ATTR, N_PARAMS_ATTR, OWNER_ATTR, SETTINGS_ATTR

    cfg = load_config(None)
    space = {"lr": FloatDistribution(1e-4, 1e-1, log=True), "depth": IntDistribution(1, 4),
             "width": IntDistribution(8, 64, log=True), "dropout": FloatDistribution(0, 0.5),
             "optimizer": CategoricalDistribution(["adam", "sgd"])}
    study = optuna.create_study(study_name="report-bench", storage=storage,
                                direction="maximize")
    study.set_user_attr(SETTINGS_ATTR, {
        "config": cfg.settings(), "split_seed": 0,
        "data": {"fingerprint": "0" * 64, "classes": [str(i) for i in range(10)],
                 "sizes": {"train": 1257, "val": 270, "test": 270},
                 "normalization": {"mean": [0.3], "std": [0.32]}}})
    rng = np.random.default_rng(seed)
    made = []
    for _ in range(trials):
        done = rng.random() < 1 / 3
        ran = epochs if done else int(rng.integers(1, epochs))
        top = rng.uniform(0.6, 0.99)
        curve = [float(min(1.0, top * (1 - 0.5 * np.exp(-e)))) for e in range(1, ran + 1)]
        params = {"lr": float(10 ** rng.uniform(-4, -1)), "depth": int(rng.integers(1, 5)),
                  "width": int(rng.integers(8, 65)), "dropout": float(rng.uniform(0, 0.5)),
                  "optimizer": str(rng.choice(["adam", "sgd"]))}
        history = {"train_loss": [1 / e for e in range(1, ran + 1)], "train_acc": curve,
                   "val_loss": [1.2 / e for e in range(1, ran + 1)], "val_acc": curve,
                   "epoch_seconds": [0.15] * ran}
        made.append(create_trial(
            state=TrialState.COMPLETE if done else TrialState.PRUNED, params=params,
            distributions=space, value=curve[-1] if done else None,
            intermediate_values={e + 1: v for e, v in enumerate(curve)},
            user_attrs={HISTORY_ATTR: history, N_PARAMS_ATTR: int(rng.integers(1e3, 1e5)),
                        OWNER_ATTR: {"device": "cpu", "precision": "fp32"}}))
    study.add_trials(made)
    return study


def bench_report(repeats: int = 3, trials: int = REPORT_TRIALS) -> dict:
    """Seconds of make_report on a drawn `trials`-trial study, each repeat a fresh folder."""
    import optuna

    from hpsearch.report import make_report

    with tempfile.TemporaryDirectory(prefix="hpsearch-report-bench-") as tmp:
        storage = optuna.storages.RDBStorage(f"sqlite:///{Path(tmp) / 'big.db'}")
        drawn_study(storage, trials)
        seconds = []
        for i in range(repeats):
            study = optuna.load_study(study_name="report-bench", storage=storage)
            start = time.perf_counter()
            make_report(study, Path(tmp) / f"out{i}")
            seconds.append(time.perf_counter() - start)
    median = statistics.median(seconds)
    return {"trials": trials, "seconds": seconds, "median_seconds": median,
            "target_seconds": TARGET_SECONDS, "met": median < TARGET_SECONDS}
