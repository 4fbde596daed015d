"""A trial's parameters -> the CNN and the settings it trains with: one mapping for the
objective, `train --best`, the report and the benchmarks."""

from __future__ import annotations

from torch import nn

from hpsearch.model import build_cnn
from hpsearch.train import FitSettings


def model_for(params: dict, data) -> nn.Sequential:
    """The CNN of these parameters for this dataset's images and classes."""
    return build_cnn(in_channels=data.channels, num_classes=len(data.classes),
                     image_size=data.image_size, depth=params["depth"], width=params["width"],
                     dropout=params["dropout"], head=params.get("head", "flatten"),
                     growth=params.get("growth", 1))


def fit_settings(params: dict, epochs: int, seed: int, precision: str = "auto") -> FitSettings:
    """How the model of these parameters trains: `seed` fixes initialisation and shuffling."""
    return FitSettings(epochs=epochs, batch_size=params["batch_size"], lr=params["lr"],
                       optimizer=params["optimizer"], weight_decay=params["weight_decay"],
                       seed=seed, precision=precision,
                       augment=params.get("augment", "none"))
