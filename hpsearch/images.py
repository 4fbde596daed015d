"""Datasets by name -> decoded uint8 images at the study's size, cached on local disk.

The built-in datasets come from scikit-learn (digits) or their standard files (MNIST,
Fashion-MNIST, CIFAR-10); a folder of class folders is decoded on every core, JPEGs much
larger than the image size in Pillow's draft mode, straight into one array. What was decoded
is kept under cache_dir() so that a restart does not read a slow drive again.
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
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from hpsearch.errors import DataError

Progress = Optional[Callable[[int, int], None]]  # (images decoded, of how many)


@dataclass(frozen=True)
class Images:
    """Decoded images before splitting: uint8 (N, C, S, S) (folders: a view of N, S, S, C
    memory) and int64 labels."""

    x: np.ndarray
    y: np.ndarray
    classes: tuple
    source: str  # sha256 of the source images before resizing: the same on any torch or PIL
    skipped: tuple = ()  # files that could not be decoded (folder datasets only)


def digits_images(image_size: int) -> Images:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, 0..16 grey levels), cached
    on local disk after the first load: importing scikit-learn's loaders takes as long as one
    or two of the default study's trials."""
    key = versioned_key("digits", image_size)
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


def resize(x: np.ndarray, size: int, chunk: int = 1024) -> np.ndarray:
    """uint8 (N, C, H, W) -> uint8 (N, C, size, size), antialiased when shrinking, as a view
    of (N, size, size, C) memory, the layout the tensors take. A chunk of images at a time
    goes through float32, so that the host never holds the dataset as floats."""
    n, c = x.shape[:2]
    out = np.empty((n, size, size, c), dtype=np.uint8)
    for start in range(0, n, chunk):
        part = x[start:start + chunk]
        if part.shape[-2:] != (size, size):
            t = F.interpolate(torch.from_numpy(part).float(), size=(size, size), mode="bilinear",
                              antialias=True, align_corners=False)
            part = t.round_().clamp_(0, 255).to(torch.uint8).numpy()
        out[start:start + chunk] = part.transpose(0, 2, 3, 1)
    return out.transpose(0, 3, 1, 2)


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


def folder_images(root: Path, image_size: int, on_progress: Progress = None,
                  listing: Optional[tuple] = None) -> Images:
    """A folder of class sub-folders of images, decoded once and cached on local disk.
    `on_progress(done, total)` hears of the decoding (not of a cache read)."""
    files, labels, classes = listing or folder_listing(root)
    key = _folder_key(root, files, image_size)
    cached = _read_cache(key)
    if cached is not None:
        return cached
    images = _decode_all(root, files, labels, classes, image_size, on_progress)
    _write_cache(key, images)
    return images


def folder_listing(root: Path) -> tuple:
    """(files, labels, classes) of a folder of class folders, refused if it is not one."""
    if not root.is_dir():
        raise DataError(f"data.dataset folder {root} does not exist or is not a folder; give "
                        f"yours with --set data.dataset=folder:PATH")
    files, labels, classes = list_image_files(root)
    if len(classes) < 2:
        raise DataError(
            f"folder {root} has {len(classes)} class folder(s) with images; a classifier needs "
            f"at least two sub-folders of images, one per class"
        )
    return files, labels, classes


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


