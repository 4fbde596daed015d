"""Dataset loaders on small files the tests write: IDX, CIFAR pickle batches, image folders."""

from __future__ import annotations

import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT, cli_env, load, run_cli, states
from hpsearch.config import DataConfig
from hpsearch.data import DataError, load_images, split, split_indices
from hpsearch.images import cache_dir, digits_images, folder_images

RNG = np.random.default_rng(0)


def write_idx(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    magic = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)  # unsigned bytes, ndim dimensions
    dims = struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(magic + dims + array.astype(np.uint8).tobytes())


def write_mnist(root: Path, folder: str, per_class: int = 10) -> None:
    raw = root / folder / "raw"
    for prefix, n in (("train", per_class), ("t10k", 3)):
        labels = np.repeat(np.arange(10), n)
        images = RNG.integers(0, 256, (len(labels), 28, 28))
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_mnist_files_are_read_pooled_and_resized(tmp_path, name, folder):
    write_mnist(tmp_path, folder)
    images = load_images(DataConfig(dataset=name, image_size=16, data_dir=str(tmp_path)))
    assert images.x.shape == (130, 1, 16, 16) and images.x.dtype == np.uint8
    assert np.bincount(images.y).tolist() == [13] * 10
    assert len(images.classes) == 10


def test_cifar10_batches_are_read(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    names = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
             "test_batch"]
    for name in names:
        labels = list(range(10)) * 2
        data = RNG.integers(0, 256, (20, 3072), dtype=np.uint8)
        (folder / name).write_bytes(pickle.dumps({b"data": data, b"labels": labels}))
    classes = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse",
               b"ship", b"truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": classes}))
    images = load_images(DataConfig(dataset="cifar10", image_size=8, data_dir=str(tmp_path)))
    assert images.x.shape == (120, 3, 8, 8)
    assert images.classes[0] == "airplane" and np.bincount(images.y).tolist() == [12] * 10


def test_absent_files_offline_name_the_folder_and_files(tmp_path, monkeypatch):
    # A proxy on a closed local port makes every download fail at once, as offline does.
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    with pytest.raises(DataError) as err:
        load_images(DataConfig(dataset="mnist", data_dir=str(tmp_path)))
    message = str(err.value)
    assert str(tmp_path / "MNIST" / "raw") in message
    assert "train-images-idx3-ubyte" in message and "t10k-labels-idx1-ubyte" in message


def write_folder_tree(root: Path, per_class: int = 12) -> None:
    """Two classes of PNG and JPEG files in RGB, greyscale and RGBA, one corrupt file, a
    hidden folder and a stray text file."""
    for label, colour in (("cats", (200, 30, 30)), ("dogs", (30, 30, 200))):
        folder = root / label
        folder.mkdir(parents=True)
        for i in range(per_class):
            mode, ext = [("RGB", "png"), ("L", "jpg"), ("RGBA", "png")][i % 3]
            img = Image.new("RGB", (20 + i, 24), colour).convert(mode)
            img.save(folder / f"{i}.{ext}")
    (root / "cats" / "broken.png").write_bytes(b"\x89PNG not really")
    (root / "dogs" / "notes.txt").write_text("not an image")
    hidden = root / ".thumbnails"
    hidden.mkdir()
    Image.new("RGB", (8, 8)).save(hidden / "x.png")


def test_folder_of_class_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("HPSEARCH_CACHE_DIR", str(tmp_path / "cache"))
    write_folder_tree(tmp_path / "pets")
    images = folder_images(tmp_path / "pets", 16)
    assert images.classes == ("cats", "dogs")
    assert images.x.shape == (24, 3, 16, 16) and images.x.dtype == np.uint8
    assert images.skipped == (str(Path("cats") / "broken.png"),)
    # Red cats and blue dogs survive decoding, whatever the file's mode.
    red = images.x[images.y == 0][:, 0].mean()
    assert red > images.x[images.y == 1][:, 0].mean() + 50


def test_folder_decodes_once_and_reads_the_cache_after(tmp_path, monkeypatch):
    monkeypatch.setenv("HPSEARCH_CACHE_DIR", str(tmp_path / "cache"))
    write_folder_tree(tmp_path / "pets")
    first = folder_images(tmp_path / "pets", 16)
    cached = list(cache_dir().glob("*.npz"))
    assert len(cached) == 1
    # Mark the cached copy: a second load that returns the mark did not decode again.
    with np.load(cached[0]) as z:
        parts = dict(z)
    parts["x"] = np.zeros_like(parts["x"])
    np.savez(cached[0], **parts)
    assert folder_images(tmp_path / "pets", 16).x.max() == 0
    # A new image size is another cache entry, decoded from the files.
    assert folder_images(tmp_path / "pets", 8).x.max() == first.x.max()


