"""A chosen model, ready to use: the CNN with everything needed to feed it new images (class
names, image size, channels, normalisation), its predictions, and its folder on disk.

`Model.predict` decodes each image exactly as a folder study decoded its files (images.py:
EXIF turn, centre square, resize, channels), normalises it with the training split's
statistics and returns the top classes with their probabilities. `save` writes weights.pt
and config.json (what `hpsearch train --best` writes); `load_model(folder)` reads either back.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Iterable, Union

import numpy as np
import torch

from hpsearch.build import model_for
from hpsearch.errors import DataError
from hpsearch.images import decode_file, fit_image

log = logging.getLogger("hpsearch")

# The ITU-R 601-2 luma weights, as PIL's "L" conversion: a colour photo given to a model
# trained on greyscale images becomes the grey a greyscale file of it would hold.
LUMA = (0.299, 0.587, 0.114)
WEIGHTS_FILE, CONFIG_FILE = "weights.pt", "config.json"


@dataclass(frozen=True)
class Prediction:
    """One image's top classes, most probable first, with their probabilities (0..1)."""

    source: str  # the file's path, or "image N" for an image passed as an object
    classes: tuple
    probabilities: tuple

    @property
    def label(self) -> str:
        return self.classes[0]

    @property
    def probability(self) -> float:
        return self.probabilities[0]


class Model:
    """A trained CNN of hpsearch and how it sees images. `record` is best_config.json's
    content (params, classes, image_size, normalization, ...), as saved beside the weights."""

    def __init__(self, net: torch.nn.Module, record: dict):
        self.net = net.eval()
        self.record = record
        self.classes = tuple(record["classes"])
        self.image_size = int(record["image_size"])
        norm = record["normalization"]
        self.mean, self.std = tuple(norm["mean"]), tuple(norm["std"])
        self.channels = len(self.mean)

    def __repr__(self) -> str:
        return (f"<hpsearch Model: trial {self.record.get('trial')} of "
                f"{self.record.get('study')!r}, {len(self.classes)} classes, "
                f"{self.image_size} px, {self.channels} channel(s)>")

    @classmethod
    def from_state(cls, state: dict, record: dict) -> "Model":
        """The model of best_config.json's `record` with the weights `state`."""
        net = model_for(record["params"], _shape_of(record))
        net.load_state_dict(state)
        return cls(net, record)

    def to(self, device: Union[str, torch.device]) -> "Model":
        self.net.to(device)
        return self

    def images(self, inputs) -> tuple:
        """(uint8 tensor N x C x S x S, the source of each, the files that could not be read)
        of paths (files or folders), PIL images or uint8 arrays (H x W or H x W x C)."""
        decoded, sources, skipped = [], [], []
        for i, item in enumerate(_each(inputs)):
            if isinstance(item, (str, Path)):
                found = decode_file(Path(item), self.image_size)
                if found is None:
                    skipped.append(str(item))
                    continue
                pixels, source = found[0], str(item)
            else:
                pixels, source = _fit_object(item, self.image_size), f"image {i}"
            decoded.append(self._channels(pixels))
            sources.append(source)
        if not decoded:
            return torch.zeros((0, self.channels, self.image_size, self.image_size),
                               dtype=torch.uint8), sources, skipped
        x = torch.from_numpy(np.stack(decoded)).permute(0, 3, 1, 2)
        return x, sources, skipped

    def _channels(self, pixels: np.ndarray) -> np.ndarray:
        """S x S x 3 -> S x S x channels of the model: a greyscale model takes the grey of
        each pixel (of a grey image, its one value)."""
        if self.channels == 3:
            return pixels
        if (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all():
            return pixels[..., :1]
        grey = pixels.astype(np.float32) @ np.asarray(LUMA, dtype=np.float32)
        return np.clip(np.rint(grey), 0, 255).astype(np.uint8)[..., None]

    @torch.inference_mode()
    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities (N x classes, float32, on the host) of uint8 images, in the
        batches the study's own evaluation takes (train.eval_batch_size)."""
        from hpsearch.train import eval_batch_size

        device = next(self.net.parameters()).device
        batch_size = eval_batch_size(self.net, self.image_size, device)
        shape = (1, self.channels, 1, 1)
        mean = torch.tensor(self.mean, dtype=torch.float32, device=device).view(shape)
        std = torch.tensor(self.std, dtype=torch.float32, device=device).view(shape)
        self.net.eval()
        out = []
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size].to(device).contiguous(memory_format=torch.channels_last)
            logits = self.net((xb.to(torch.float32) / 255.0 - mean) / std).float()
            out.append(torch.softmax(logits, 1).cpu())
        return torch.cat(out) if out else torch.zeros((0, len(self.classes)))

    def predict(self, inputs, top_k: int = 1) -> list:
        """A Prediction for each readable image of `inputs`: a path, a folder (its images,
        in sorted order), a PIL image, a uint8 array, or a list of any of these. Files that
        are no image are left out (see `images` for which)."""
        x, sources, skipped = self.images(inputs)
        if skipped:
            log.warning(skipped_note(skipped))
        return self.predict_images(x, sources, top_k)

    def predict_images(self, x: torch.Tensor, sources: list, top_k: int = 1) -> list:
        p = self.probabilities(x)
        k = max(1, min(int(top_k), len(self.classes)))
        # The top class is the argmax, as the study's accuracy counts it (exact on ties).
        first = p.argmax(1)
        top = p.topk(k, dim=1)
        out = []
        for i, source in enumerate(sources):
            order = [int(first[i])] + [int(c) for c in top.indices[i] if int(c) != first[i]]
            order = order[:k]
            out.append(Prediction(source, tuple(self.classes[c] for c in order),
                                  tuple(round(float(p[i, c]), 6) for c in order)))
        return out

    def save(self, folder: Union[str, Path]) -> Path:
        """weights.pt and config.json in `folder` (made if missing); `load_model(folder)`
        reads them back."""
        from hpsearch.best import save_model

        folder = Path(folder).expanduser().resolve()
        save_model(self.net, self.record, folder)
        return folder


