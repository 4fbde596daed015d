"""The rows of `make gpu-check` that time training, and the command that runs any row:
`python -m hpsearch.bench.gpu_rows ROW --device cuda --scale 1 --work DIR --kw JSON` prints
one JSON line, {"row", "ok", "result"} or {"row", "ok": false, "error"}, for gpu_check.

Every row takes the device it measures on (cuda; cpu in the tests) and a scale for its image
counts. The training rows train hpsearch's own trial (build.model_for, build.fit_settings,
train.fit) on a data.Dataset made from synthetic uint8 tensors; only the timing is added, by
a Dataset that notes when each training batch is normalised: once per step.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Optional

import torch

from hpsearch import batches, train
from hpsearch import precision as precision_module
from hpsearch.bench import gpu_workers
from hpsearch.bench.gpu_workers import error_text
from hpsearch.build import fit_settings, model_for
from hpsearch.data import Dataset
from hpsearch.params import Choice

# CIFAR-10's splits (48,000 training and 6,000 validation images), a quarter of them where
# only a steady speed is compared (94 steps), and the host row's 64-pixel set; each scaled
# by --scale, with enough images left for a few batches.
CIFAR_TRAIN, CIFAR_VAL, QUARTER, HOST_IMAGES = 48_000, 6_000, 4, 20_000


@dataclass(frozen=True)
class TimedData(Dataset):
    """A Dataset that notes the host's clock and a CUDA event for every training batch it
    normalises: a step's start, once its images are gathered (evaluation's are not noted)."""

    ticks: list = field(default_factory=list, compare=False, repr=False)

    def normalized(self, xb: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        if not torch.is_inference_mode_enabled():
            event = torch.cuda.Event(enable_timing=True) if xb.device.type == "cuda" else None
            if event is not None:
                event.record(torch.cuda.current_stream(xb.device))
            self.ticks.append((time.perf_counter(), event))
        return super().normalized(xb, dtype)


def scaled(n: int, scale: float, least: int = 256) -> int:
    return max(least, int(n * scale))


def synthetic(device: torch.device, n_train: int, n_val: int, size: int = 32,
              classes: int = 10) -> TimedData:
    """Random uint8 images (3 x size x size, channels-last) and labels, made on the device:
    what the GPU does with CIFAR-shaped data, not what it learns from it."""
    torch.manual_seed(0)

    def images(n: int) -> torch.Tensor:
        x = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, device=device)
        return x.contiguous(memory_format=torch.channels_last)

    def labels(n: int) -> torch.Tensor:
        return torch.randint(0, classes, (n,), device=device)

    x_val = images(n_val)
    return TimedData(x_train=images(n_train), y_train=labels(n_train), x_val=x_val,
                     y_val=labels(n_val), x_test=x_val[:2].cpu(), y_test=torch.zeros(2).long(),
                     classes=tuple(str(c) for c in range(classes)), mean=(0.5,) * 3,
                     std=(0.29,) * 3, fingerprint="synthetic")


def config_params(name: str, **changes) -> dict:
    """A trial of cifar10.toml's space: "default" is its middle (space.middle_params, as a
    study times it), "small" its lowest depth and width, "widest" its highest depth, width
    and growth."""
    from hpsearch.config import load_config
    from hpsearch.space import middle_params

    cfg = load_config(Path(__file__).resolve().parents[1] / "studies" / "cifar10.toml")
    params = middle_params(cfg)
    space = {p.name: p for p in cfg.space}
    if name != "default":
        for key in ("depth", "width"):
            params[key] = int(space[key].low if name == "small" else space[key].high)
        if name == "widest" and isinstance(space.get("growth"), Choice):
            params["growth"] = max(space["growth"].values)
    return {**params, **changes}


def timed_fit(params: dict, data: TimedData, device: torch.device, precision: str = "auto",
              warm_steps: int = 16) -> dict:
    """A trial of `params` (train.fit) timed over one steady-state epoch: a short trial of
    `warm_steps` steps and the last batch's size runs first, so that every shape the epoch
    meets has its kernels loaded, cuDNN's choices made and the allocator's blocks cached, as
    in a trial's second epoch, at half the cost of a whole first one. Returns the epoch's
    training images per second (its validation included, as a trial spends it), the median
    time per step on the host (the Python loop's: where it matches the GPU's, the host was
    waiting for a full launch queue, and the GPU is the bound) and on the GPU (between
    consecutive steps' start events), peak device memory (images included) and the losses."""
    n, batch = len(data.y_train), params["batch_size"]
    warm = warm_steps * batch + n % batch
    if warm < n:
        part = subset(data, warm, len(data.y_val))
        torch.manual_seed(0)
        train.fit(model_for(params, part), part, fit_settings(params, 1, 0, precision), device)
    data.ticks.clear()
    torch.manual_seed(0)
    model = model_for(params, data)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    history = train.fit(model, data, fit_settings(params, 1, 0, precision), device)
    if cuda:
        torch.cuda.synchronize(device)
    ticks = data.ticks
    host = [(b[0] - a[0]) * 1e3 for a, b in zip(ticks, ticks[1:])]
    gpu = [a[1].elapsed_time(b[1]) for a, b in zip(ticks, ticks[1:])] if cuda else []
    return {"precision": train.choose_precision(device, precision).name,
            "images_per_s": n / history.epoch_seconds[-1],
            "host_ms": statistics.median(host) if host else None,
            "cuda_ms": statistics.median(gpu) if gpu else None,
            "steps": len(ticks), "peak_bytes": torch.cuda.max_memory_allocated(device)
            if cuda else None, "train_loss": history.train_loss, "val_loss": history.val_loss,
            "weights": digest(model)}


def digest(model) -> str:
    """The trained weights and statistics, to the bit: two runs that agree repeat exactly."""
    h = hashlib.sha256()
    for t in model.state_dict().values():
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def subset(data: TimedData, n_train: int, n_val: int) -> TimedData:
    return replace(data, x_train=data.x_train[:n_train], y_train=data.y_train[:n_train],
                   x_val=data.x_val[:n_val], y_val=data.y_val[:n_val], ticks=[])


def kernel_counts(params: dict, data: TimedData, device: torch.device, precision: str,
                  few: int = 3, more: int = 8) -> dict:
    """Kernels launched per training step, and their time on the GPU: one-epoch trials of
    `few` and of `more` steps profiled (torch.profiler), the difference divided by the extra
    steps, so that what every epoch does once (shuffling, validation) cancels out. On the CPU
    the profiler's CPU ops are counted instead (nested ones included)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    batch = params["batch_size"]
    more = min(more, len(data.y_train) // batch)  # as many steps as the images allow
    few = min(few, more - 1)
    if few < 1:
        raise ValueError(f"{len(data.y_train)} images are too few to count steps of {batch}")
    found = []
    for steps in (few, more):
        part = subset(data, steps * batch, min(len(data.y_val), batch))
        torch.manual_seed(0)
        model = model_for(params, part)
        with profile(activities=activities) as prof:
            train.fit(model, part, fit_settings(params, 1, 0, precision), device)
            if cuda:
                torch.cuda.synchronize(device)
        found.append(count_events(prof.events(), cuda))
    (n0, us0), (n1, us1) = found
    return {"kernels": (n1 - n0) / (more - few),
            "kernel_ms": (us1 - us0) / (more - few) / 1e3 if cuda else None,
            "counted": "CUDA kernels" if cuda else "CPU ops"}


def count_events(events, cuda: bool) -> tuple:
    """(count, microseconds) of the CUDA kernels among a profile's events (memory copies and
    sets left out), or of its CPU ops."""
    n, us = 0, 0.0
    for e in events:
        kind = getattr(e, "activity_type", None)
        if cuda:
            hit = kind == "kernel" if kind else (
                "CUDA" in str(e.device_type) and not e.name.startswith(("Memcpy", "Memset")))
        else:
            hit = kind == "cpu_op" if kind else "CPU" in str(e.device_type)
        if hit:
            n += 1
            us += e.time_range.elapsed_us()
    return n, us


# ------------------------------------------------------------------------------- the rows


def train_row(device: torch.device, scale: float = 1.0, work=None, config: str = "default",
              precisions: tuple = ("fp32",), profile: bool = True) -> dict:
    """Steady-state training of one configuration of cifar10.toml's space on 48,000
    CIFAR-shaped images, in each of `precisions` (gpu_check.plan: those the GPU offers): a
    steady epoch timed, then kernels counted per step. A precision that fails says so in its
    own entry."""
    params = config_params(config)
    data = synthetic(device, scaled(CIFAR_TRAIN, scale), scaled(CIFAR_VAL, scale, 64))
    runs = []
    for precision in precisions:
        try:
            run = timed_fit(params, data, device, precision)
            if profile:
                try:
                    run.update(kernel_counts(params, data, device, precision))
                except Exception as err:  # the timing stands without the count
                    run["kernels_error"] = error_text(err)
        except Exception as err:
            run = {"precision": precision, "error": error_text(err)}
        runs.append(run)
        train.release_device_memory()
    shape = {k: params[k] for k in ("depth", "width", "growth", "head", "batch_size")}
    return {"config": config, "params": shape, "images": len(data.y_train), "runs": runs}


def widths_row(device: torch.device, scale: float = 1.0, work=None,
               widths: tuple = (23, 24, 32)) -> dict:
    """The default configuration at widths 23, 24 and 32 in the device's own precision:
    whether a width off a multiple of 8 costs more than the channels it lacks (12,000
    images: a steady speed is all that is compared)."""
    data = synthetic(device, scaled(CIFAR_TRAIN // QUARTER, scale),
                     scaled(CIFAR_VAL // QUARTER, scale, 64))
    out = []
    timed_fit(config_params("default", width=widths[0]), data, device)  # the process's first
    for width in widths:
        run = timed_fit(config_params("default", width=width), data, device)
        out.append({"width": width, "images_per_s": run["images_per_s"],
                    "precision": run["precision"]})
        train.release_device_memory()
    return {"widths": out}


def cudnn_row(device: torch.device, scale: float = 1.0, work=None) -> dict:
    """cuDNN's benchmark search off (twice: do two runs of one seed end with the same weights,
    to the bit?), then with cudnn.deterministic (twice), then the search on; the default
    configuration in the device's precision. A no-op on the CPU, which runs it all the same."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before cuBLAS's first use
    data = synthetic(device, scaled(CIFAR_TRAIN // QUARTER, scale),
                     scaled(CIFAR_VAL // QUARTER, scale, 64))
    params = config_params("default")
    cudnn = torch.backends.cudnn
    saved = train.CUDNN_BENCHMARK, cudnn.deterministic, precision_module.TF32_UNDER_AUTOCAST
    runs = {}
    try:
        # Off before on: the search's choices, once made, stay in this process.
        for name, bench, exact, tf32 in (
                ("warm-up", False, False, False),  # the process's first fit: not compared
                ("off", False, False, False), ("off again", False, False, False),
                ("deterministic", False, True, False),
                ("deterministic again", False, True, False), ("tf32", False, False, True),
                ("on", True, False, False)):
            train.CUDNN_BENCHMARK, cudnn.deterministic = bench, exact
            torch.use_deterministic_algorithms(exact, warn_only=True)  # beyond cuDNN's
            precision_module.TF32_UNDER_AUTOCAST = tf32
            runs[name] = timed_fit(params, data, device)
            train.release_device_memory()
    finally:
        train.CUDNN_BENCHMARK, cudnn.deterministic, precision_module.TF32_UNDER_AUTOCAST = saved
        torch.use_deterministic_algorithms(False)
    speed = {name: run["images_per_s"] for name, run in runs.items() if name != "warm-up"}
    off, det = (runs["off"], runs["off again"]), (runs["deterministic"],
                                                  runs["deterministic again"])
    gap = max(abs(x - y) for x, y in zip(*(r["train_loss"] + r["val_loss"] for r in off)))
    return {"precision": runs["off"]["precision"], "images_per_s": speed, "loss_gap": gap,
            "identical": off[0]["weights"] == off[1]["weights"],
            "deterministic_identical": det[0]["weights"] == det[1]["weights"]}


@contextmanager
def staged_on_cpu(device: torch.device):
    """On the CPU, training's batches staged as a GPU's from host memory (batches.Rows with
    staged=True), counted; on a GPU nothing changes: host-memory images are staged anyway."""
    counts = {"staged": 0}
    if device.type != "cpu":
        yield counts
        return
    real = train.Rows

    class Staged(real):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "staged": True})

        def take(self, idx):
            counts["staged"] += 1
            return super().take(idx)

    train.Rows = Staged
    try:
        yield counts
    finally:
        train.Rows = real


def host_row(device: torch.device, scale: float = 1.0, work=None, size: int = 64) -> dict:
    """20,000 CIFAR-shaped images at 64 pixels, loaded as hpsearch loads them (data.split)
    with DEVICE_SHARE = 0, so that placement keeps them in host memory; images/s with the
    images on the device, then from host memory (each batch staged through page-locked
    buffers) with side-stream copies on and off (batches.OVERLAP, where it exists), and the
    bytes page-locked for staging (batches.pinned_total, where it exists)."""
    import numpy as np

    from hpsearch import data as data_mod
    from hpsearch.config import DataConfig
    from hpsearch.images import Images

    n = scaled(HOST_IMAGES, scale)
    cfg = DataConfig(dataset="synthetic", image_size=size, val_fraction=0.1, test_fraction=0.1)
    rng = np.random.default_rng(0)
    images = Images(rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8),
                    np.arange(n, dtype=np.int64) % 10, tuple("0123456789"), "synthetic")
    share, data_mod.DEVICE_SHARE = data_mod.DEVICE_SHARE, 0.0
    try:
        where = data_mod.placement(cfg, (n, 3), device)
    finally:
        data_mod.DEVICE_SHARE = share
    loaded = data_mod.split(images, cfg, 0, device, "host")
    host = TimedData(**{f.name: getattr(loaded, f.name) for f in fields(Dataset)})
    on_device = replace(host, x_train=host.x_train.to(device), x_val=host.x_val.to(device),
                        ticks=[])
    params = config_params("default")
    out = {"placement": where, "images": len(host.y_train), "on_host": host.on_host,
           "data_bytes": host.x_train.numel()}
    timed_fit(params, on_device, device)  # the process's first fit is slower: not compared
    out["device_images_per_s"] = timed_fit(params, on_device, device)["images_per_s"]
    del on_device
    train.release_device_memory()
    overlap = getattr(batches, "OVERLAP", None)
    for flag in ((True, False) if overlap is not None else (None,)):
        if flag is not None:
            batches.OVERLAP = flag
        try:
            with staged_on_cpu(device) as counts:
                run = timed_fit(params, host, device)
        finally:
            if flag is not None:
                batches.OVERLAP = overlap
        key = {None: "host", True: "host_overlap", False: "host_no_overlap"}[flag]
        out[f"{key}_images_per_s"] = run["images_per_s"]
        out[f"{key}_staged"] = counts["staged"] if device.type == "cpu" else None
        train.release_device_memory()
    pinned = getattr(batches, "pinned_total", None)
    out["pinned_bytes"] = int(pinned()) if callable(pinned) else None
    return out


