"""Numbers the report states about its results: intervals, ties, the model's layers, the
epochs, the run. Plain values in, plain values out; nothing here draws or writes."""

from __future__ import annotations

import math
from typing import Optional

Z95 = 1.959964  # the normal quantile of a two-sided 95% interval


def wilson(accuracy: float, n: int, z: float = Z95) -> tuple:
    """The 95% Wilson score interval (low, high) of an accuracy measured on n images: unlike
    accuracy +- 1.96 standard errors it stays inside 0..1 and is right near 1.0, where a good
    classifier's accuracy sits."""
    if n <= 0 or accuracy != accuracy:
        return (math.nan, math.nan)
    p = min(1.0, max(0.0, accuracy))
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def interval_text(accuracy: float, n: int) -> str:
    """`0.9889 (95% interval 0.968-0.996, 270 images)`; without a count of images, the
    accuracy alone."""
    if n <= 0:
        return f"{accuracy:.4f} (number of images not recorded)"
    low, high = wilson(accuracy, n)
    return f"{accuracy:.4f} (95% interval {low:.3f}-{high:.3f}, {n:,} images)"


def within_one_image(values: list, best: float, n: int) -> int:
    """How many of `values` (completed trials' validation accuracies, the best included) lie
    within one validation image of the best: their difference could be one image's luck."""
    if n <= 0:
        return 0
    return sum(1 for v in values if best - v <= 1.0 / n + 1e-12)


def still_improving(val_acc: list, n: int) -> bool:
    """Whether a trial's validation accuracy was still rising when its epochs ran out: its
    last epoch is its best, more than one image above the epoch two before."""
    if len(val_acc) < 3 or n <= 0:
        return False
    return val_acc[-1] >= max(val_acc[:-1]) and val_acc[-1] - val_acc[-3] > 1.0 / n


def layer_table(params: dict, channels: int, classes: int, image_size: int) -> list:
    """The model of `params` layer by layer: (layer, output shape, parameters) for each
    module that computes something, from one forward pass of an empty image on the CPU; the
    last row is the total."""
    import torch

    from hpsearch.build import model_for

    class Shape:  # what model_for reads of a dataset
        pass

    shape = Shape()
    shape.channels, shape.classes, shape.image_size = channels, tuple(range(classes)), image_size
    model = model_for(params, shape).eval()
    rows, hooks = [], []
    for name, module in model.named_modules():
        if list(module.children()):
            continue  # a container: its leaves are listed

        def hook(mod, inputs, output, name=name):
            count = sum(p.numel() for p in mod.parameters(recurse=False))
            rows.append((describe(mod), tuple(output.shape[1:]), count))

        hooks.append(module.register_forward_hook(hook))
    with torch.no_grad():
        model(torch.zeros(1, channels, image_size, image_size))
    for h in hooks:
        h.remove()
    total = sum(p.numel() for p in model.parameters())
    return rows + [("total", None, total)]


def describe(module) -> str:
    """A layer as a report names it: `conv 3x3, 1 -> 32`, `dropout 0.2`."""
    from torch import nn

    if isinstance(module, nn.Conv2d):
        k = "x".join(map(str, module.kernel_size))
        return f"conv {k}, {module.in_channels} -> {module.out_channels}"
    if isinstance(module, nn.Linear):
        return f"linear {module.in_features} -> {module.out_features}"
    if isinstance(module, nn.Dropout):
        return f"dropout {module.p:.2g}"
    if isinstance(module, nn.MaxPool2d):
        return f"max pool {module.kernel_size}x{module.kernel_size}"
    names = {nn.BatchNorm2d: "batch norm", nn.ReLU: "ReLU", nn.Flatten: "flatten",
             nn.AdaptiveAvgPool2d: "global average pool"}
    return names.get(type(module), type(module).__name__)


def shape_text(shape: Optional[tuple]) -> str:
    return "" if shape is None else " x ".join(str(s) for s in shape)


def duration_text(seconds: float) -> str:
    """`42 s`, `12 min 5 s`, `3 h 20 min`."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"
