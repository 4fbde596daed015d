"""Per-batch augmentation on the device: random crops with reflected padding and horizontal
flips, as whole-batch index arithmetic on the uint8 images.

An epoch's draws (each image's crop offset and flip) are taken at once from the trial's own
generator, right after its shuffle, so that a trial resumed from its checkpoint (which keeps
the generator's state) draws exactly what an uninterrupted one would. Nothing runs per image
in Python, and no DataLoader is involved: a crop and a flip are one gather of the batch's
pixels through per-image row and column indices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass(frozen=True)
class Augment:
    """What a batch undergoes: `pad` (pixels of reflected padding around a crop of the
    image's own size; 0 crops nothing) and `flip` (mirror half of the images, left to
    right)."""

    pad: int = 0
    flip: bool = False

    @classmethod
    def named(cls, name: str, image_size: int) -> "Augment":
        """From a study's augment value ("none", "crop", "flip", "crop+flip"): crops pad by an
        eighth of the image, as the usual CIFAR recipe pads 32 pixels by 4."""
        parts = set(name.split("+")) if name != "none" else set()
        return cls(pad=max(1, image_size // 8) if "crop" in parts else 0, flip="flip" in parts)

    @property
    def active(self) -> bool:
        return self.pad > 0 or self.flip

    def draw(self, n: int, gen: torch.Generator) -> Optional["Draws"]:
        """The draws for an epoch of `n` images, on the CPU; None when nothing is drawn (the
        generator then advances exactly as without augmentation)."""
        if not self.active:
            return None
        shift = torch.randint(0, 2 * self.pad + 1, (2, n), generator=gen) - self.pad \
            if self.pad else torch.zeros((2, n), dtype=torch.long)
        flip = torch.randint(0, 2, (n,), generator=gen).bool() if self.flip \
            else torch.zeros(n, dtype=torch.bool)
        return Draws(shift[0], shift[1], flip)


@dataclass(frozen=True)
class Draws:
    """Per image of an epoch, in the order it is trained: row and column shift of the crop
    window (-pad..pad) and whether it is flipped."""

    dy: torch.Tensor
    dx: torch.Tensor
    flip: torch.Tensor

    def to(self, device: torch.device) -> "Draws":
        return Draws(self.dy.to(device), self.dx.to(device), self.flip.to(device))

    def part(self, start: int, stop: int) -> "Draws":
        return Draws(self.dy[start:stop], self.dx[start:stop], self.flip[start:stop])


def apply(xb: torch.Tensor, draws: Draws) -> torch.Tensor:
    """The batch (B, C, H, W) cropped and flipped image by image, in one gather; the result is
    channels-last, as the convolutions want it. Pixels the crop window takes from outside the
    image mirror those inside (reflect padding, the edge pixel not repeated)."""
    _, _, h, w = xb.shape
    rows = _reflect(torch.arange(h, device=xb.device) + draws.dy[:, None], h)
    cols = _reflect(torch.arange(w, device=xb.device) + draws.dx[:, None], w)
    cols = torch.where(draws.flip[:, None], w - 1 - cols, cols)
    batch = torch.arange(len(xb), device=xb.device)[:, None, None]
    # Advanced indices on both sides of the channel slice: the result is (B, H, W, C).
    return xb[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def _reflect(i: torch.Tensor, n: int) -> torch.Tensor:
    """Indices outside 0..n-1 mirrored back into it: -1 -> 1, n -> n-2 (valid for shifts up to
    n-1, far more than an eighth of the image)."""
    i = i.abs()
    return torch.where(i > n - 1, 2 * (n - 1) - i, i)
