"""A folder of photo-like images for the photos benchmark, drawn, not downloaded.

Each class is a kind of shape (circle, square, triangle, ...) in a random colour, position,
size and rotation, on a textured background: a two-colour gradient, pixel noise and random
lines, with the shape's colour sometimes close to the background's, so that a small CNN at
32 pixels scores well short of perfect. The files are mixed as a folder of real photos is:
72 to 200 pixels per side in mixed aspect ratios, mostly JPEG at varied quality, some PNG,
some greyscale, and some JPEGs stored rotated with an EXIF orientation tag (0x0112) that
turns them upright when shown, as phone photos are.

That is the "easy" folder. The "hard" one (`difficulty="hard"`) is drawn otherwise, with the
same file mix: the shape is smaller, may run off the edge of the central square, and stands
out less from its background; fainter and smaller shapes of the other kinds lie behind it;
there are more and thicker lines, light that falls unevenly in a colour cast, more noise and
more blur. A person still names the class at a glance (the largest, clearest shape), a small
CNN at 32 pixels much less often.

Every image is drawn from its own random stream (seed, class, index, and a fourth number
for the hard folder), so the folder is the same on every machine and is drawn in parallel.
A marker file records what was drawn: a folder that holds it is reused as it is.

`python -m hpsearch.bench.photo_folder DIR --per-class 500 --difficulty hard` makes one.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "hexagon", "arrow")
MARKER = ".photo-folder.json"  # hidden: neither hpsearch nor ImageFolder takes it for a class
VERSION = 1  # bump when the drawing changes: older folders are then drawn again
DIFFICULTIES = ("easy", "hard")
HARD_STREAM = 1  # the hard folder's fourth number of each image's random stream
ORIENTATION = 0x0112  # EXIF: how a viewer turns the stored pixels to show the photo
# Orientation tag -> the transpose that stores an upright image so that the tag shows it
# upright (the inverse of the one a viewer, or ImageOps.exif_transpose, applies).
STORED = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90,
          8: Image.Transpose.ROTATE_270}


def make_photo_folder(root: Path, per_class: int = 500, classes: int = 6,
                      seed: int = 0, difficulty: str = "easy") -> Path:
    """`root` holding `classes` sub-folders of `per_class` images each, drawn at `difficulty`
    (easy or hard); drawn unless a complete folder of the same settings is there already."""
    if not 2 <= classes <= len(SHAPES):
        raise ValueError(f"classes must be 2..{len(SHAPES)}, got {classes}")
    if per_class < 1:
        raise ValueError(f"per_class must be at least 1, got {per_class}")
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {', '.join(DIFFICULTIES)}, got "
                         f"{difficulty!r}")
    root = Path(root)
    settings = {"version": VERSION, "per_class": per_class, "classes": classes, "seed": seed}
    if difficulty != "easy":  # the easy folder's marker stays as it was: its folders reused
        settings["difficulty"] = difficulty
    if read_marker(root) == settings:
        return root
    (root / MARKER).unlink(missing_ok=True)
    for name in SHAPES:  # what an earlier, other or unfinished drawing left
        shutil.rmtree(root / name, ignore_errors=True)
    for name in SHAPES[:classes]:
        (root / name).mkdir(parents=True)
    jobs = [(root, seed, label, start, min(start + 50, per_class), difficulty)
            for label in range(classes) for start in range(0, per_class, 50)]
    with ProcessPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        list(pool.map(_draw_files, jobs))
    (root / MARKER).write_text(json.dumps(settings) + "\n")
    return root


def read_marker(root: Path, name: str = MARKER):
    """The settings a drawn or written folder's marker file records; None without one."""
    try:
        return json.loads((root / name).read_text())
    except (OSError, ValueError):
        return None


def _draw_files(job: tuple) -> None:
    root, seed, label, start, stop, difficulty = job
    for index in range(start, stop):
        if difficulty == "hard":
            rng = np.random.default_rng([seed, label, index, HARD_STREAM])
            img = draw_hard_photo(rng, SHAPES[label])
        else:
            rng = np.random.default_rng([seed, label, index])
            img = draw_photo(rng, SHAPES[label])
        _save(img, rng, root / SHAPES[label] / f"{index:05d}")