def decode_threads() -> int:
    """Threads that decode a folder: two per core this process may use (Pillow decodes and
    resizes without holding the GIL, and a network drive keeps threads waiting on reads)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(4, 2 * (cores or 1))


def _decode_all(root, files, labels, classes, image_size, on_progress: Progress) -> Images:
    """Every file decoded straight into one (N, S, S, 3) array, so that the host holds the
    images about once while they load, not once per list of arrays and once stacked."""
    x = np.empty((len(files), image_size, image_size, 3), dtype=np.uint8)
    found: list = [None] * len(files)  # (is_greyscale, sha256) of each decoded file

    def one(i: int) -> None:
        found[i] = _decode(root / files[i], image_size, x[i])

    with ThreadPoolExecutor(max_workers=decode_threads()) as pool:
        for done, _ in enumerate(pool.map(one, range(len(files))), start=1):
            if on_progress is not None:
                on_progress(done, len(files))
    keep = [i for i, d in enumerate(found) if d is not None]
    skipped = tuple(files[i] for i, d in enumerate(found) if d is None)
    if not keep:
        raise DataError(f"none of the {len(files)} image files under {root} could be decoded")
    if skipped:
        x = x[keep]
    if all(found[i][0] for i in keep):
        x = np.ascontiguousarray(x[..., :1])  # greyscale: one channel of three equal ones
    y = np.asarray([labels[i] for i in keep], dtype=np.int64)
    source = hashlib.sha256("".join(f"{files[i]}\0{found[i][1]}\n" for i in keep).encode())
    return Images(x.transpose(0, 3, 1, 2), y, classes, source.hexdigest(), skipped)


def _decode(path: Path, size: int, out: np.ndarray):
    """Decode a file into `out` (S x S x 3 uint8); (is_greyscale, sha256 of the file), or None
    for a file PIL cannot read. The file is read once: on a network drive reading is the slow
    part. A JPEG much larger than the image size is decoded at a half, quarter or eighth of
    its size (Pillow's draft mode: the decoder skips the detail), still at least twice the
    image size, so the resize that follows keeps its antialiasing."""
    from PIL import Image

    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as img:
            if img.format == "JPEG":
                img.draft(img.mode, (2 * size, 2 * size))
            out[...], grey = fit_image(img, size)
            return grey, hashlib.sha256(data).hexdigest()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


def decode_file(path: Path, size: int) -> Optional[tuple]:
    """(S x S x 3 uint8 array, is_greyscale) of an image file, decoded exactly as a folder
    study decodes its files; None for a file PIL cannot read."""
    out = np.empty((size, size, 3), dtype=np.uint8)
    found = _decode(Path(path), size, out)
    return None if found is None else (out, found[0])


def fit_image(img, size: int) -> tuple:
    """(S x S x 3 uint8 array, is_greyscale) of an opened PIL image: turned as its EXIF
    says (as a phone photo is shown), cut to its centre square, resized."""
    from PIL import Image, ImageOps

    grey = img.mode in _GREY_MODES
    img = _to_8_bit(ImageOps.exif_transpose(img))
    if img.mode in ("RGBA", "LA", "PA", "P") or "transparency" in img.info:
        img = img.convert("RGBA")
        # Transparent pixels become white, as an image viewer shows them.
        img = Image.alpha_composite(Image.new("RGBA", img.size, "white"), img)
    img = ImageOps.fit(img.convert("RGB"), (size, size), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8), grey


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


_CACHE_VERSION = 3  # bump when decoding changes: old cache files are then never read


def _folder_key(root: Path, files: list, image_size: int) -> str:
    h = hashlib.sha256(f"v{_CACHE_VERSION} {root.resolve()} {image_size}\n".encode())
    for f in files:
        st = (root / f).stat()
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32]


def versioned_key(*parts) -> str:
    """A cache file's name for what scikit-learn computed: its version is part of the key."""
    text = " ".join(map(str, (f"v{_CACHE_VERSION}", importlib.metadata.version("scikit-learn"),
                              *parts)))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _read_cache(key: str, kind: str = "folders"):
    arrays = load_arrays(key, kind, ("x", "y", "classes", "source", "skipped"))
    if arrays is None:
        return None
    return Images(arrays["x"].transpose(0, 3, 1, 2), arrays["y"],
                  tuple(arrays["classes"].tolist()),
                  str(arrays["source"]), tuple(arrays["skipped"].tolist()))


def _write_cache(key: str, images: Images, kind: str = "folders") -> None:
    # Kept as N, S, S, C: the memory order of decoded folders and of the tensors they become.
    save_arrays(key, kind, x=images.x.transpose(0, 2, 3, 1), y=images.y,
                 classes=np.array(images.classes, dtype=str), source=np.array(images.source),
                 skipped=np.array(images.skipped, dtype=str))


def load_arrays(key: str, kind: str, names: tuple):
    """The named arrays cached under key, or None if the file is absent or damaged (then
    they are computed again)."""
    try:
        with np.load(cache_dir(kind) / f"{key}.npz", allow_pickle=False) as z:
            return {name: z[name] for name in names}
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        return None


def save_arrays(key: str, kind: str, **arrays) -> None:
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
