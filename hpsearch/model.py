"""A CNN built from plain numbers."""

from __future__ import annotations

from torch import nn


def block_widths(depth: int, width: int) -> list:
    """Channels per conv block: `width` in every block. Doubling per block (as in VGG) made a
    depth-4, width-64 net three times slower on 16-pixel images for no accuracy on digits."""
    return [width] * depth


def build_cnn(*, in_channels: int, num_classes: int, image_size: int, depth: int, width: int,
              dropout: float = 0.0) -> nn.Sequential:
    """`depth` blocks of conv 3x3 -> batch norm -> ReLU -> 2x2 max pool, then dropout and a
    linear classifier on the flattened feature map.

    Pooling stops once the feature map is 1 pixel wide, so any depth fits any image size. The
    classifier sees every position (no global average pooling): a shallow net keeps the
    spatial layout that tells a 6 from a 9.

    The pool runs before the ReLU: max and ReLU commute, so the function and its gradients
    are the same, and the ReLU touches a quarter of the values. The layers keep their
    positions, so weights saved in the other order load unchanged.
    """
    layers: list = []
    size, channels = image_size, in_channels
    for out in block_widths(depth, width):
        # No conv bias: the batch norm that follows has its own shift.
        layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out)]
        if size >= 2:
            layers.append(nn.MaxPool2d(2))
            size //= 2
        layers.append(nn.ReLU(inplace=True))
        channels = out
    layers += [nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels * size * size, num_classes)]
    return nn.Sequential(*layers)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def cpu_state_dict(model: nn.Module) -> dict:
    """The weights as plain contiguous CPU tensors: loadable anywhere, channels-last or not,
    with `torch.load(..., weights_only=True)`."""
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
