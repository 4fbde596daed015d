"""Numbers the report states about its results: intervals, ties, chance level, the trend at
a trial's end, the model's layers, the epochs, the run. Plain values in, plain values out;
nothing here draws or writes."""

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


# A training loss counts as still falling while its fitted fall per epoch is more than this
# share of ln(classes), the loss of a model that guesses: 0.023 per epoch for 10 classes. A
# loss shrinking by ever less towards 0 on memorised images does not count.
LOSS_FALL = 0.01


def trend(values: list) -> tuple:
    """(epochs, slope per epoch) of the least-squares line through the last third of
    `values`, at least 3 of them; (0, 0.0) for fewer than 3: a trend, not the last step."""
    if len(values) < 3:
        return 0, 0.0
    k = max(3, math.ceil(len(values) / 3))
    ys = values[-k:]
    mean_x, mean_y = (k - 1) / 2, sum(ys) / k
    spread = sum((x - mean_x) ** 2 for x in range(k))
    return k, sum((x - mean_x) * (y - mean_y) for x, y in enumerate(ys)) / spread


def loss_falling(train_loss: list, classes: int) -> bool:
    """Whether the training loss was still falling at the end: its fitted fall per epoch over
    the last epochs is more than LOSS_FALL of the loss of guessing (ln classes)."""
    k, slope = trend(train_loss)
    return k > 0 and classes >= 2 and -slope > LOSS_FALL * math.log(classes)


def accuracy_rising(val_acc: list, n: int) -> bool:
    """Whether the validation accuracy was still rising at the end: its fitted line over the
    last epochs rises more than one of the n validation images across them, and its slope is
    above the slope's standard error from the binomial noise of n images (so two equal
    epochs after a rise, or one image lost after a fast rise, are read as the trend says)."""
    k, slope = trend(val_acc)
    if k == 0 or n <= 0:
        return False
    p = min(max(sum(val_acc[-k:]) / k, 1 / n), 1 - 1 / n)
    error = math.sqrt(p * (1 - p) / n) / math.sqrt(k * (k * k - 1) / 12)
    return slope * (k - 1) > 1.0 / n and slope > error


def still_improving(history: dict, n: int, classes: int) -> bool:
    """Whether a trial was still learning when its epochs ran out: its training loss still
    falling or its validation accuracy (of n images) still rising, fitted over its last
    epochs. The report's diagnosis and the next study's epochs both read this."""
    return (loss_falling(history.get("train_loss") or [], classes)
            or accuracy_rising(history.get("val_acc") or [], n))


def near_chance(accuracy: float, classes: int, n: int) -> bool:
    """Whether an accuracy on n images is no better than guessing among `classes`: chance
    level (1 / classes) reaches into its 95% Wilson interval."""
    return classes >= 2 and n > 0 and wilson(accuracy, n)[0] <= 1.0 / classes


def against_chance(accuracy: float, classes: int, n: int) -> str:
    """`0.343, about 2.1 times chance level (0.167, 6 classes)`; near chance, that it is no
    better than guessing."""
    chance = 1.0 / classes
    level = f"chance level ({chance:.3f}, {classes} classes)"
    if near_chance(accuracy, classes, n):
        return (f"{accuracy:.3f}, no better than guessing: its 95% interval reaches down to "
                f"{level}")
    return f"{accuracy:.3f}, about {accuracy / chance:.1f} times {level}"


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
