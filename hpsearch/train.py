"""Fit and evaluate a model from plain values; knows nothing of Optuna."""

from __future__ import annotations

import gc
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import nn

from hpsearch import interrupts
from hpsearch.augment import Augment, apply
from hpsearch.batches import Rows
from hpsearch.checkpoint import rng_state, set_rng_state
from hpsearch.data import device_free_bytes
from hpsearch.errors import DeviceError, OutOfMemory, allocation_failed, out_of_memory
from hpsearch.model import PaddedNet
from hpsearch.optim import FusedOptimizer, decay_groups
from hpsearch.precision import (NormStats, Precision, choose_precision, cpu_vendor,
                                set_tf32)
from hpsearch.schedule import LrPlan, Steps, resumed_plan, steps_per_epoch


TRAINING_ADVICE = "a smaller train.batch_size or width range fits"
CUDNN_BENCHMARK = False  # see fit; `make gpu-check` measures it on and off


class Diverged(ArithmeticError):
    """The training loss became NaN or infinite, or blew up far past chance level; or the
    validation loss became NaN or infinite."""

    def __init__(self, epoch: int, loss: float, chance: float, what: str = "training loss"):
        if math.isfinite(loss):
            why = (f"{what} {loss:.3g} in epoch {epoch} is over {DIVERGED_FACTOR:g} times "
                   f"chance level ({chance:.3f}): diverged")
        else:
            why = f"{what} became {loss} in epoch {epoch}: diverged"
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
    decay_on: str = "all"  # all | weights (not batch norm, not biases): see optim.decay_groups
    seed: int = 0  # initialisation, shuffling and augmentation
    precision: str = "auto"  # auto | fp32 | bf16 | fp16; see choose_precision
    augment: str = "none"  # none | crop | flip | crop+flip (see augment.py)
    schedule: str = "constant"  # the learning rate over the steps: see schedule.lr_factor
    label_smoothing: float = 0.0  # share of the target spread over the other classes


@dataclass
class History:
    """Per-epoch scalars, small enough to live in a trial's user attributes."""

    train_loss: list = field(default_factory=list)
    train_acc: list = field(default_factory=list)
    val_loss: list = field(default_factory=list)
    val_acc: list = field(default_factory=list)
    epoch_seconds: list = field(default_factory=list)

    def add(self, train_loss: float, train_acc: float, val_loss: float, val_acc: float,
            seconds: float) -> None:
        """One epoch's scalars, rounded as they are stored."""
        for key, value in (("train_loss", train_loss), ("train_acc", train_acc),
                           ("val_loss", val_loss), ("val_acc", val_acc)):
            getattr(self, key).append(round(value, 6))
        self.epoch_seconds.append(round(seconds, 4))

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


def channel_padding(device: torch.device) -> tuple:
    """(multiple, below): fit pads conv channel counts under `below` (all, if None) up to a
    multiple of `multiple` (see model.PaddedNet), the float32 lanes of the vectors oneDNN's
    CPU kernels use; (1, None) pads nothing. On AVX-512 Intel CPUs, blocks of 32 channels and
    more were no faster padded. GPUs and mps train the net as it is. Figures: BENCHMARKS.md."""
    if device.type != "cpu":
        return 1, None
    capability = torch.backends.cpu.get_cpu_capability()
    if capability.startswith("AVX512"):
        return 16, None if "AuthenticAMD" in cpu_vendor() else 32
    return (8, None) if capability == "AVX2" else (1, None)


def make_optimizer(model: nn.Module, s: FitSettings, device: Optional[torch.device] = None):
    """On the CPU and CUDA, hpsearch's own optimizer runs the whole update as one kernel and
    spares the process torch.optim's import of torch's compiler (see hpsearch.optim);
    elsewhere (mps), or without a device (the recipe), torch.optim's optimizer runs."""
    groups = decay_groups(model.named_parameters(), s.weight_decay, s.decay_on)
    if device is not None and device.type in ("cpu", "cuda"):
        return FusedOptimizer(groups, s.optimizer, lr=s.lr, weight_decay=s.weight_decay)
    kwargs = {"lr": s.lr, "weight_decay": s.weight_decay}
    if s.optimizer == "sgd":
        return torch.optim.SGD(groups, momentum=0.9, nesterov=True, **kwargs)
    cls = torch.optim.AdamW if s.optimizer == "adamw" else torch.optim.Adam
    return cls(groups, **kwargs)