def eval_row(device: torch.device, scale: float = 1.0, work=None,
             fake_limit: Optional[int] = None, start: Optional[int] = None) -> dict:
    """train.evaluate halving its batch on out-of-memory: the default configuration's net
    scores 4 batches' worth of 32-pixel images, uncapped, then with the allocator capped
    (set_per_process_memory_fraction) at a third of what hpsearch's first batch needs; the
    batch it settles on, and whether the accuracy is the uncapped one (in float32, TF32 off:
    batches of another size give the same predictions). `fake_limit` (the CPU's tests):
    batches above it raise torch's out-of-memory error instead of a cap; `start`: the first
    batch, instead of hpsearch's estimate (train.eval_batch_size)."""
    from hpsearch.precision import set_tf32

    if device.type == "cuda":
        set_tf32("fp32")  # as train.fit leaves it for fp32
    data = synthetic(device, 256, 64)
    params = config_params("default")
    torch.manual_seed(0)
    _, net, _ = train.training_net(model_for(params, data), fit_settings(params, 1, 0), device)
    precision = train.choose_precision(device, "fp32")
    start = start or train.eval_batch_size(net, data.image_size, device, 4)
    x = synthetic(device, 4 * start, 2).x_train
    y = torch.randint(0, 10, (len(x),), device=device)
    first = train.evaluate(net, data, x, y, precision, start)
    sizes: list = []

    def note(module, inputs):
        sizes.append(len(inputs[0]))
        if fake_limit is not None and len(inputs[0]) > fake_limit:
            raise torch.OutOfMemoryError(f"out of memory (faked: {len(inputs[0])} images)")

    out = {"start": start, "images": len(x), "cap_bytes": None}
    if fake_limit is None and device.type == "cuda":
        out["cap_bytes"] = gpu_workers.cap_below(net, data, x, y, precision, start, device)
    handle = net.register_forward_pre_hook(note)
    try:
        second = train.evaluate(net, data, x, y, precision, start)
    finally:
        handle.remove()
        if device.type == "cuda":
            torch.cuda.set_per_process_memory_fraction(1.0, device)
    out.update(settled=min(sizes), tries=sorted(set(sizes), reverse=True),
               accuracy=second[1], uncapped_accuracy=first[1],
               loss_gap=abs(second[0] - first[0]))
    out["ok"] = out["settled"] < start and second[1] == first[1]
    return out


def rows() -> dict:
    return {"header": gpu_workers.header, "train": train_row, "widths": widths_row,
            "cudnn": cudnn_row, "host": host_row, "optim": gpu_workers.optim_row,
            "poison": gpu_workers.poison_row, "eval": eval_row, "resume": gpu_workers.resume_row,
            "workers": gpu_workers.workers_row, "oom": gpu_workers.oom_row}


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("row", choices=sorted(rows()))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies image counts")
    parser.add_argument("--work", type=Path, help="a folder for the row's files")
    parser.add_argument("--kw", type=json.loads, default={}, metavar="JSON",
                        help="the row's own arguments")
    args = parser.parse_args(argv)
    try:
        result = rows()[args.row](torch.device(args.device), args.scale, args.work, **args.kw)
        print(json.dumps({"row": args.row, "ok": True, "result": result}), flush=True)
        return 0
    except Exception as err:  # said in the row's JSON; the traceback goes to stderr
        traceback.print_exc()
        print(json.dumps({"row": args.row, "ok": False, "error": error_text(err)}), flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
