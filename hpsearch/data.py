"""Datasets by name -> tensors split into train/val/test, loaded once per process.

Every dataset first becomes uint8 images (N, C, S, S) at the study's image size, then a
stratified split fixed by the seed, then float tensors normalised with statistics of the
training split alone. Trials batch these tensors by indexing; nothing here is rebuilt per trial.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import io
import os
import pickle
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
import torch.nn.functional as F

from hpsearch.config import DataConfig
from hpsearch.errors import DataError



@dataclass(frozen=True)
class Images:
    """Decoded images before splitting: uint8 (N, C, S, S) and int64 labels."""

    x: np.ndarray
    y: np.ndarray
    classes: tuple
    source: str  # sha256 of the source images before resizing: the same on any torch or PIL
    skipped: tuple = ()  # files that could not be decoded (folder datasets only)


@dataclass(frozen=True)
class Dataset:
    """Normalised float32 splits on one device, plus what a study records about them."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: tuple
    mean: tuple  # per channel, of the training split, in [0, 1] pixel units
    std: tuple
    fingerprint: str  # sha256 of the source images, labels and class names
    skipped: tuple = ()

    @property
    def channels(self) -> int:
        return self.x_train.shape[1]

    @property
    def image_size(self) -> int:
        return self.x_train.shape[-1]

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


def load_dataset(cfg: DataConfig, seed: int, device: Union[str, torch.device] = "cpu") -> Dataset:
    """The dataset of a study, split by `seed`, on `device`; decoded once per process."""
    key = (cfg, seed, str(device))
    if key not in _LOADED:
        images = load_images(cfg)
        _LOADED[key] = split_and_normalize(images, cfg, seed, device)
    return _LOADED[key]


def load_images(cfg: DataConfig) -> Images:
    if cfg.dataset == "digits":
        return digits_images(cfg.image_size)
    if cfg.dataset in ("mnist", "fashion-mnist"):
        return mnist_images(Path(cfg.data_dir), cfg.dataset, cfg.image_size)
    if cfg.dataset == "cifar10":
        return cifar10_images(Path(cfg.data_dir), cfg.image_size)
    return folder_images(Path(cfg.dataset[len("folder:"):]).expanduser(), cfg.image_size)


def digits_images(image_size: int) -> Images:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, 0..16 grey levels), cached
    on local disk after the first load: importing scikit-learn's loaders takes as long as one
    or two of the default study's trials."""
    key = _versioned_key("digits", image_size)
    cached = _read_cache(key, "datasets")
    if cached is not None:
        return cached
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    classes = tuple(str(c) for c in bunch.target_names)
    images = Images(resize(x, image_size), bunch.target.astype(np.int64), classes, digest(x))
    _write_cache(key, images, "datasets")
    return images


def digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def resize(x: np.ndarray, size: int) -> np.ndarray:
    """uint8 (N, C, H, W) -> uint8 (N, C, size, size), antialiased when shrinking."""
    if x.shape[-2:] == (size, size):
        return x
    t = torch.from_numpy(x).float()
    out = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8).numpy()


_MNIST_FILES = (
    "train-images-idx3-ubyte", "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
)


def mnist_images(root: Path, name: str, image_size: int) -> Images:
    """MNIST or Fashion-MNIST from their IDX files under root, fetched there when online.

    The official train and test files are pooled; hpsearch makes its own stratified split.
    """
    from torchvision import datasets

    cls = datasets.MNIST if name == "mnist" else datasets.FashionMNIST
    raw = root / cls.__name__ / "raw"
    parts = [_torchvision_dataset(cls, root, train, raw, _MNIST_FILES) for train in (True, False)]
    x = np.concatenate([p.data.numpy() for p in parts])[:, None]
    y = np.concatenate([p.targets.numpy() for p in parts]).astype(np.int64)
    return Images(resize(x, image_size), y, tuple(parts[0].classes), digest(x))


_CIFAR_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")


def cifar10_images(root: Path, image_size: int) -> Images:
    """CIFAR-10 from its python pickle batches under root/cifar-10-batches-py."""
    folder = root / "cifar-10-batches-py"
    if not all((folder / f).is_file() for f in _CIFAR_FILES):
        from torchvision import datasets

        _torchvision_dataset(datasets.CIFAR10, root, True, folder, _CIFAR_FILES)
    batches = [_read_pickle(folder / f) for f in _CIFAR_FILES[:-1]]
    x = np.concatenate([b[b"data"] for b in batches]).reshape(-1, 3, 32, 32).astype(np.uint8)
    y = np.concatenate([b[b"labels"] for b in batches]).astype(np.int64)
    meta = _read_pickle(folder / "batches.meta")
    classes = tuple(n.decode() for n in meta[b"label_names"])
    return Images(resize(x, image_size), y, classes, digest(x))