def release_device_memory() -> None:
    """Hand the GPU (or mps) memory of a finished trial back, so that the next trial, of
    another size, starts from an empty cache instead of a fragmented one. Nothing to do on
    the CPU."""
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    mps = torch.backends.mps.is_available()
    if cuda or mps:
        gc.collect()  # the finished trial's exception traceback may hold its tensors
    if cuda:
        torch.cuda.empty_cache()
    if mps:
        torch.mps.empty_cache()


EpochHook = Callable[[int, History], None]
StateHook = Callable[[int, dict], None]


def fit(model: nn.Module, data, s: FitSettings, device: torch.device,
        on_epoch_end: Optional[EpochHook] = None, resume: Optional[dict] = None,
        save_state: Optional[StateHook] = None) -> History:
    """Train for `s.epochs` epochs on data.x_train, scoring data.x_val after each.

    `on_epoch_end(epoch, history)` runs after every epoch (1-based) and may raise to stop early.
    Then, unless it was the last epoch, `save_state(epoch, state)` receives everything needed
    to go on after that epoch (model, optimizer, scaler, random streams, history); `resume` is
    such a state, and training continues from the epoch after it with the same random draws as
    an uninterrupted run (on the same kind of processor: the padding and the precision `auto`
    takes depend on it). The model receives the trained weights when fit returns or raises;
    during the epochs they live in the padded net, so a hook must not read them from `model`.
    Raises Diverged when the training loss does.
    """
    padded, net, optimizer = training_net(model, s, device)
    if device.type == "cuda":
        # Off until gpu-check's row weighs its per-shape search (paid again for every depth,
        # width and batch size a study samples) against what it gains. Not for exactness: on a
        # GPU a resumed trial repeats the uninterrupted one only closely either way, since
        # cuDNN's default backward kernels are not deterministic (only the CPU repeats it).
        torch.backends.cudnn.benchmark = CUDNN_BENCHMARK
    precision = choose_precision(device, s.precision)
    if device.type == "cuda":
        set_tf32(precision.name)
    # Sized once: a size that changed with the free memory would give cuDNN new shapes.
    eval_size = eval_batch_size(net, data.image_size, device, _bytes(precision.input_dtype))
    scaler = precision.scaler
    gen = torch.Generator(device="cpu").manual_seed(s.seed)
    plan = LrPlan(s.lr, s.schedule, s.epochs * steps_per_epoch(len(data.y_train),
                                                               s.batch_size))
    history, first = History(), 1
    if resume is not None:
        net.load_state_dict(padded.pad(resume["model"]))
        optimizer.load_state_dict(padded.pad(resume["optimizer"]))
        if scaler.is_enabled() and resume.get("scaler"):
            # An fp16 checkpoint's scale goes on; one written in bf16, fp32 or on the CPU has
            # none ({}), and an fp16 run resumed in another precision needs none: the scaler
            # then starts afresh (the objective says so).
            scaler.load_state_dict(resume["scaler"])
        set_rng_state(resume["rng"], gen, device)
        history, first = History(**resume["history"]), resume["epoch"] + 1
        plan = resumed_plan(plan, resume.get("schedule"))
    try:
        for epoch in range(first, s.epochs + 1):
            fit_epoch(net, data, s, optimizer, precision, gen, epoch, history, eval_size, plan)
            if on_epoch_end is not None:
                on_epoch_end(epoch, history)
            # Saved after the hook, so that an epoch that ends the trial (the last, or one the
            # hook stops at) writes no checkpoint that would only be deleted.
            if save_state is not None and epoch < s.epochs:
                save_state(epoch, training_state(padded, net, optimizer, precision, gen,
                                                 history, device, plan))
    finally:
        padded.copy_back()  # the caller's model holds what was trained, however it ended
    return history


