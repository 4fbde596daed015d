"""A CNN built from plain numbers."""

from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import nn


# Growth stops widening blocks here (or at `width`, if wider): a depth-4 net of width 64 that
# doubles ends at 256 channels, not 512, which would quadruple the last block's work.
WIDTH_CAP = 256


def block_widths(depth: int, width: int, growth: int = 1) -> list:
    """Channels per conv block: `width` times `growth` per block, up to WIDTH_CAP. Growth 1
    (every block as wide) suits small images; 2 (as in VGG) gives the deeper blocks of
    larger images room for more features where their maps are small."""
    cap = max(width, WIDTH_CAP)
    return [min(width * growth ** i, cap) for i in range(depth)]


def build_cnn(*, in_channels: int, num_classes: int, image_size: int, depth: int, width: int,
              dropout: float = 0.0, head: str = "flatten", growth: int = 1) -> nn.Sequential:
    """`depth` blocks of conv 3x3 -> batch norm -> ReLU -> 2x2 max pool, then the head:
    dropout and a linear classifier on the flattened feature map ("flatten") or on its
    per-channel means ("gap", global average pooling).

    Pooling stops once the feature map is 1 pixel wide, so any depth fits any image size.
    Flatten sees every position: a shallow net keeps the spatial layout that tells a 6 from a
    9. Global pooling keeps the classifier small whatever the image size, and a shape
    counts wherever it is in the photo.

    The pool runs before the ReLU: max and ReLU commute, so the function and its gradients
    are the same, and the ReLU touches a quarter of the values. The layers keep their
    positions, so weights saved in the other order load unchanged.
    """
    layers: list = []
    size, channels = image_size, in_channels
    for out in block_widths(depth, width, growth):
        # No conv bias: the batch norm that follows has its own shift.
        layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out)]
        if size >= 2:
            layers.append(nn.MaxPool2d(2))
            size //= 2
        layers.append(nn.ReLU(inplace=True))
        channels = out
    if head == "gap":
        layers.append(nn.AdaptiveAvgPool2d(1))
        size = 1
    layers += [nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels * size * size, num_classes)]
    return nn.Sequential(*layers)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def cpu_state_dict(model: nn.Module) -> dict:
    """The weights as plain contiguous CPU tensors: loadable anywhere, channels-last or not,
    with `torch.load(..., weights_only=True)`."""
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def padded_width(width: int, multiple: int) -> int:
    """`width` rounded up to a multiple of `multiple`."""
    return -(-width // multiple) * multiple


class PaddedNet:
    """A `build_cnn` net trained with its blocks' channels padded to `multiple`, computing
    the same function as the net itself.

    oneDNN's CPU convolutions are fastest when a channel count fills the processor's vectors.
    The padded channels' weights, batch-norm scales and shifts start at zero; their outputs
    are zero, and so are their gradients (the next layer's weights on them are zero) and every
    optimizer's updates, weight decay included: they stay zero. What differs from the plain
    net is the order of the float sums, and dropout's masks, drawn over the padded features.

    `net` is what trains (the model itself when nothing is padded). `pad` and `unpad` turn a
    state dict (weights, or an optimizer's) between the model's shapes and the net's, so that
    checkpoints and saved weights never show the padding; `copy_back` writes the trained
    weights into the model."""

    def __init__(self, model: nn.Sequential, multiple: int, below: Optional[int] = None):
        """Pads to `multiple` channels, only widths under `below` when it is given."""
        self.model = model
        self.shapes = {k: v.shape for k, v in model.state_dict().items()}
        self.names = [name for name, _ in model.named_parameters()]  # the optimizer's order
        convs = [m for m in model if isinstance(m, nn.Conv2d)]
        self.width = convs[0].out_channels if convs else 0
        self.net_width = self.width
        if multiple > 1 and (below is None or self.width < below) and \
                _is_plain_cnn(model, self.width):
            self.net_width = padded_width(self.width, multiple)
        self.net = model if self.net_width == self.width else self._widened()
        self.net_shapes = {k: v.shape for k, v in self.net.state_dict().items()}
        if self.net is not model:
            self.net.load_state_dict(self.pad(model.state_dict()))

    def _widened(self) -> nn.Sequential:
        """The wider net, its own modules, every value still to be loaded, on the model's
        device. It is made on the CPU with its initial draws undone (`fork_rng`), so the
        random streams the trial's seed fixed go on as if it had never been made; not on the
        meta device: moving a meta net with `to_empty` imports sympy, a noticeable part of the
        first trial in every process."""
        layers, width = [], self.net_width
        device = next(self.model.parameters()).device
        with torch.random.fork_rng(devices=[]):
            for m in self.model:
                if isinstance(m, nn.Conv2d):
                    inputs = width if layers else m.in_channels
                    m = nn.Conv2d(inputs, width, 3, padding=1, bias=False)
                elif isinstance(m, nn.BatchNorm2d):
                    m = nn.BatchNorm2d(width, eps=m.eps, momentum=m.momentum)
                elif isinstance(m, nn.Linear):
                    m = nn.Linear(m.in_features // self.width * width, m.out_features,
                                  bias=m.bias is not None)
                else:
                    m = copy.deepcopy(m)  # pooling, ReLU, dropout: no values, but a train flag
                layers.append(m)
        return nn.Sequential(*layers).to(device).train(self.model.training)

    def _region(self, key: str, t: torch.Tensor) -> torch.Tensor:
        """The part of a net-shaped tensor that holds the model's values, in its layout (the
        classifier's weight as classes x channels x pixels)."""
        shape = self.shapes[key]
        if t.dim() == 2:  # the classifier: flattened channels x pixels
            return t.view(t.shape[0], self.net_width, -1)[:, :self.width]
        return t[tuple(slice(0, n) for n in shape)]

    def pad(self, state: dict) -> dict:
        """A model-shaped state dict (weights, or an optimizer's) in the net's shapes, the
        padding zero."""
        def widen(key, t):
            out = t.new_zeros(self.net_shapes[key])
            region = self._region(key, out)
            region.copy_(t.reshape(region.shape))
            return out

        return self._each(state, widen)

    def unpad(self, state: dict) -> dict:
        """A net-shaped state dict (weights, or an optimizer's) in the model's shapes."""
        return self._each(state, lambda key, t: self._region(key, t).reshape(self.shapes[key])
                          .clone())

    def _each(self, state: dict, convert) -> dict:
        if self.net is self.model:
            return state
        if "param_groups" in state:  # an optimizer's: moments by parameter index
            named = _param_names(state["param_groups"], self.names)
            moments = {i: {name: convert(named[i], t) if _is_array(t) else t
                           for name, t in entry.items()}
                       for i, entry in state["state"].items()}
            return {**state, "state": moments}
        return {key: convert(key, t) if _is_array(t) else t for key, t in state.items()}

    def copy_back(self) -> None:
        """The net's weights and train/eval mode into the model."""
        if self.net is not self.model:
            self.model.load_state_dict(self.unpad(self.net.state_dict()))
            self.model.train(self.net.training)


def _param_names(groups: list, names: list) -> dict:
    """{index: parameter name} of an optimizer's state dict: from its groups' "param_names"
    (optim.decay_groups gives them), else `names`, the model's order, which a state of one
    group without names follows."""
    if all("param_names" in g for g in groups):
        return {i: name for g in groups for i, name in zip(g["params"], g["param_names"])}
    return dict(enumerate(names))


def _is_array(t) -> bool:
    """A tensor with dimensions: a weight or a moment, not a step count or a batch count."""
    return torch.is_tensor(t) and t.dim() > 0


def _is_plain_cnn(model: nn.Module, width: int) -> bool:
    """Whether `model` is a net as build_cnn makes them, the only kind PaddedNet widens."""
    kinds = (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.ReLU, nn.AdaptiveAvgPool2d, nn.Flatten,
             nn.Dropout, nn.Linear)
    return (isinstance(model, nn.Sequential) and len(model) > 1
            and isinstance(model[0], nn.Conv2d) and isinstance(model[-1], nn.Linear)
            and all(isinstance(m, kinds) for m in model)
            and all(m.out_channels == width and m.kernel_size == (3, 3) and m.padding == (1, 1)
                    and m.stride == (1, 1) and m.dilation == (1, 1) and m.groups == 1
                    and m.bias is None and m.padding_mode == "zeros"
                    for m in model if isinstance(m, nn.Conv2d))
            and all(m.affine and m.track_running_stats
                    for m in model if isinstance(m, nn.BatchNorm2d))
            and all(p.requires_grad for p in model.parameters()))