def _read_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="bytes")
    except (OSError, pickle.UnpicklingError, EOFError) as err:
        raise DataError(f"{path} is not a CIFAR-10 batch file ({err}); delete it to fetch again")


def _torchvision_dataset(cls, root: Path, train: bool, folder: Path, files: tuple):
    """torchvision's dataset, downloading into root when the files are absent."""
    try:
        return cls(str(root), train=train, download=True)
    except Exception as err:  # torchvision raises URLError, RuntimeError, OSError, ...
        raise DataError(
            f"{cls.__name__} files are missing from {folder.resolve()} and could not be "
            f"downloaded ({type(err).__name__}); put {', '.join(files)} there, or go online"
        ) from None


# ---------------------------------------------------------------------------- folder datasets

_GREY_MODES = {"1", "L", "LA", "I", "I;16", "F", "La"}


def folder_images(root: Path, image_size: int) -> Images:
    """A folder of class sub-folders of images, decoded once and cached on local disk."""
    if not root.is_dir():
        raise DataError(f"data.dataset folder {root} does not exist or is not a folder")
    files, labels, classes = list_image_files(root)
    if len(classes) < 2:
        raise DataError(
            f"folder {root} has {len(classes)} class folder(s) with images; a classifier needs "
            f"at least two sub-folders of images, one per class"
        )
    key = _folder_key(root, files, image_size)
    cached = _read_cache(key)
    if cached is not None:
        return cached
    images = _decode_all(root, files, labels, classes, image_size)
    _write_cache(key, images)
    return images