def draw_photo(rng: np.random.Generator, shape: str) -> Image.Image:
    """One upright RGB image of `shape` on a textured background."""
    w, h = (int(v) for v in rng.integers(72, 201, size=2))
    img = _background(rng, w, h)
    draw = ImageDraw.Draw(img)
    side = min(w, h)
    radius = side * rng.uniform(0.28, 0.45)
    # Inside the central square, which is what a centre crop to a square keeps.
    cx = (w - side) / 2 + rng.uniform(radius, side - radius)
    cy = (h - side) / 2 + rng.uniform(radius, side - radius)
    colour = _shape_colour(rng, img.getpixel((int(cx), int(cy))))
    _draw_shape(draw, shape, cx, cy, radius, rng.uniform(0, 2 * math.pi), colour, rng)
    if rng.random() < 0.3:  # clutter over the shape too
        _random_line(draw, rng, w, h, width_max=max(1, side // 50))
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.5)))
    return img


def draw_hard_photo(rng: np.random.Generator, shape: str) -> Image.Image:
    """One upright RGB image of `shape` as the hard folder draws it: smaller, perhaps cut
    off by the crop, at lower contrast, among fainter shapes of other kinds, under clutter,
    uneven light and blur."""
    w, h = (int(v) for v in rng.integers(72, 201, size=2))
    img = _background(rng, w, h)
    draw = ImageDraw.Draw(img)
    side = min(w, h)
    for _ in range(int(rng.integers(1, 6))):
        _random_line(draw, rng, w, h, width_max=max(1, side // 25))
    radius = side * rng.uniform(0.2, 0.32)
    others = [s for s in SHAPES if s != shape]
    for _ in range(int(rng.integers(0, 3))):  # behind the shape, at most 0.55 of its size
        x, y = float(rng.uniform(0, w)), float(rng.uniform(0, h))
        faint = _faint_colour(rng, img.getpixel((int(x), int(y))))
        _draw_shape(draw, str(rng.choice(others)), x, y, radius * rng.uniform(0.3, 0.55),
                    rng.uniform(0, 2 * math.pi), faint, rng)
    # The centre inside the central square, up to a quarter of the radius from its edge: the
    # crop to a square may cut off a part of the shape.
    reach = side - 1.5 * radius
    cx = (w - side) / 2 + 0.75 * radius + rng.uniform(0, reach)
    cy = (h - side) / 2 + 0.75 * radius + rng.uniform(0, reach)
    colour = _shape_colour(rng, img.getpixel((int(cx), int(cy))), contrast=40, close=0.15)
    _draw_shape(draw, shape, cx, cy, radius, rng.uniform(0, 2 * math.pi), colour, rng)
    for _ in range(int(rng.integers(0, 3))):  # clutter over the shape too
        _random_line(draw, rng, w, h, width_max=max(1, side // 40))
    img = _uneven_light(rng, img)
    if rng.random() < 0.5:
        img = img.filter(ImageFilter.GaussianBlur(side * rng.uniform(0.004, 0.016)))
    return img


def _faint_colour(rng: np.random.Generator, under: tuple) -> tuple:
    return tuple(int(np.clip(c + rng.normal(0, 40), 0, 255)) for c in under)


def _uneven_light(rng: np.random.Generator, img: Image.Image) -> Image.Image:
    """Light falling from one side, dimmer or brighter overall, in a colour cast, with
    sensor noise on top."""
    w, h = img.size
    angle = rng.uniform(0, 2 * math.pi)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    t = x * math.cos(angle) + y * math.sin(angle)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    dark, bright = rng.uniform(0.35, 0.8), rng.uniform(0.95, 1.35)
    light = (dark + (bright - dark) * t)[..., None] * rng.uniform(0.8, 1.2, size=3)
    pixels = np.asarray(img, np.float32) * light + rng.normal(0, rng.uniform(4, 16), (h, w, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def _background(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """A gradient between two random colours in a random direction, noise and lines."""
    a, b = rng.uniform(0, 255, size=(2, 3))
    angle = rng.uniform(0, 2 * math.pi)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    t = (x * math.cos(angle) + y * math.sin(angle))
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    pixels = a + (b - a) * t[..., None]
    coarse = rng.normal(128, rng.uniform(5, 20), size=(h // 8 + 1, w // 8 + 1, 3))
    blotches = Image.fromarray(np.clip(coarse, 0, 255).astype(np.uint8), "RGB")
    pixels += np.asarray(blotches.resize((w, h), Image.Resampling.BICUBIC), np.float32) - 128
    pixels += rng.normal(0, rng.uniform(3, 12), size=(h, w, 3))
    img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(0, 4))):
        _random_line(draw, rng, w, h, width_max=max(1, min(w, h) // 40))
    return img


def _random_line(draw: ImageDraw.ImageDraw, rng: np.random.Generator, w: int, h: int,
                 width_max: int) -> None:
    points = [(float(rng.uniform(0, w)), float(rng.uniform(0, h))) for _ in range(2)]
    colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
    draw.line(points, fill=colour, width=int(rng.integers(1, width_max + 1)))


def _shape_colour(rng: np.random.Generator, under: tuple, contrast: float = 70,
                  close: float = 0.1) -> tuple:
    """A random colour whose luma differs from the background's under the shape by at least
    `contrast`; a `close` share of the time one near the background's instead."""
    if rng.random() < close:
        return tuple(int(np.clip(c + rng.normal(0, 60), 0, 255)) for c in under)
    for _ in range(20):
        colour = rng.integers(0, 256, size=3)
        if abs(_luma(colour) - _luma(under)) >= contrast:
            break
    return tuple(int(c) for c in colour)


def _luma(rgb) -> float:
    r, g, b = (float(c) for c in rgb)
    return 0.299 * r + 0.587 * g + 0.114 * b


def _draw_shape(draw, shape: str, cx: float, cy: float, r: float, turn: float,
                colour: tuple, rng: np.random.Generator) -> None:
    def polygon(radii: list, offset: float = 0.0) -> list:
        n = len(radii)
        return [(cx + r * k * math.cos(turn + offset + 2 * math.pi * i / n),
                 cy + r * k * math.sin(turn + offset + 2 * math.pi * i / n))
                for i, k in enumerate(radii)]

    if shape in ("circle", "ring"):
        squash = rng.uniform(0.8, 1.0)  # a circle seen a little from the side
        box = [cx - r, cy - r * squash, cx + r, cy + r * squash]
        if shape == "circle":
            draw.ellipse(box, fill=colour)
        else:
            draw.ellipse(box, outline=colour, width=max(2, int(r * rng.uniform(0.2, 0.35))))
    elif shape == "square":
        draw.polygon(polygon([1.0] * 4), fill=colour)
    elif shape == "triangle":
        draw.polygon(polygon([1.0] * 3), fill=colour)
    elif shape == "hexagon":
        draw.polygon(polygon([1.0] * 6), fill=colour)
    elif shape == "star":
        draw.polygon(polygon([1.0, 0.45] * 5), fill=colour)
    elif shape == "cross":
        arm = 0.3
        corner = math.hypot(1.0, arm)
        points = []
        for i in range(4):  # each arm's two outer corners and the inner corner after them
            base = turn + i * math.pi / 2
            for a, k in ((-math.atan(arm), corner), (math.atan(arm), corner),
                         (math.pi / 4, arm * math.sqrt(2))):
                points.append((cx + r * k * math.cos(base + a), cy + r * k * math.sin(base + a)))
        draw.polygon(points, fill=colour)
    elif shape == "arrow":
        outline = [(1.0, 0.0), (0.1, 0.6), (0.1, 0.25), (-0.9, 0.25), (-0.9, -0.25),
                   (0.1, -0.25), (0.1, -0.6)]
        c, s = math.cos(turn), math.sin(turn)
        draw.polygon([(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in outline],
                     fill=colour)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def _save(img: Image.Image, rng: np.random.Generator, stem: Path) -> None:
    """As PNG one time in five, otherwise JPEG at quality 40..95; greyscale one time in six;
    one JPEG in eight stored rotated under an EXIF orientation tag."""
    if rng.random() < 1 / 6:
        img = img.convert("L")
    if rng.random() < 0.2:
        img.save(stem.with_suffix(".png"))
        return
    quality = int(rng.integers(40, 96))
    if rng.random() < 1 / 8:
        tag = int(rng.choice(list(STORED)))
        exif = Image.Exif()
        exif[ORIENTATION] = tag
        img.transpose(STORED[tag]).save(stem.with_suffix(".jpg"), quality=quality,
                                        exif=exif.tobytes())
    else:
        img.save(stem.with_suffix(".jpg"), quality=quality)


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", metavar="DIR")
    parser.add_argument("--per-class", type=int, default=500, metavar="N")
    parser.add_argument("--classes", type=int, default=6, metavar="N")
    parser.add_argument("--seed", type=int, default=0, metavar="N")
    parser.add_argument("--difficulty", choices=DIFFICULTIES, default="easy")
    args = parser.parse_args()
    root = make_photo_folder(Path(args.folder), args.per_class, args.classes, args.seed,
                             args.difficulty)
    print(f"{root}: {args.classes} classes x {args.per_class} images, {args.difficulty}")


if __name__ == "__main__":
    main()
