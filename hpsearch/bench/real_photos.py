"""Real photographs as a folder of class folders, from a package that ships them: the
panel's real data set, nothing downloaded.

scikit-image carries in its wheel a subset of Labeled Faces in the Wild
(`skimage.data.lfw_subset`, the file skimage/data/lfw_subset.npy): 100 crops of faces and
100 crops of the backgrounds of the same news photographs, 25 x 25 pixels in grey levels.
They become `face/` and `not-face/`, one PNG per crop. The bench extra installs the package
(`pip install 'hpsearch[bench]'`); without it the panel leaves this data set out.

A marker file records what was written: a folder that holds it is reused as it is, so the
files keep their times and hpsearch's cache of the decoded folder stays valid.

`python -m hpsearch.bench.real_photos DIR` writes one.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np

from hpsearch.bench.photo_folder import read_marker

CLASSES = ("face", "not-face")  # lfw_subset's first 100 images are faces, the rest not
MARKER = ".real-photos.json"  # hidden: neither hpsearch nor ImageFolder takes it for a class
VERSION = 1  # bump when the writing changes: older folders are then written again
PACKAGE = "scikit-image"


def available() -> bool:
    """Whether the package that ships the photographs is installed."""
    return importlib.util.find_spec("skimage") is not None


def missing_reason() -> str:
    return f"{PACKAGE} is not installed (pip install 'hpsearch[bench]')"


def make_real_folder(root: Path) -> Path:
    """`root` holding one sub-folder of PNGs per class of scikit-image's LFW subset; written
    unless a complete folder of the same source is there already."""
    from skimage import data

    root = Path(root)
    settings = {"version": VERSION, "source": f"{PACKAGE} {importlib.metadata.version(PACKAGE)}"
                                              " data.lfw_subset"}
    if read_marker(root, MARKER) == settings:
        return root
    (root / MARKER).unlink(missing_ok=True)
    images = _to_8_bit(data.lfw_subset())
    half = len(images) // 2
    for label, name in enumerate(CLASSES):
        shutil.rmtree(root / name, ignore_errors=True)
        (root / name).mkdir(parents=True)
        for index, pixels in enumerate(images[label * half:(label + 1) * half]):
            _save_png(pixels, root / name / f"{index:03d}.png")
    (root / MARKER).write_text(json.dumps(settings) + "\n")
    return root


def _to_8_bit(images: np.ndarray) -> np.ndarray:
    """Grey levels 0..255 whether the package stores them as floats in 0..1 (it does, though
    its docstring says uint8) or as bytes."""
    if images.dtype == np.uint8:
        return images
    return np.clip(np.round(images * 255.0), 0, 255).astype(np.uint8)


def _save_png(pixels: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(pixels, "L").save(path)


def main() -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", metavar="DIR")
    args = parser.parse_args()
    if not available():
        print(f"python -m hpsearch.bench.real_photos: error: {missing_reason()}")
        return 2
    root = make_real_folder(Path(args.folder))
    counts = ", ".join(f"{len(list((root / c).glob('*.png')))} {c}" for c in CLASSES)
    print(f"{root}: {counts}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
