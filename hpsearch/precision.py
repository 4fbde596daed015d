"""The precision a trial computes in: what the hardware computes natively, or what the study
file forces, refused or noted where the hardware lacks or emulates it."""

from __future__ import annotations

import functools
import platform
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Optional

import torch

from hpsearch import private
from hpsearch.errors import DeviceError


@dataclass(frozen=True)
class Precision:
    """How the training step computes: autocast to `dtype` (None: full float32) and a gradient
    scaler, which only float16 needs (its small range underflows gradients)."""

    device_type: str
    dtype: Optional[torch.dtype]
    scaler: torch.amp.GradScaler
    note: str = ""  # a forced choice the hardware only emulates: said once before the trials

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    @property
    def input_dtype(self) -> torch.dtype:
        """The dtype batches are normalised into: what the first convolution computes in."""
        return self.dtype or torch.float32

    def autocast(self):
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)


def usable(device: torch.device, wanted: str) -> str:
    """`wanted` if this device can train in it, else "auto": a study run in fp16 on a GPU,
    retrained on a CPU."""
    try:
        choose_precision(device, wanted)
        return wanted
    except DeviceError:
        return "auto"


def cpu_bf16_is_fast() -> bool:
    """Whether `auto` trains in bf16 on this CPU: on AMD processors that compute it natively
    (Zen 4 and 5), the only CPUs where it was faster than float32 at the same accuracy; on
    Intel's it was slower or no faster per epoch (BENCHMARKS.md)."""
    return private.cpu_has_native_bf16() and "AuthenticAMD" in cpu_vendor()


@functools.lru_cache(maxsize=1)
def cpu_vendor() -> str:
    """The processor's vendor string ("AuthenticAMD", "GenuineIntel"), or "" if unknown."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()  # Windows names the vendor here; Linux has /proc/cpuinfo


def choose_precision(device: torch.device, wanted: str = "auto") -> Precision:
    """What the hardware computes natively. `auto`: on CUDA bf16 from compute capability 8.0,
    fp16 with a scaler from 7.0 (tensor cores; a T4 says it supports bf16, but emulates it),
    fp32 below; on the CPU bf16 where `cpu_bf16_is_fast`, else fp32; fp32 on mps. `fp32`,
    `bf16` and `fp16` force a choice: fp16 without tensor cores runs with a `note` to show
    before the first trial, bf16 without native support is refused."""
    kind, note = device.type, ""
    major = torch.cuda.get_device_capability(device)[0] if kind == "cuda" else 0
    if wanted == "auto":
        if kind == "cuda":
            wanted = "bf16" if major >= 8 else "fp16" if major >= 7 else "fp32"
        else:
            wanted = "bf16" if kind == "cpu" and cpu_bf16_is_fast() else "fp32"
    if wanted == "fp16" and kind != "cuda":
        raise DeviceError(f"train.precision = fp16 needs a CUDA device, not {kind}; "
                          f"use auto, fp32 or bf16")
    if wanted == "bf16" and kind == "mps":
        raise DeviceError("train.precision = bf16 is not supported on mps; use auto or fp32")
    if kind == "cuda" and wanted == "bf16" and major < 8:
        # Autocast would accept it (torch counts emulation as support), but cuDNN has no
        # bf16 convolutions before 8.0: every trial would fail.
        raise DeviceError(f"train.precision = bf16: this GPU (compute capability {major}.x) "
                          f"has no native bf16; use auto ({'fp16' if major >= 7 else 'fp32'} "
                          f"here) or fp32")
    if kind == "cuda" and wanted == "fp16" and major < 7:
        note = (f"note: this GPU (compute capability {major}.x) has no fp16 tensor cores; "
                f"train.precision = auto trains in fp32 here, likely faster")
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[wanted]
    scaler_device = "cuda" if kind == "cuda" else "cpu"
    return Precision(kind, dtype, torch.amp.GradScaler(scaler_device, enabled=wanted == "fp16"),
                     note)


class NormStats:
    """Batch norm's running statistics of a net, kept as they were when an epoch began.

    Under fp16 the scaler skips a step whose gradients overflowed, but that step's forward
    pass has already run in training mode: a batch-norm layer that saw an infinity keeps a
    NaN mean or variance, and every later evaluation is NaN while the training loss looks
    fine. At the epoch's end `restore_if_spoilt` puts back the statistics of its start where
    any became non-finite (stale by one epoch, which training refreshes within a few steps):
    one copy and one check per epoch, none per step."""

    def __init__(self, net: torch.nn.Module):
        self.buffers = [b for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm
                                                                ._BatchNorm)
                        for b in (m.running_mean, m.running_var) if b is not None]
        self.saved = [b.detach().clone() for b in self.buffers]

    def restore_if_spoilt(self) -> bool:
        """Whether the statistics were non-finite and were put back."""
        if not self.buffers:
            return False
        finite = torch.stack([torch.isfinite(b).all() for b in self.buffers]).all()
        if bool(finite):
            return False
        with torch.no_grad():
            for b, s in zip(self.buffers, self.saved):
                b.copy_(s)
        return True


# Whether the float32 work left under autocast (bf16, fp16: batch norm's statistics, the loss,
# the few ops autocast keeps in float32) may run as TF32 on GPUs from compute capability 8.0.
# Off until `make gpu-check`'s cuDNN row shows it pays (bf16 with TF32 on against off); that
# work is a small part of a step, so the gain is expected to be small.
TF32_UNDER_AUTOCAST = False


def set_tf32(name: str) -> None:
    """TF32 for a trial in precision `name` on CUDA. fp32 is float32, never TF32, which torch
    lets cuDNN's convolutions use by default on GPUs from compute capability 8.0: a study
    resumed from a T4 onto an A100 would otherwise train in two precisions that both say
    fp32. Under autocast, as TF32_UNDER_AUTOCAST says."""
    allow = name != "fp32" and TF32_UNDER_AUTOCAST
    torch.backends.cuda.matmul.allow_tf32 = allow
    torch.backends.cudnn.allow_tf32 = allow


def tf32_state(device: torch.device) -> Optional[str]:
    """Whether float32 work on `device` may run as TF32, as a trial records it: "on",
    "off", or which of cuDNN and matmul allow it; None off CUDA, where there is no TF32."""
    if torch.device(device).type != "cuda":
        return None
    conv, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    return {(True, True): "on", (False, False): "off"}.get(
        (conv, matmul), "cuDNN only" if conv else "matmul only")
