"""A trial's parameters -> the CNN and the settings it trains with: one mapping for the
objective, `train --best`, the report and the benchmarks. Each parameter goes by its name to
the part the parameter table says it feeds (params.Spec.feeds)."""

from __future__ import annotations

from torch import nn

from hpsearch.model import build_cnn
from hpsearch.params import values_for
from hpsearch.schedule import auto_epochs
from hpsearch.train import FitSettings


def max_epochs(epochs, n_train: int, batch_size: int) -> int:
    """A trial's most epochs: `train.epochs` as the study file gives it (a number, or "auto":
    see schedule.auto_epochs for n_train training images in batches of batch_size)."""
    return auto_epochs(n_train, batch_size) if epochs == "auto" else int(epochs)


def model_for(params: dict, data) -> nn.Sequential:
    """The CNN of these parameters for this dataset's images and classes."""
    return build_cnn(in_channels=data.channels, num_classes=len(data.classes),
                     image_size=data.image_size, **values_for("model", params))


def fit_settings(params: dict, epochs: int, seed: int, precision: str = "auto") -> FitSettings:
    """How the model of these parameters trains: `seed` fixes initialisation and shuffling."""
    return FitSettings(epochs=epochs, seed=seed, precision=precision,
                       **values_for("training", params))


def probe_seconds_per_epoch(params: dict, data, device, precision: str = "auto") -> float:
    """Seconds one epoch of the model of `params` takes on `device`: an epoch trained and
    timed, its first few steps (one-time set-up: kernels chosen, memory taken) included, so
    the figure errs long."""
    import time

    import torch

    from hpsearch.train import fit

    torch.manual_seed(0)
    model = model_for(params, data)
    start = time.perf_counter()
    fit(model, data, fit_settings(params, 1, 0, precision), device)
    return time.perf_counter() - start
