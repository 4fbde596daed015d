"""How long a trial trains and how its learning rate moves over that length.

A trial's length is counted in optimizer steps: `train.epochs = "auto"` gives every trial of a
study the same maximum, enough steps for a small CNN to finish learning, so a folder of a few
hundred photos trains many epochs and a large dataset fewer. The pruner stops poor trials
early; the best reach the maximum. The learning rate warms up, holds, then decays to zero at
that maximum ("wsd"): while it holds, trials are compared by the pruner at equal footing, and
only a trial that survives to the end gets the decay that finishes its learning.

Knows nothing of Optuna or torch: plain numbers in, plain numbers out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

SCHEDULES = ("constant", "wsd")
# wsd: the share of the steps spent warming up from WARMUP_START of the rate, and the share
# after which the rate decays linearly to zero. The decay starts after the hyperband pruner's
# last rung below the maximum (a third of it, at reduction factor 3).
WARMUP_SHARE, WARMUP_START, DECAY_FROM = 0.03, 0.1, 0.6

# "auto": each trial's maximum is about AUTO_STEPS optimizer steps, rounded up to whole
# epochs and kept within MIN_EPOCHS..MAX_EPOCHS (chosen on the panel: BENCHMARKS.md).
AUTO_STEPS, MIN_EPOCHS, MAX_EPOCHS = 1200, 10, 100


def steps_per_epoch(n_images: int, batch_size: int) -> int:
    """Optimizer steps in one pass over n_images: a last batch of one image is skipped (batch
    norm cannot train on it), as train.train_epoch does."""
    full, rest = divmod(n_images, batch_size)
    return full + (rest >= 2)


def auto_epochs(n_images: int, batch_size: int) -> int:
    """The maximum epochs of `train.epochs = "auto"` for n_images training images."""
    per_epoch = max(1, steps_per_epoch(n_images, batch_size))
    return max(MIN_EPOCHS, min(MAX_EPOCHS, math.ceil(AUTO_STEPS / per_epoch)))


def budget_epochs(epochs: int, seconds_per_epoch: float, budget: float,
                  share: float = 0.25) -> int:
    """At most `epochs`, and few enough that one trial trained to the end takes at most
    `share` of a time budget of `budget` seconds (the study then finds and finishes its
    best configuration in time); at least 3, so that the pruner has rungs to judge at."""
    if budget <= 0 or seconds_per_epoch <= 0:
        return epochs
    return max(3, min(epochs, int(share * budget / seconds_per_epoch)))


def lr_factor(step: int, total: int, schedule: str) -> float:
    """The learning rate at optimizer step `step` (0-based) of `total`, as a share of the
    trial's rate."""
    if schedule == "constant" or total <= 0:
        return 1.0
    warmup = max(1, round(WARMUP_SHARE * total))
    if step < warmup:
        return WARMUP_START + (1 - WARMUP_START) * step / warmup
    decay_from = max(warmup, round(DECAY_FROM * total))
    if step < decay_from:
        return 1.0
    return max(0.0, (total - step) / max(1, total - decay_from))


@dataclass(frozen=True)
class LrPlan:
    """The learning rate of every step of a trial: `lr` shaped by `schedule` over
    `total` steps (see lr_factor)."""

    lr: float
    schedule: str
    total: int

    @property
    def varies(self) -> bool:
        return self.schedule != "constant"

    def at(self, step: int) -> float:
        return self.lr * lr_factor(step, self.total, self.schedule)

    def record(self) -> dict:
        """What a checkpoint keeps, so that a resumed trial goes on along the same curve."""
        return {"name": self.schedule, "lr": self.lr, "total_steps": self.total}


def resumed_plan(plan: LrPlan, saved: Optional[dict]) -> LrPlan:
    """The checkpoint's learning-rate curve where it has one: a trial goes on along the curve
    it started on, even if this run would have drawn it over another number of steps. A
    checkpoint from before schedules trained at a constant rate."""
    if not isinstance(saved, dict):
        return LrPlan(plan.lr, "constant", plan.total)
    return LrPlan(float(saved["lr"]), str(saved["name"]), int(saved["total_steps"]))


@dataclass(frozen=True)
class Steps:
    """How an epoch's steps train: the learning rate of each (none: the optimizer's as it
    is), counting from step `first` of the trial, and the loss's label smoothing."""

    plan: Optional[LrPlan] = None
    first: int = 0
    label_smoothing: float = 0.0

    def set_lr(self, optimizer, i: int) -> None:
        """Before the epoch's i-th step (0-based): every parameter group's rate (the fused
        optimizer and torch.optim's read it there at each step)."""
        if self.plan is not None and self.plan.varies:
            for group in optimizer.param_groups:
                group["lr"] = self.plan.at(self.first + i)