def skipped_note(skipped: list) -> str:
    """The files that were no image, in a few words."""
    shown = ", ".join(skipped[:3]) + (", ..." if len(skipped) > 3 else "")
    return (f"{len(skipped)} file{'s' * (len(skipped) != 1)} skipped (not an image PIL can "
            f"read: {shown})")


def save_csv(text: str, path: str) -> None:
    """Written whole under a temporary name, then renamed: never a half-written file."""
    with open(f"{path}.tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(f"{path}.tmp", path)


def predictions_csv(found: list, top_k: int) -> str:
    """CSV of Predictions: file, class, probability, then class_2, probability_2 ... up to
    top_k."""
    import csv
    import io

    header = ["file", "class", "probability"]
    header += [f"{name}_{k}" for k in range(2, top_k + 1) for name in ("class", "probability")]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for p in found:
        cells = [p.source]
        for name, prob in zip(p.classes, p.probabilities):
            cells += [name, f"{prob:.6f}"]
        writer.writerow(cells)
    return buf.getvalue()


def load_model(folder: Union[str, Path], device: Union[str, torch.device] = "cpu") -> Model:
    """The model saved in `folder` by `Model.save` or `hpsearch train --best`."""
    folder = Path(folder).expanduser()
    weights, config = folder / WEIGHTS_FILE, folder / CONFIG_FILE
    if not weights.is_file() or not config.is_file():
        raise DataError(f"{folder} holds no saved model ({WEIGHTS_FILE} and {CONFIG_FILE}); "
                        f"save one with `hpsearch train --best` or best_model().save(folder)")
    try:
        record = json.loads(config.read_text(encoding="utf-8"))
        state = torch.load(weights, map_location="cpu", weights_only=True)
        return Model.from_state(state, record).to(device)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:
        raise DataError(f"the model in {folder} cannot be read ({type(err).__name__}: "
                        f"{err}); save it again") from None


def _shape_of(record: dict) -> SimpleNamespace:
    """What model_for reads of a dataset, from best_config.json's record."""
    channels = len(record["normalization"]["mean"])
    return SimpleNamespace(channels=channels, classes=tuple(record["classes"]),
                           image_size=int(record["image_size"]))


def _each(inputs) -> Iterable:
    """Each image of `inputs`: a folder becomes its image files (class folders or not)."""
    items = [inputs] if isinstance(inputs, (str, Path, np.ndarray)) or _is_pil(inputs) \
        else list(inputs)
    for item in items:
        if isinstance(item, (str, Path)) and Path(item).is_dir():
            yield from image_files(Path(item))
        else:
            yield item


def image_files(folder: Path) -> list:
    """Every file under `folder` (class folders or not), sorted, hidden ones left out: those
    that are no image are counted as skipped when decoded, not passed over unseen."""
    return sorted(p for p in folder.rglob("*") if p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _is_pil(item) -> bool:
    return type(item).__module__.startswith("PIL.")


def _fit_object(item, size: int) -> np.ndarray:
    """A PIL image or a uint8 array (H x W grey, H x W x 1, 3 or 4 channels) as S x S x 3."""
    from PIL import Image

    if _is_pil(item):
        return fit_image(item, size)[0]
    a = np.asarray(item)
    if a.dtype != np.uint8 or a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 3, 4)):
        raise DataError(f"an image array must be uint8, H x W or H x W x 1, 3 or 4; got "
                        f"{a.dtype} of shape {a.shape}")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    return fit_image(Image.fromarray(a), size)[0]
