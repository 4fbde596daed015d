"""Fit and evaluate a model from plain values; knows nothing of Optuna."""

from __future__ import annotations

import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import nn

from hpsearch.checkpoint import rng_state, set_rng_state


class DeviceError(ValueError):
    """The requested device does not exist on this machine."""


class Diverged(ArithmeticError):
    """The training loss became NaN or infinite, or blew up far past chance level."""

    def __init__(self, epoch: int, loss: float, chance: float):
        if math.isfinite(loss):
            why = (f"training loss {loss:.3g} in epoch {epoch} is over {DIVERGED_FACTOR:g} times "
                   f"chance level ({chance:.3f}): diverged")
        else:
            why = f"training loss became {loss} in epoch {epoch}: diverged"
        super().__init__(why)
        self.epoch = epoch


# A mean cross-entropy this many times that of a uniform guess (ln of the class count) means
# the weights are running away. Batch norm keeps such a run finite for a long time, so waiting
# for NaN would spend the whole trial on it.
DIVERGED_FACTOR = 100.0


@dataclass(frozen=True)
class FitSettings:
    epochs: int
    batch_size: int
    lr: float
    optimizer: str = "adam"  # adam | adamw | sgd (with Nesterov momentum 0.9)
    weight_decay: float = 0.0
    seed: int = 0  # initialisation and shuffling


@dataclass
class History:
    """Per-epoch scalars, small enough to live in a trial's user attributes."""

    train_loss: list = field(default_factory=list)
    train_acc: list = field(default_factory=list)
    val_loss: list = field(default_factory=list)
    val_acc: list = field(default_factory=list)
    epoch_seconds: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return {k: list(v) for k, v in vars(self).items()}


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA, then Apple's mps, then the CPU; an explicit device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"--device {name!r} is not a device; use auto, cpu, cuda, cuda:N or mps")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DeviceError(f"--device {name}: CUDA is not available on this machine; "
                              f"use --device cpu or auto")
        if device.index is not None and device.index >= count:
            raise DeviceError(f"--device {name}: this machine has {count} CUDA device(s), "
                              f"cuda:0..cuda:{count - 1}")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError("--device mps: Apple's mps is not available here; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"--device {name!r}: use auto, cpu, cuda, cuda:N or mps")
    return device


def configure_threads(workers: int = 1) -> int:
    """Give each worker process an equal share of the cores this process may use.

    Small CNNs gain nothing from inter-op parallelism, and oversubscribed cores (more threads
    than cores across workers) make every step slower.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = max(1, (cores or 1) // max(1, workers))
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass  # already fixed by earlier parallel work in this process; harmless
    return threads


def make_optimizer(model: nn.Module, s: FitSettings, fused: bool = False) -> torch.optim.Optimizer:
    """`fused` runs the whole update as one kernel (CPU and CUDA): a quarter less time per
    Adam step for hpsearch's small nets on the CPU, where per-parameter kernels dominate."""
    kwargs = {"lr": s.lr, "weight_decay": s.weight_decay, **({"fused": True} if fused else {})}
    if s.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), momentum=0.9, nesterov=True, **kwargs)
    cls = torch.optim.AdamW if s.optimizer == "adamw" else torch.optim.Adam
    return cls(model.parameters(), **kwargs)


def autocast_for(device: torch.device):
    """Mixed precision on CUDA (bf16 from compute capability 8.0, fp16 with a scaler before);
    full precision elsewhere. Returns (context factory, GradScaler)."""
    if device.type != "cuda":
        return nullcontext, torch.amp.GradScaler("cpu", enabled=False)
    # bf16 is emulated (slow) below 8.0 even where is_bf16_supported() says True.
    bf16 = torch.cuda.get_device_capability(device)[0] >= 8
    dtype = torch.bfloat16 if bf16 else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=not bf16)
    return (lambda: torch.autocast("cuda", dtype=dtype)), scaler


EpochHook = Callable[[int, History], None]
StateHook = Callable[[int, dict], None]


def fit(model: nn.Module, data, s: FitSettings, device: torch.device,
        on_epoch_end: Optional[EpochHook] = None, resume: Optional[dict] = None,
        save_state: Optional[StateHook] = None) -> History:
    """Train for `s.epochs` epochs on data.x_train, scoring data.x_val after each.

    `save_state(epoch, state)` receives everything needed to go on after that epoch (model,
    optimizer, scaler, random streams, history); `resume` is such a state, and training
    continues from the epoch after it with the same random draws as an uninterrupted run.
    `on_epoch_end(epoch, history)` runs after every epoch (1-based) and may raise to stop early.
    Raises Diverged when the training loss does.
    """
    # channels-last lets oneDNN and cuDNN pick their fast convolution kernels (30% per epoch
    # on a 2-core CPU for a depth-3 width-32 net on 16-pixel digits).
    model.to(device, memory_format=torch.channels_last)
    optimizer = make_optimizer(model, s, fused=device.type in ("cpu", "cuda"))
    autocast, scaler = autocast_for(device)
    gen = torch.Generator(device="cpu").manual_seed(s.seed)
    history, first = History(), 1
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scaler.load_state_dict(resume["scaler"])
        set_rng_state(resume["rng"], gen)
        history, first = History(**resume["history"]), resume["epoch"] + 1
    chance = math.log(max(2, len(data.classes)))
    for epoch in range(first, s.epochs + 1):
        start = time.perf_counter()
        loss, acc = train_epoch(model, data.x_train, data.y_train, optimizer, scaler, autocast,
                                s.batch_size, gen)
        if not math.isfinite(loss) or loss > DIVERGED_FACTOR * chance:
            raise Diverged(epoch, loss, chance)
        val_loss, val_acc = evaluate(model, data.x_val, data.y_val)
        for key, value in (("train_loss", loss), ("train_acc", acc), ("val_loss", val_loss),
                           ("val_acc", val_acc)):
            getattr(history, key).append(round(value, 6))
        history.epoch_seconds.append(round(time.perf_counter() - start, 4))
        if save_state is not None:
            save_state(epoch, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                               "scaler": scaler.state_dict(), "rng": rng_state(gen),
                               "history": history.as_dict()})
        if on_epoch_end is not None:
            on_epoch_end(epoch, history)
    return history


def train_epoch(model, x, y, optimizer, scaler, autocast, batch_size, gen) -> tuple:
    """One pass over shuffled (x, y) by indexing; returns (mean loss, accuracy)."""
    model.train()
    n = len(y)
    order = torch.randperm(n, generator=gen).to(x.device)
    # Sums stay on the device: reading them every step would stall a GPU.
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device, dtype=torch.long)
    seen = 0
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        if len(idx) < 2:  # batch norm cannot train on a single image
            break
        xb, yb = x[idx], y[idx]
        with autocast():
            logits = model(xb)
            loss = nn.functional.cross_entropy(logits, yb)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        loss_sum += loss.detach().float() * len(idx)
        correct += (logits.detach().argmax(1) == yb).sum()
        seen += len(idx)
    return loss_sum.item() / seen, correct.item() / seen


@torch.inference_mode()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024):
    """(mean loss, accuracy) over (x, y) in large batches."""
    model.eval()
    loss_sum, correct = 0.0, 0
    for start in range(0, len(y), batch_size):
        logits = model(x[start:start + batch_size]).float()
        yb = y[start:start + batch_size]
        loss_sum += nn.functional.cross_entropy(logits, yb, reduction="sum").item()
        correct += (logits.argmax(1) == yb).sum().item()
    return loss_sum / len(y), correct / len(y)