def training_net(model: nn.Module, s: FitSettings, device: torch.device) -> tuple:
    """(padded, net, optimizer): the model on the device, the net that trains in its place and
    the net's optimizer. Channels-last lets oneDNN and cuDNN pick their fast convolution
    kernels, and so do channel counts that fill the CPU's vectors: `net` is the model with its
    channels padded to them (see channel_padding)."""
    model.to(device, memory_format=torch.channels_last)
    padded = PaddedNet(model, *channel_padding(device))
    net = padded.net.to(device, memory_format=torch.channels_last)
    return padded, net, make_optimizer(net, s, device)


def training_state(padded: PaddedNet, net: nn.Module, optimizer, precision: Precision, gen,
                   history: History, device: torch.device, plan: LrPlan) -> dict:
    """What a checkpoint needs to go on after an epoch, in the model's own shapes (the padding
    is this process's business), with the precision and device it was written in."""
    return {"model": padded.unpad(net.state_dict()),
            "optimizer": padded.unpad(optimizer.state_dict()),
            "scaler": precision.scaler.state_dict(), "precision": precision.name,
            "device": device.type, "rng": rng_state(gen, device), "history": history.as_dict(),
            "schedule": plan.record()}


def fit_epoch(net: nn.Module, data, s: FitSettings, optimizer, precision: Precision, gen,
              epoch: int, history: History, eval_size: Optional[int] = None,
              plan: Optional[LrPlan] = None) -> None:
    """Train one epoch, score it on the validation images and append it to `history`."""
    start = time.perf_counter()
    augment = Augment.named(s.augment, data.image_size)
    steps = Steps(plan, (epoch - 1) * steps_per_epoch(len(data.y_train), s.batch_size),
                  s.label_smoothing)
    norms = NormStats(net) if precision.scaler.is_enabled() else None  # see NormStats
    try:
        loss, acc = train_epoch(net, data, optimizer, precision, s.batch_size, gen, augment,
                                steps)
    except RuntimeError as err:
        if not allocation_failed(err):
            raise
        raise out_of_memory(err, f"training at batch size {s.batch_size}",
                            TRAINING_ADVICE) from None
    chance = math.log(max(2, len(data.classes)))
    if not math.isfinite(loss) or loss > DIVERGED_FACTOR * chance:
        raise Diverged(epoch, loss, chance)
    if norms is not None:
        norms.restore_if_spoilt()
    val_loss, val_acc = evaluate(net, data, data.x_val, data.y_val, precision, eval_size)
    if not math.isfinite(val_loss):  # the net computes NaN: no accuracy of it means anything
        raise Diverged(epoch, val_loss, chance, "validation loss")
    history.add(loss, acc, val_loss, val_acc, time.perf_counter() - start)


