"""Datasets by name -> uint8 tensors split into train/val/test, loaded once per process.

Every dataset first becomes uint8 images (N, C, S, S) at the study's image size, then a
stratified split fixed by the seed. The images stay uint8 and channels-last: training and
validation on the device (or, too large for it, in host memory: see placement), the
test split on the host until the report needs it. Each batch is normalised on the device in
the compute dtype, with statistics of the training split alone (Dataset.normalized). Trials
batch these tensors by indexing; nothing here is rebuilt per trial.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from hpsearch.config import DataConfig
from hpsearch.errors import DataError
from hpsearch.images import (Images, Progress, cifar10_images, digest, digits_images,
                             folder_images, folder_listing, load_arrays, mnist_images,
                             save_arrays, versioned_key)


@dataclass(frozen=True)
class Dataset:
    """uint8 splits (N, C, S, S, channels-last) and their labels, plus what a study records
    about them. Training and validation images live on the device, or in host memory when
    they do not fit there (`on_host`: each batch is staged, see batches); the test images
    and labels stay on the host."""

    x_train: torch.Tensor
    y_train: torch.Tensor  # labels: on the training device
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: tuple
    mean: tuple  # per channel, of the training split, in [0, 1] pixel units
    std: tuple
    fingerprint: str  # sha256 of the source images, labels and class names
    skipped: tuple = ()
    _stats: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def channels(self) -> int:
        return self.x_train.shape[1]

    @property
    def image_size(self) -> int:
        return self.x_train.shape[-1]

    @property
    def device(self) -> torch.device:
        """Where training runs: the labels live there even when the images do not."""
        return self.y_train.device

    @property
    def on_host(self) -> bool:
        return self.x_train.device != self.y_train.device

    def normalized(self, xb: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """uint8 images -> (x / 255 - mean) / std in `dtype`, on their device. The arithmetic
        is float32 whatever `dtype` (one rounding, at the end)."""
        key = str(xb.device)
        if key not in self._stats:
            shape = (1, len(self.mean), 1, 1)
            self._stats[key] = tuple(torch.tensor(v, dtype=torch.float32).view(shape)
                                     .to(xb.device) for v in (self.mean, self.std))
        mean, std = self._stats[key]
        out = (xb.to(torch.float32) / 255.0 - mean) / std
        return out if dtype == torch.float32 else out.to(dtype)

    def record(self) -> dict:
        """What a study stores so that a resumed run can check it sees the same data."""
        return {
            "fingerprint": self.fingerprint,
            "classes": list(self.classes),
            "sizes": {"train": len(self.y_train), "val": len(self.y_val),
                      "test": len(self.y_test)},
            "normalization": {"mean": list(self.mean), "std": list(self.std)},
        }


_LOADED: dict = {}


def load_dataset(cfg: DataConfig, seed: int, device: Union[str, torch.device] = "cpu",
                 on_progress: Progress = None, shared: bool = False) -> Dataset:
    """The dataset of a study, split by `seed`, for training on `device`; decoded once per
    process. What the images need is compared with the free memory first (see placement).
    `shared`: what stays in host memory goes into shared memory (an owner's: see sharing)."""
    key = (cfg, seed, str(device), shared)
    if key not in _LOADED:
        device = torch.device(device)
        listing = None if cfg.dataset in _COUNTS else folder_listing(folder_of(cfg))
        counted = _COUNTS.get(cfg.dataset) or (len(listing[0]), 3)
        where = placement(cfg, counted, device)
        images = load_images(cfg, on_progress, listing)
        _LOADED[key] = split(images, cfg, seed, device, where, shared)
    return _LOADED[key]


def load_images(cfg: DataConfig, on_progress: Progress = None,
                listing: Optional[tuple] = None) -> Images:
    if cfg.dataset == "digits":
        return digits_images(cfg.image_size)
    if cfg.dataset in ("mnist", "fashion-mnist"):
        return mnist_images(Path(cfg.data_dir), cfg.dataset, cfg.image_size)
    if cfg.dataset == "cifar10":
        return cifar10_images(Path(cfg.data_dir), cfg.image_size)
    return folder_images(folder_of(cfg), cfg.image_size, on_progress, listing)


def folder_of(cfg: DataConfig) -> Path:
    return Path(cfg.dataset[len("folder:"):]).expanduser()


# Images and channels of the datasets by name, known before anything is decoded; a folder's
# are its image files, counted as colour.
_COUNTS = {"digits": (1797, 1), "mnist": (70000, 1), "fashion-mnist": (70000, 1),
           "cifar10": (60000, 3)}


# ------------------------------------------------------------------------------- memory

# Loading holds the decoded images and their split side by side: twice their bytes.
LOAD_FACTOR = 2
# The share of the device's free memory the training and validation images may take; the
# rest is the trials' (weights, activations, the optimizer's moments).
DEVICE_SHARE = 0.5


def host_free_bytes() -> int:
    """Memory the host can give this process now (what a new allocation may take)."""
    import psutil

    return int(psutil.virtual_memory().available)


# {cuda:N: bytes} this process's allocator may hold there, where workers share the GPU
# (see sharing.cap).
_CAPS: dict = {}


def cap_device_memory(device: torch.device, limit: Optional[int]) -> None:
    """Cap what this process's allocator may hold on `device` at `limit` bytes (None: lift
    the cap)."""
    if limit is None:
        _CAPS.pop(_cuda_key(device), None)
    else:
        _CAPS[_cuda_key(device)] = limit


def device_free_bytes(device: torch.device) -> Optional[int]:
    """Memory this process may still take on a CUDA device: the device's free memory, or
    less where this process is capped; None where the data shares the host's memory (the
    CPU, and mps's unified memory)."""
    if device.type != "cuda":
        return None
    free = int(torch.cuda.mem_get_info(device)[0])
    limit = _CAPS.get(_cuda_key(device))
    if limit is None:
        return free
    return max(0, min(free, limit - int(torch.cuda.memory_reserved(device))))


def _cuda_key(device: torch.device) -> str:
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"cuda:{index}"


def placement(cfg: DataConfig, counted: tuple, device: torch.device) -> str:
    """Where the training and validation images live: "device", or "host" (batches staged
    through page-locked buffers and copied without blocking: see batches) when they would
    take more than DEVICE_SHARE of the device's free memory. Refuses, before anything is
    decoded or stored, data that the host cannot hold while loading, naming the bytes and an
    image size that fits."""
    n, channels = counted
    size = cfg.image_size
    need = n * channels * size * size
    free = host_free_bytes()
    if LOAD_FACTOR * need > free:
        raise DataError(
            f"{n:,} images at {size} px need {_gb(LOAD_FACTOR * need)} of memory to load "
            f"({_gb(need)} as uint8) and {_gb(free)} is free; {_smaller_size(n, channels, free)}")
    device_free = device_free_bytes(device)
    on_device = need * (1.0 - cfg.test_fraction)
    if device_free is not None and on_device > DEVICE_SHARE * device_free:
        return "host"
    return "device"


def _smaller_size(n: int, channels: int, free: int) -> str:
    fits = int((free / (LOAD_FACTOR * n * channels)) ** 0.5)
    if fits >= 8:
        return f"set data.image_size = {min(fits, 256)} or less, or free memory"
    return "use fewer images, or a machine with more memory"


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


# ------------------------------------------------------------------ split and normalisation


def split_indices(y: np.ndarray, cfg: DataConfig, seed: int) -> tuple:
    """Stratified train/val/test indices, the same for the same labels and seed; cached on
    local disk, since importing scikit-learn takes longer than the split."""
    key = versioned_key("split", digest(y), cfg.test_fraction, cfg.val_fraction, seed)
    cached = load_arrays(key, "splits", ("train", "val", "test"))
    if cached is not None:
        return cached["train"], cached["val"], cached["test"]
    train, val, test = _stratified_split(y, cfg, seed)
    save_arrays(key, "splits", train=train, val=val, test=test)
    return train, val, test


def _stratified_split(y: np.ndarray, cfg: DataConfig, seed: int) -> tuple:
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    val_share = cfg.val_fraction / (1.0 - cfg.test_fraction)
    try:
        rest, test = train_test_split(idx, test_size=cfg.test_fraction, random_state=seed,
                                      stratify=y)
        train, val = train_test_split(rest, test_size=val_share, random_state=seed,
                                      stratify=y[rest])
    except ValueError as err:
        counts = np.bincount(y)
        raise DataError(
            f"cannot split {len(y)} images into stratified train/val/test ({err}); the smallest "
            f"class has {counts[counts > 0].min()} images: add images or change the fractions"
        ) from None
    return np.sort(train), np.sort(val), np.sort(test)


def split(images: Images, cfg: DataConfig, seed: int, device: torch.device,
          where: str = "device", shared: bool = False) -> Dataset:
    """The images split by `seed`, as uint8 tensors: training and validation on `device`
    (where="device") or in host memory ("host"), test on the host; what is on the host in
    shared memory when `shared`."""
    train, val, test = split_indices(images.y, cfg, seed)
    nhwc = torch.from_numpy(np.ascontiguousarray(images.x.transpose(0, 2, 3, 1)))
    mean, std = channel_stats(nhwc, train)

    def part(idx: np.ndarray, to: str):
        index = torch.from_numpy(np.asarray(idx, dtype=np.int64))
        stays = to != "device" or device.type == "cpu"  # in host memory: shared if asked
        x = _empty((len(idx), *nhwc.shape[1:]), shared and stays)
        torch.index_select(nhwc, 0, index, out=x)
        if to == "device":
            try:
                x = x.to(device)
            except torch.cuda.OutOfMemoryError:
                raise DataError(f"out of memory on {device} while loading the images "
                                f"({_gb(x.numel())} of them); free the GPU (another process "
                                f"may hold it) or lower data.image_size") from None
        return x.permute(0, 3, 1, 2), torch.from_numpy(images.y[idx]).to(
            device if to != "test" else "cpu")

    keep = "host" if where == "host" else "device"
    (xt, yt), (xv, yv), (xs, ys) = part(train, keep), part(val, keep), part(test, "test")
    return Dataset(xt, yt, xv, yv, xs, ys, images.classes, mean, std, fingerprint(images),
                   images.skipped)


def _empty(shape: tuple, shared: bool = False) -> torch.Tensor:
    """uint8 host memory; in shared memory when `shared` (an owner's, handed to the workers
    on its device: see sharing) and the shared-memory mount has room. Never page-locked:
    see batches."""
    x = torch.empty(shape, dtype=torch.uint8)
    # Untouched pages of a fresh block cost nothing to copy: sharing it doubles no memory.
    return x.share_memory_() if shared and shm_room(x.numel()) else x


# The share of the shared-memory mount's free space that images handed on may take.
SHM_SHARE = 0.8


def shm_room(n: int) -> bool:
    """Whether n more bytes fit the shared-memory mount (a container's may hold 64 MB, and a
    process that writes past it is killed, with no error to catch)."""
    import shutil

    try:
        return n <= SHM_SHARE * shutil.disk_usage("/dev/shm").free
    except OSError:
        return False


def pooled(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Two splits' images as one (train + validation for the final fit), where a lives; in
    host memory when the device has no room for the copy (the study's own splits stay
    cached on it)."""
    _, c, h, w = a.shape
    shape = (len(a) + len(b), h, w, c)
    try:
        out = torch.empty(shape, dtype=torch.uint8, device=a.device)
    except torch.cuda.OutOfMemoryError:
        out = _empty(shape)
    out[:len(a)].copy_(a.permute(0, 2, 3, 1))
    out[len(a):].copy_(b.permute(0, 2, 3, 1))
    return out.permute(0, 3, 1, 2)


def channel_stats(nhwc: torch.Tensor, train: np.ndarray) -> tuple:
    """(mean, std) per channel of the training images, in [0, 1] pixel units: exact, from a
    count of each channel's 256 values, a thousand images at a time (no float copy)."""
    channels = nhwc.shape[-1]
    counts = torch.zeros((channels, 256), dtype=torch.float64)
    index = torch.from_numpy(np.asarray(train, dtype=np.int64))
    for start in range(0, len(index), 1024):
        chunk = nhwc[index[start:start + 1024]].reshape(-1, channels)
        for c in range(channels):
            counts[c] += torch.bincount(chunk[:, c], minlength=256).double()
    values = torch.arange(256, dtype=torch.float64) / 255.0
    total = counts.sum(1)
    mean = (counts * values).sum(1) / total
    var = (counts * values ** 2).sum(1) / total - mean ** 2
    std = var.clamp_min(0).sqrt().clamp_min(1e-3)  # a constant channel must not divide by 0
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def fingerprint(images: Images) -> str:
    """The data a study was run on: source images, labels and class names. Resizing is left
    out (the image size is a setting of its own), so a newer torch or PIL on a resumed
    machine does not change it."""
    h = hashlib.sha256(images.source.encode())
    h.update(np.ascontiguousarray(images.y).tobytes())
    h.update("\0".join(images.classes).encode())
    return h.hexdigest()


def study_data(cfg, split_seed: int, fingerprint: Optional[str], device="cpu") -> Dataset:
    """The dataset a study ran on (`cfg` is the study's Config), checked against the
    fingerprint it stored."""
    data = load_dataset(cfg.data, split_seed, device)
    if fingerprint and data.fingerprint != fingerprint:
        raise DataError(f"the images of {cfg.data.dataset} differ from those the study ran "
                        f"on; point data_dir (--config) at the original files")
    return data