def list_image_files(root: Path) -> tuple:
    """Relative paths and labels of every image file under the non-hidden class folders."""
    from PIL import Image

    extensions = {e.lower() for e in Image.registered_extensions()}
    files, labels, classes = [], [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found = sorted(
            p for p in folder.rglob("*")
            if p.suffix.lower() in extensions and p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        )
        if found:
            files += [str(p.relative_to(root)) for p in found]
            labels += [len(classes)] * len(found)
            classes.append(folder.name)
    return files, labels, tuple(classes)


def _decode_all(root, files, labels, classes, image_size) -> Images:
    # Threads: PIL releases the GIL while decoding, and a network drive is mostly waiting.
    with ThreadPoolExecutor(max_workers=8) as pool:
        decoded = list(pool.map(lambda f: _decode(root / f, image_size), files))
    keep = [i for i, d in enumerate(decoded) if d is not None]
    skipped = tuple(files[i] for i, d in enumerate(decoded) if d is None)
    if not keep:
        raise DataError(f"none of the {len(files)} image files under {root} could be decoded")
    grey = all(decoded[i][1] for i in keep)
    x = np.stack([decoded[i][0] for i in keep]).transpose(0, 3, 1, 2)
    x = np.ascontiguousarray(x[:, :1] if grey else x)
    y = np.asarray([labels[i] for i in keep], dtype=np.int64)
    source = hashlib.sha256("".join(f"{files[i]}\0{decoded[i][2]}\n" for i in keep).encode())
    return Images(x, y, classes, source.hexdigest(), skipped)


def _decode(path: Path, size: int):
    """(uint8 HxWx3 array, is_greyscale, sha256 of the file), or None for a file PIL cannot
    read. The file is read once: on a network drive reading is the slow part."""
    from PIL import Image, ImageOps

    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as img:
            grey = img.mode in _GREY_MODES
            img = _to_8_bit(ImageOps.exif_transpose(img))  # as a phone photo is shown
            if img.mode in ("RGBA", "LA", "PA", "P") or "transparency" in img.info:
                img = img.convert("RGBA")
                # Transparent pixels become white, as an image viewer shows them.
                img = Image.alpha_composite(Image.new("RGBA", img.size, "white"), img)
            img = ImageOps.fit(img.convert("RGB"), (size, size), Image.Resampling.BILINEAR)
            return np.asarray(img, dtype=np.uint8), grey, hashlib.sha256(data).hexdigest()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


def _to_8_bit(img):
    """16-bit greyscale (medical and microscopy images) scaled to 0..255; PIL's own
    conversion would clip everything above 255 to white."""
    from PIL import Image

    if not img.mode.startswith("I"):
        return img
    a = np.asarray(img).astype(np.float64)
    scale = 257.0 if a.max(initial=0) > 255 else 1.0
    return Image.fromarray(np.clip(np.rint(a / scale), 0, 255).astype(np.uint8), mode="L")


def cache_dir(kind: str = "folders") -> Path:
    """Where decoded folders, the embedded dataset and splits are kept between runs."""
    base = os.environ.get("HPSEARCH_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "hpsearch")
    return Path(base) / kind


_CACHE_VERSION = 2  # bump when decoding changes: old cache files are then never read


def _folder_key(root: Path, files: list, image_size: int) -> str:
    h = hashlib.sha256(f"v{_CACHE_VERSION} {root.resolve()} {image_size}\n".encode())
    for f in files:
        st = (root / f).stat()
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32]


def _versioned_key(*parts) -> str:
    """A cache file's name for what scikit-learn computed: its version is part of the key."""
    text = " ".join(map(str, (f"v{_CACHE_VERSION}", importlib.metadata.version("scikit-learn"),
                              *parts)))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _read_cache(key: str, kind: str = "folders"):
    arrays = _load_arrays(key, kind, ("x", "y", "classes", "source", "skipped"))
    if arrays is None:
        return None
    return Images(arrays["x"], arrays["y"], tuple(arrays["classes"].tolist()),
                  str(arrays["source"]), tuple(arrays["skipped"].tolist()))


def _write_cache(key: str, images: Images, kind: str = "folders") -> None:
    _save_arrays(key, kind, x=images.x, y=images.y,
                 classes=np.array(images.classes, dtype=str), source=np.array(images.source),
                 skipped=np.array(images.skipped, dtype=str))


def _load_arrays(key: str, kind: str, names: tuple):
    """The named arrays cached under key, or None if the file is absent or damaged (then
    they are computed again)."""
    try:
        with np.load(cache_dir(kind) / f"{key}.npz", allow_pickle=False) as z:
            return {name: z[name] for name in names}
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        return None


def _save_arrays(key: str, kind: str, **arrays) -> None:
    """Best effort: a full or read-only disk costs the next run the work, nothing more."""
    folder = cache_dir(kind)
    tmp = folder / f".{key}.{os.getpid()}.npz"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(tmp, **arrays)
        os.replace(tmp, folder / f"{key}.npz")  # atomic: readers see the old file or the new
    except OSError:
        with contextlib.suppress(OSError):  # the folder may not exist, or be a file
            tmp.unlink(missing_ok=True)


# ------------------------------------------------------------------ split and normalisation


def split_indices(y: np.ndarray, cfg: DataConfig, seed: int) -> tuple:
    """Stratified train/val/test indices, the same for the same labels and seed; cached on
    local disk, since importing scikit-learn takes longer than the split."""
    key = _versioned_key("split", digest(y), cfg.test_fraction, cfg.val_fraction, seed)
    cached = _load_arrays(key, "splits", ("train", "val", "test"))
    if cached is not None:
        return cached["train"], cached["val"], cached["test"]
    train, val, test = _stratified_split(y, cfg, seed)
    _save_arrays(key, "splits", train=train, val=val, test=test)
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


def split_and_normalize(images: Images, cfg: DataConfig, seed: int, device) -> Dataset:
    train, val, test = split_indices(images.y, cfg, seed)
    x_train = images.x[train].astype(np.float32) / 255.0
    mean = x_train.mean(axis=(0, 2, 3))
    std = np.maximum(x_train.std(axis=(0, 2, 3)), 1e-3)  # a constant channel must not divide by 0

    def prepare(idx):
        x = (images.x[idx].astype(np.float32) / 255.0 - mean[:, None, None]) / std[:, None, None]
        return torch.from_numpy(x).to(device), torch.from_numpy(images.y[idx]).to(device)

    (xt, yt), (xv, yv), (xs, ys) = prepare(train), prepare(val), prepare(test)
    return Dataset(xt, yt, xv, yv, xs, ys, images.classes,
                   tuple(float(m) for m in mean), tuple(float(s) for s in std),
                   fingerprint(images), images.skipped)


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