def train_step(model: nn.Module, xb: torch.Tensor, yb: torch.Tensor,
               optimizer, precision: Precision, label_smoothing: float = 0.0) -> tuple:
    """One optimisation step in the given precision, the same code on every device; returns
    the detached (loss, logits) without reading them back to the host."""
    with precision.autocast():
        logits = model(xb)
        loss = nn.functional.cross_entropy(logits, yb, label_smoothing=label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    precision.scaler.scale(loss).backward()
    precision.scaler.step(optimizer)
    precision.scaler.update()
    return loss.detach(), logits.detach()


def train_epoch(model, data, optimizer, precision: Precision, batch_size: int, gen,
                augment: Augment = Augment(), steps: Steps = Steps()) -> tuple:
    """One pass over the shuffled training images by indexing, each batch augmented and
    normalised on the device; returns (mean loss, accuracy)."""
    model.train()
    device = next(model.parameters()).device  # the data may have been loaded elsewhere
    x, y = data.x_train, data.y_train.to(device)
    n = len(y)
    order = torch.randperm(n, generator=gen)  # drawn first: then the augmentations
    draws = augment.draw(n, gen)
    draws = draws.to(device) if draws is not None else None
    rows, order_x, order_y = Rows(x, device, batch_size), order.to(x.device), order.to(device)
    dtype = precision.input_dtype
    # fp16's scaler skips a step whose loss or gradients overflowed and lowers its scale: such
    # a step changed nothing, so its loss is left out of the mean. Without a scaler every step
    # counts: one non-finite loss has already spoilt the weights.
    skips = precision.scaler.is_enabled()
    # Sums stay on the device: reading them every step would stall a GPU.
    loss_sum = torch.zeros((), device=device)
    counted = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        if stop - start < 2:  # batch norm cannot train on a single image
            break
        interrupts.check()  # a Ctrl-C stops the trial here, between two steps
        xb = rows.take(order_x[start:stop])
        if draws is not None:
            xb = apply(xb, draws.part(start, stop))
        yb = y[order_y[start:stop]]
        steps.set_lr(optimizer, start // batch_size)
        loss, logits = train_step(model, data.normalized(xb, dtype), yb, optimizer, precision,
                                  steps.label_smoothing)
        loss, weight = loss.float(), stop - start
        if skips:
            weight = torch.isfinite(loss).float() * weight
            loss = torch.nan_to_num(loss, nan=0.0, posinf=0.0, neginf=0.0)
        loss_sum += loss * weight
        counted += weight
        correct += (logits.argmax(1) == yb).sum()
        seen += stop - start
    # Every step skipped: the loss stayed non-finite, and the caller prunes the trial.
    mean = loss_sum.item() / counted.item() if counted.item() > 0 else math.nan
    return mean, correct.item() / seen


# The memory one evaluation batch's activations may take: a share of the device's free memory,
# at most EVAL_BYTES (and on the CPU, EVAL_BYTES).
EVAL_SHARE, EVAL_BYTES = 0.25, 512 * 2**20
EVAL_BATCH_MAX = 1024


def eval_batch_size(model: nn.Module, image_size: int, device: torch.device,
                    element_bytes: int = 4) -> int:
    """Images per evaluation batch: as many as fit the memory budget, estimated from the
    largest two consecutive activations of one image (inference frees the others), up to
    EVAL_BATCH_MAX."""
    budget = EVAL_BYTES
    if device.type == "cuda":
        budget = min(budget, int(EVAL_SHARE * device_free_bytes(device)))
    size, largest = image_size, 0
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            largest = max(largest, m.out_channels * size * size)
        elif isinstance(m, nn.MaxPool2d):
            size = max(1, size // 2)
    per_image = max(1, 2 * largest * element_bytes)
    return max(1, min(EVAL_BATCH_MAX, budget // per_image))


def _bytes(dtype: torch.dtype) -> int:
    return torch.finfo(dtype).bits // 8


@torch.inference_mode()
def evaluate(model: nn.Module, data, x: torch.Tensor, y: torch.Tensor,
             precision: Optional[Precision] = None, batch_size: Optional[int] = None) -> tuple:
    """(mean loss, accuracy) over the uint8 images x and labels y, wherever they live, in
    batches sized to the memory (see eval_batch_size) and the training's precision. Out of
    memory, the batch halves and evaluation starts over; at one image it raises OutOfMemory."""
    model.eval()
    device = next(model.parameters()).device
    dtype = precision.input_dtype if precision is not None else torch.float32
    size = batch_size or eval_batch_size(model, data.image_size, device, _bytes(dtype))
    y = y.to(device)
    while True:
        try:
            return _evaluate(model, data, x, y, precision, size, dtype)
        except RuntimeError as err:
            if not allocation_failed(err) or isinstance(err, OutOfMemory):
                raise
            if size == 1:
                raise OutOfMemory("evaluation, even one image at a time",
                                  "a smaller width range or data.image_size fits") from None
        size = max(1, size // 2)
        release_device_memory()  # out of the handler: its traceback held the failed batch


def _evaluate(model, data, x, y, precision, batch_size: int, dtype) -> tuple:
    rows = Rows(x, y.device)
    loss_sum, correct = 0.0, 0
    for start in range(0, len(y), batch_size):
        interrupts.check()  # between two batches, as in training
        xb = data.normalized(rows.span(start, start + batch_size), dtype)
        with precision.autocast() if precision is not None else nullcontext():
            logits = model(xb).float()
        yb = y[start:start + batch_size]
        loss_sum += nn.functional.cross_entropy(logits, yb, reduction="sum").item()
        correct += (logits.argmax(1) == yb).sum().item()
    return loss_sum / len(y), correct / len(y)
