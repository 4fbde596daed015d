"""A CNN built from plain numbers."""

from __future__ import annotations

import torch
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


class PaddedTwin:
    """A `build_cnn` net with its conv blocks' channel counts rounded up, computing the same
    function: the extra channels' weights start at zero and stay there.

    An extra output channel of a conv is all zeros, so its batch norm gives its shift (zero),
    and the next layer's weights on it are zero: its gradients are zero, and so are every
    optimizer's updates, weight decay included. oneDNN's convolutions are fastest when the
    channel count fills the CPU's vectors: on an AVX-512 Xeon, an epoch of a depth-3 net on
    16-pixel digits took 108 ms at width 11 and 62 ms padded to 16; 137 and 104 ms at width
    19, 168 and 102 ms at width 27 padded to 32 (best of 2, side by side). From 32 channels on
    the next multiple of 16 was no faster (width 33 took 190 ms, 48 took 202 ms).

    `net` is what trains (the original itself when nothing is padded); `to_net` and
    `from_net` turn a state dict (weights, or an optimizer's moments) between the original's
    shapes and the net's, so that checkpoints and saved weights never show the padding."""

    def __init__(self, model: nn.Sequential, multiple: int, up_to: int = 32):
        self.original = model
        self.shapes = {k: v.shape for k, v in model.state_dict().items()}
        self.names = [name for name, _ in model.named_parameters()]  # the optimizer's order
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        self.width = self.net_width = convs[0].out_channels if convs else 0
        if _is_plain_cnn(model, self.width) and multiple > 1 and self.width % multiple \
                and self.width < up_to:
            self.net_width = -(-self.width // multiple) * multiple
        self.net = model if self.net_width == self.width else self._widened(model)
        self.net_shapes = {k: v.shape for k, v in self.net.state_dict().items()}
        if self.net is not model:
            self.net.load_state_dict(self.to_net(model.state_dict()))

    def _widened(self, model: nn.Sequential) -> nn.Sequential:
        cells = model[-1].in_features // self.width  # pixels of the last feature map
        layers = []
        for m in model:
            if isinstance(m, nn.Conv2d):
                inputs = m.in_channels if m is model[0] else self.net_width
                m = nn.Conv2d(inputs, self.net_width, 3, padding=1, bias=False)
            elif isinstance(m, nn.BatchNorm2d):
                m = nn.BatchNorm2d(self.net_width)
            elif isinstance(m, nn.Linear):
                m = nn.Linear(self.net_width * cells, m.out_features)
            layers.append(m)
        net = nn.Sequential(*layers).to(next(model.parameters()).device)
        return net.train(model.training)

    def region(self, key: str, t: torch.Tensor) -> torch.Tensor:
        """The view of a net-shaped tensor that holds the original's values, in the original's
        shape (the classifier's weight as classes x channels x pixels)."""
        shape = self.shapes[key]
        if t.shape == shape:
            return t
        if t.dim() == 2:  # the classifier sees channels x pixels features
            return t.view(t.shape[0], self.net_width, -1)[:, :self.width]
        return t[tuple(slice(0, n) for n in shape)]

    def to_net(self, state: dict) -> dict:
        """An original-shaped state dict in the net's shapes, the padding zero."""
        return self._each(state, self._pad)

    def from_net(self, state: dict) -> dict:
        """A net-shaped state dict in the original's shapes."""
        return self._each(state, self._unpad)

    def optimizer_to_net(self, saved: dict) -> dict:
        return self._each_moment(saved, self._pad)

    def optimizer_from_net(self, saved: dict) -> dict:
        return self._each_moment(saved, self._unpad)

    def _pad(self, key: str, t: torch.Tensor) -> torch.Tensor:
        out = t.new_zeros(self.net_shapes[key])
        region = self.region(key, out)
        region.copy_(t.reshape(region.shape))
        return out

    def _unpad(self, key: str, t: torch.Tensor) -> torch.Tensor:
        return self.region(key, t).reshape(self.shapes[key]).clone()

    def _each(self, state: dict, convert) -> dict:
        if self.net is self.original:
            return state
        return {key: convert(key, t) for key, t in state.items()}

    def _each_moment(self, saved: dict, convert) -> dict:
        """An optimizer state dict with each parameter's moments converted; step counts and
        other scalars stay as they are."""
        if self.net is self.original:
            return saved
        state = {}
        for index, entry in saved["state"].items():
            key = self.names[index]
            state[index] = {name: convert(key, t) if torch.is_tensor(t) and t.dim() else t
                            for name, t in entry.items()}
        return {**saved, "state": state}

    def copy_back(self) -> None:
        """Write the net's weights into the original."""
        if self.net is not self.original:
            self.original.load_state_dict(self.from_net(self.net.state_dict()))


def _is_plain_cnn(model: nn.Module, width: int) -> bool:
    """Whether `model` is a net as build_cnn makes them: the only kind PaddedTwin widens."""
    kinds = (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.ReLU, nn.Flatten, nn.Dropout, nn.Linear)
    return (isinstance(model, nn.Sequential) and len(model) > 0
            and isinstance(model[0], nn.Conv2d) and isinstance(model[-1], nn.Linear)
            and all(isinstance(m, kinds) for m in model)
            and all(m.out_channels == width for m in model if isinstance(m, nn.Conv2d)))
