"""Achieved compute of the benchmark's fixed trial against this machine's matmul peak.

`python -m hpsearch.bench.flops --epochs 10` prints, as JSON: the FLOPs one epoch of the fixed
configuration costs (counted by `torch.utils.flop_counter`: convolutions and matrix products,
forward and backward), the time hpsearch's trainer takes for them, the peak FLOP/s of a large
float32 (and bfloat16) matrix product on the same threads, and where the trainer's time goes
according to torch's profiler, by operator.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace

import torch

PEAK_SIZE = 2048  # the side of the square matrices whose product measures the peak

# Profiler operator names -> the part of the network they belong to.
KINDS = (("convolution", ("conv",)), ("batch norm", ("batch_norm",)),
         ("max pool", ("max_pool",)), ("ReLU", ("relu", "threshold_backward", "clamp_min")),
         ("linear", ("addmm", "aten::mm", "linear")), ("optimizer", ("adam", "sgd")))


def matmul_peak(dtype: torch.dtype, size: int = PEAK_SIZE, repeats: int = 5) -> dict:
    """FLOP/s of a size x size matrix product computed two ways, `torch.mm` and a 1x1
    convolution (`onednn_product`), each the fastest of `repeats` after one warm-up, and the
    faster of the two as the peak.

    In float32 `torch.mm` runs MKL, which on AMD processors takes a slower generic path, about
    half oneDNN's speed for the same product. Convolutions run on oneDNN, so a peak from MKL
    alone would understate what the trainer's own library can reach.
    """
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    products = {"mm": lambda: torch.mm(a, b), "conv1x1": onednn_product(a, b)}
    rates = {}
    with torch.inference_mode():
        for name, product in products.items():
            product()
            best = float("inf")
            for _ in range(repeats):
                start = time.perf_counter()
                product()
                best = min(best, time.perf_counter() - start)
            rates[name] = 2 * size ** 3 / best
    return {**rates, "peak": max(rates.values())}


def onednn_product(a: torch.Tensor, b: torch.Tensor):
    """A function computing a @ b (m x k by k x n, m a multiple of 64) as a 1x1 convolution:
    a's m rows are pixels of k channels, b's n columns are filters of k channels. Its output
    is the product transposed, in the shape (1, n, m / 64, 64)."""
    m, k = a.shape
    pixels = a.t().reshape(1, k, m // 64, 64).to(memory_format=torch.channels_last)
    filters = b.t().reshape(b.shape[1], k, 1, 1).to(memory_format=torch.channels_last)
    return lambda: torch.nn.functional.conv2d(pixels, filters)


def fixed_setup(epochs: int) -> tuple:
    """(threads, data, a function making the fixed trial's model, its FitSettings), set up as
    `hpsearch run` sets a trial up."""
    from hpsearch.bench.recipe import FIXED
    from hpsearch.build import fit_settings, model_for
    from hpsearch.config import load_config
    from hpsearch.session import training_setup

    cfg = load_config(None, [f"train.epochs={epochs}"])
    threads, data = training_setup(cfg, torch.device("cpu"))
    params = {**FIXED, "batch_size": cfg.train.batch_size, "weight_decay": 0.0}

    def model():
        torch.manual_seed(0)
        return model_for(params, data)

    return threads, data, model, fit_settings(params, epochs, seed=0, precision="fp32")


def epoch_flops(data, model_fn, batch_size: int) -> dict:
    """FLOPs of one training epoch (forward and backward of every full or partial batch) and
    of one evaluation of the validation split."""
    from torch.utils.flop_counter import FlopCounterMode

    model = model_fn().to(memory_format=torch.channels_last)
    xb, yb = data.normalized(data.x_train[:batch_size]), data.y_train[:batch_size]
    with FlopCounterMode(display=False) as counter:
        torch.nn.functional.cross_entropy(model(xb), yb).backward()
    per_train_image = counter.get_total_flops() / batch_size
    model.eval()
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(data.normalized(data.x_val[:batch_size]))
    per_val_image = counter.get_total_flops() / batch_size
    return {"train": per_train_image * len(data.y_train), "eval": per_val_image * len(data.y_val)}


def profile_epoch(data, model_fn, settings) -> dict:
    """Self CPU time of one training epoch by kind of operator, in ms and shares."""
    from torch.profiler import ProfilerActivity, profile

    from hpsearch.train import fit

    one = replace(settings, epochs=1)
    fit(model_fn(), data, one, torch.device("cpu"))  # warm-up: allocations and kernel choices
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fit(model_fn(), data, one, torch.device("cpu"))
    by_kind: dict = {}
    total = 0.0
    for event in prof.key_averages():
        ms = event.self_cpu_time_total / 1000
        total += ms
        kind = next((k for k, keys in KINDS if any(s in event.key.lower() for s in keys)),
                    "other (indexing, loss, bookkeeping)")
        by_kind[kind] = by_kind.get(kind, 0.0) + ms
    return {"total_ms": total,
            "ms": dict(sorted(by_kind.items(), key=lambda kv: -kv[1])),
            "share": {k: v / total for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])}}


def time_fit(data, model_fn, settings) -> float:
    """Seconds of a fit of the fixed trial, after a one-epoch warm-up."""
    from hpsearch.train import fit

    fit(model_fn(), data, replace(settings, epochs=1), torch.device("cpu"))
    start = time.perf_counter()
    fit(model_fn(), data, settings, torch.device("cpu"))
    return time.perf_counter() - start


def measure(epochs: int) -> dict:
    from hpsearch.private import cpu_has_native_bf16 as cpu_has_bf16

    threads, data, model_fn, settings = fixed_setup(epochs)
    flops = epoch_flops(data, model_fn, settings.batch_size)
    seconds = time_fit(data, model_fn, settings)
    achieved = epochs * (flops["train"] + flops["eval"]) / seconds
    peak32 = matmul_peak(torch.float32)
    # Without native bf16 the product is emulated ~100x slower: a smaller one says as much.
    peak16 = matmul_peak(torch.bfloat16, size=PEAK_SIZE if cpu_has_bf16() else 512, repeats=2)
    # The same trial in bf16 autocast, against the bf16 peak, where the CPU computes it.
    bf16 = None
    if cpu_has_bf16():
        bf16_seconds = time_fit(data, model_fn, replace(settings, precision="bf16"))
        bf16 = {"seconds": bf16_seconds,
                "achieved_flops": epochs * (flops["train"] + flops["eval"]) / bf16_seconds}
        bf16["share_of_bf16_peak"] = bf16["achieved_flops"] / peak16["peak"]
    profile = profile_epoch(data, model_fn, settings)
    conv_flops = flops["train"]  # nearly all counted FLOPs are convolutions; see `linear`
    conv_seconds = profile["ms"].get("convolution", 0.0) / 1000
    return {
        "threads": threads, "epochs": epochs, "seconds": seconds,
        "flops_per_epoch": flops, "achieved_flops": achieved,
        "peak_fp32_flops": peak32["peak"], "peak_bf16_flops": peak16["peak"],
        "peak_by_library": {"fp32": peak32, "bf16": peak16},
        "share_of_fp32_peak": achieved / peak32["peak"],
        "convolution_flops_while_convolving": conv_flops / conv_seconds if conv_seconds else None,
        "profile": profile, "bf16": bf16,
    }


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    print(json.dumps(measure(args.epochs)))


if __name__ == "__main__":
    main()