def test_16_bit_and_rotated_images_are_decoded_as_shown(tmp_path, monkeypatch):
    monkeypatch.setenv("HPSEARCH_CACHE_DIR", str(tmp_path / "cache"))
    for name, level in (("dark", 8_000), ("bright", 60_000)):
        (tmp_path / "scans" / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((10, 10), level, np.uint16)).save(
                tmp_path / "scans" / name / f"{i}.png")
    scans = folder_images(tmp_path / "scans", 8)
    assert scans.x.shape[1] == 1
    means = [scans.x[scans.y == k].mean() for k in (0, 1)]  # classes sort: bright, dark
    assert means[0] == pytest.approx(60_000 / 257, abs=1)
    assert means[1] == pytest.approx(8_000 / 257, abs=1)

    # A phone photo stored sideways, with an EXIF tag saying "rotate 90 degrees".
    top_white = np.zeros((16, 16, 3), np.uint8)
    top_white[:8] = 255
    for name in ("a", "b"):
        (tmp_path / "photos" / name).mkdir(parents=True)
        for i in range(2):
            exif = Image.Exif()
            exif[0x0112] = 6  # orientation: the viewer turns it 90 degrees clockwise
            Image.fromarray(top_white).save(tmp_path / "photos" / name / f"{i}.jpg", exif=exif)
    photo = folder_images(tmp_path / "photos", 16).x[0].mean(axis=0)
    # Shown upright, the white half is on the right, not on top.
    assert photo[:, 8:].mean() > 200 and photo[:, :8].mean() < 50


def test_the_fingerprint_is_of_the_source_not_of_the_resizing():
    small = load_images(DataConfig(image_size=8))
    large = load_images(DataConfig(image_size=16))
    assert small.source == large.source


def test_folder_with_one_class_is_refused(tmp_path):
    (tmp_path / "only").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "only" / "a.png")
    (tmp_path / ".hidden").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / ".hidden" / "a.png")
    with pytest.raises(DataError, match="at least two sub-folders"):
        folder_images(tmp_path, 8)


def test_splits_are_stratified_fixed_by_seed_and_normalised_on_train(tmp_path):
    cfg = DataConfig(image_size=8)
    images = load_images(cfg)
    a = split(images, cfg, seed=3, device=torch.device("cpu"))
    b = split(images, cfg, seed=3, device=torch.device("cpu"))
    c = split(images, cfg, seed=4, device=torch.device("cpu"))
    assert a.x_val.equal(b.x_val) and not a.x_val.equal(c.x_val)
    assert len(a.y_train) + len(a.y_val) + len(a.y_test) == len(images.y)
    shares = np.bincount(a.y_val.numpy()) / len(a.y_val)
    assert np.allclose(shares, np.bincount(images.y) / len(images.y), atol=0.02)
    assert a.x_train.dtype == torch.uint8 and a.x_train.is_contiguous(
        memory_format=torch.channels_last)
    x = a.normalized(a.x_train)
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1) < 1e-2


def test_a_study_runs_on_an_image_folder(study_file, store, tmp_path):
    write_folder_tree(tmp_path / "pets")
    out = run_cli("--config", study_file, "--storage", store, "--trials", 1,
                  "--set", f"data.dataset='folder:{tmp_path / 'pets'}'",
                  HPSEARCH_CACHE_DIR=str(tmp_path / "cache"))
    assert out.returncode == 0, out.stderr
    assert "skipped 1 unreadable image file(s)" in out.stderr
    assert states(load(store)) == {"COMPLETE": 1}


def test_digits_and_their_split_load_from_the_cache_without_scikit_learn(tmp_path):
    """The second process reads what the first computed and never imports scikit-learn; a
    damaged cache is computed again."""
    code = ("import hashlib, sys; from hpsearch.config import load_config; "
            "from hpsearch.data import load_dataset; d = load_dataset(load_config(None).data, 3); "
            "h = hashlib.sha256(); "
            "[h.update(t.numpy().tobytes()) for t in (d.x_train, d.y_train, d.x_val, d.y_val, "
            "d.x_test, d.y_test)]; print(h.hexdigest(), d.fingerprint, 'sklearn' in sys.modules)")

    def load_in_a_process() -> list:
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                             text=True, check=True, env=cli_env(HPSEARCH_CACHE_DIR=str(tmp_path)))
        return out.stdout.split()

    first, second = load_in_a_process(), load_in_a_process()
    assert first[-1] == "True" and second == first[:-1] + ["False"]
    files = sorted(tmp_path.rglob("*.npz"))
    assert [f.parent.name for f in files] == ["datasets", "splits"]
    for f in files:
        f.write_bytes(b"not a cache file")
    assert load_in_a_process() == first


def test_a_cache_folder_that_is_a_file_costs_only_the_work(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("HPSEARCH_CACHE_DIR", str(blocker))
    images = digits_images(8)
    assert images.x.shape == (1797, 1, 8, 8)
    assert sum(map(len, split_indices(images.y, DataConfig(), 0))) == 1797
