"""A user's own photos: the default space, augmentation on the device, the head and width
growth, uint8 data that fits the memory, and folders that decode fast and say how far."""

from __future__ import annotations

import subprocess
import sys
from functools import partial

import numpy as np
import optuna
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import ROOT, cli_env, run_cli
from hpsearch import batches, data as data_module, images as images_module, train
from hpsearch.augment import Augment, Draws, apply
from hpsearch.config import DataConfig, load_config
from hpsearch.params import Fixed
from hpsearch.data import DataError, load_dataset, placement, split
from hpsearch.images import digits_images, folder_images
from hpsearch.model import block_widths, build_cnn, count_params
from hpsearch.space import searched_names, suggest_params
from hpsearch.errors import OutOfMemory
from hpsearch.train import FitSettings, evaluate, fit

CPU = torch.device("cpu")


# --- the default space ------------------------------------------------------------------


def test_a_study_file_without_space_searches_the_default_space(tmp_path):
    path = tmp_path / "photos.toml"
    path.write_text('[data]\ndataset = "digits"\n[train]\nepochs = 2\n')
    cfg = load_config(path)
    assert searched_names(cfg) == ["lr", "depth", "width", "dropout", "optimizer"]
    # What [space] names replaces the default; the rest keeps it.
    cfg = load_config(path, ["space.lr=0.01", "space.head=['flatten', 'gap']"])
    assert searched_names(cfg) == ["depth", "width", "dropout", "optimizer", "head"]
    params = suggest_params(optuna.trial.FixedTrial(
        {"depth": 2, "width": 8, "dropout": 0.1, "optimizer": "adam", "head": "gap"}), cfg)
    assert params["lr"] == 0.01 and params["head"] == "gap" and params["growth"] == 1


def test_head_growth_and_augment_default_by_dataset_and_image_size():
    def fixed(cfg):  # the shape and augmentation (the schedule: tests/test_schedule.py)
        return {p.name: p.value for p in cfg.space if isinstance(p, Fixed)
                and p.name not in ("schedule", "label_smoothing", "decay_on")}

    assert fixed(load_config(None)) == {"head": "flatten", "growth": 1, "augment": "none"}
    photos = load_config(ROOT / "studies" / "photos.toml")
    assert photos.data.image_size == 64
    assert fixed(photos) == {"head": "flatten", "growth": 1, "augment": "crop+flip"}
    cifar = load_config(ROOT / "studies" / "cifar10.toml")
    assert cifar.data.dataset == "cifar10" and fixed(cifar) == {"augment": "crop+flip"}
    folder = load_config(None, ["data.dataset='folder:x'", "data.image_size=64"])
    assert fixed(folder) == {"head": "flatten", "growth": 1, "augment": "crop+flip"}
    listed = load_config(None, ["train.augment=['flip', 'crop']"])
    assert fixed(listed)["augment"] == "crop+flip"
    searched = load_config(None, ["space.augment=[[], ['crop', 'flip']]"])
    assert [p.values for p in searched.space if p.name == "augment"] == [("none", "crop+flip")]


def test_a_study_with_nothing_to_search_says_so_once(tmp_path):
    path = tmp_path / "seeds.toml"
    path.write_text("[space]\nlr = 0.01\ndepth = 1\nwidth = 4\ndropout = 0.0\n"
                    'optimizer = "adam"\n[data]\nimage_size = 8\n[train]\nepochs = 1\n')
    out = run_cli("--config", path, "--storage", f"sqlite:///{tmp_path / 's.db'}",
                  "--trials", 2, HPSEARCH_CACHE_DIR=str(tmp_path / "cache"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("only by their seeds") == 1


# --- augmentation -----------------------------------------------------------------------


def test_crops_reflect_the_border_and_flips_mirror(tmp_path):
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.uint8).reshape(2, 3, 8, 8)
    none = Draws(torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long),
                 torch.tensor([False, True]))
    out = apply(x, none)
    assert torch.equal(out[0], x[0]) and torch.equal(out[1], x[1].flip(-1))
    assert out.is_contiguous(memory_format=torch.channels_last)
    shifted = Draws(torch.tensor([1, -1]), torch.tensor([-1, 1]), torch.tensor([False, False]))
    padded = F.pad(x.float(), (1, 1, 1, 1), mode="reflect")
    reference = torch.stack([padded[0, :, 2:10, 0:8], padded[1, :, 0:8, 2:10]])
    assert torch.equal(apply(x, shifted).float(), reference)


def test_augmentations_are_drawn_from_the_trials_generator():
    crop = Augment.named("crop+flip", 64)
    assert crop.pad == 8 and crop.flip and not Augment.named("none", 64).active
    a = crop.draw(100, torch.Generator().manual_seed(3))
    b = crop.draw(100, torch.Generator().manual_seed(3))
    assert torch.equal(a.dy, b.dy) and torch.equal(a.flip, b.flip)
    assert int(a.dy.min()) == -8 and int(a.dx.max()) == 8 and 20 < int(a.flip.sum()) < 80
    assert Augment.named("none", 64).draw(100, torch.Generator()) is None


def test_augmentation_changes_what_trains_and_repeats_with_the_seed():
    data = load_dataset(DataConfig(image_size=8), 0)

    def run(augment):
        torch.manual_seed(0)
        model = build_cnn(in_channels=1, num_classes=10, image_size=8, depth=1, width=4)
        return fit(model, data, FitSettings(epochs=1, batch_size=64, lr=0.01, augment=augment),
                   CPU).train_loss

    assert run("crop+flip") == run("crop+flip") != run("none")


# --- the model --------------------------------------------------------------------------


def test_width_growth_doubles_up_to_the_cap_and_gap_keeps_the_classifier_small():
    assert block_widths(3, 32, 1) == [32, 32, 32]
    assert block_widths(4, 64, 2) == [64, 128, 256, 256]
    assert block_widths(2, 512, 2) == [512, 512]  # never narrower than asked
    flat = build_cnn(in_channels=3, num_classes=6, image_size=64, depth=2, width=16)
    gap = build_cnn(in_channels=3, num_classes=6, image_size=64, depth=2, width=16, head="gap",
                    growth=2)
    assert flat[-1].in_features == 16 * 16 * 16 and gap[-1].in_features == 32
    assert count_params(gap) < count_params(flat)
    x = torch.randn(2, 3, 64, 64)
    assert gap(x).shape == flat(x).shape == (2, 6)


def test_a_padded_gap_net_computes_the_plain_one():
    from hpsearch.model import PaddedNet

    torch.manual_seed(0)
    model = build_cnn(in_channels=3, num_classes=6, image_size=16, depth=2, width=6, head="gap")
    padded = PaddedNet(model, 16)
    assert padded.net_width == 16
    x = torch.randn(4, 3, 16, 16)
    model.eval()
    padded.net.eval()
    assert torch.allclose(model(x), padded.net(x), atol=1e-5)


# --- data that fits ---------------------------------------------------------------------


def test_images_stay_uint8_and_the_test_split_on_the_host():
    data = load_dataset(DataConfig(image_size=8), 0)
    assert data.x_train.dtype == data.x_val.dtype == data.x_test.dtype == torch.uint8
    assert data.x_test.device == CPU and not data.on_host
    x = data.normalized(data.x_val[:10], torch.bfloat16)
    assert x.dtype == torch.bfloat16


def test_host_memory_too_small_is_one_line_naming_bytes_and_a_size_that_fits(
        tmp_path, monkeypatch):
    monkeypatch.setattr(data_module, "host_free_bytes", lambda: 300_000)
    cfg = DataConfig(image_size=32)
    with pytest.raises(DataError, match=r"1,797 images at 32 px need 3.7 MB .* "
                                        r"data.image_size = 9 or less"):
        placement(cfg, (1797, 1), CPU)
    # The whole run, in a process of its own whose host has 300 kB free.
    store = tmp_path / "s.db"
    code = ("import sys; import hpsearch.data as d; d.host_free_bytes = lambda: 300_000; "
            "sys.argv = ['run_study.py', *sys.argv[1:]]; import runpy; "
            f"runpy.run_path({str(ROOT / 'run_study.py')!r}, run_name='__main__')")
    out = subprocess.run([sys.executable, "-c", code, "--storage", f"sqlite:///{store}",
                          "--trials", "1", "--set", "data.image_size=32"], cwd=ROOT,
                         capture_output=True, text=True, env=cli_env(
                             HPSEARCH_CACHE_DIR=str(tmp_path / "cache")), timeout=300)
    err = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(err) == 1 and "free" in err[0], out.stderr
    assert not store.exists()


def test_data_too_large_for_the_device_trains_from_host_memory(monkeypatch):
    """The path a GPU takes when the images do not fit it: the data stays on the host and
    each batch goes through the staging buffers; training is the same as from the device."""
    cfg = DataConfig(image_size=8)
    monkeypatch.setattr(data_module, "device_free_bytes", lambda device: 10_000)
    assert placement(cfg, (1797, 1), CPU) == "host"
    data = load_dataset(cfg, 0)

    def run():
        torch.manual_seed(0)
        model = build_cnn(in_channels=1, num_classes=10, image_size=8, depth=1, width=4)
        settings = FitSettings(epochs=2, batch_size=64, lr=0.01, augment="crop+flip")
        return fit(model, data, settings, CPU)

    direct = run()
    monkeypatch.setattr(train, "Rows", partial(batches.Rows, staged=True))
    staged = run()
    assert staged.train_loss == direct.train_loss and staged.val_acc == direct.val_acc
    rows = batches.Rows(data.x_train, CPU, 64, staged=True)
    first, second = rows.take(torch.arange(64)), rows.take(torch.arange(64, 128))
    assert torch.equal(first, data.x_train[:64]) and torch.equal(second, data.x_train[64:128])


def test_only_two_staging_buffers_are_pinned_never_the_images(monkeypatch):
    """Images that stay in host memory for a GPU are not page-locked (torch's host allocator
    would round 5 GB up to 8 GB): only the two staging buffers of one batch are, as the
    allocator rounds them. The allocator's answers are faked and recorded."""
    assert batches.pinned_size(5 * 10**9) == 2**33 and batches.pinned_size(4096) == 4096
    images = digits_images(8)
    data = split(images, DataConfig(image_size=8), 0, CPU, where="host")
    assert not data.x_train.is_pinned()
    asked = []
    real_empty = torch.empty

    def empty(shape, dtype, pin_memory=False):
        asked.append((tuple(shape), pin_memory))
        return real_empty(shape, dtype=dtype)

    monkeypatch.setattr(batches.torch, "empty", empty)
    monkeypatch.setattr(batches, "_pinned", {"live": 0, "peak": 0})
    rows = batches.Rows(data.x_train, torch.device("cuda", 0), batch_size=100, staged=True)
    rows._buffer(100), rows._buffer(100), rows._buffer(100)  # three batches, two buffers
    batch = 100 * 8 * 8 * 1
    assert asked == [((100, 8, 8, 1), True)] * 2
    assert batches.pinned_total() == 2 * batches.pinned_size(batch) == 2 * 8192
    assert batches.pinned_total() < data.x_train.numel()  # 16 KiB of 80 KiB of images
    # Refused (the system's limit on locked memory), a buffer is ordinary memory: the copies
    # block, and training still runs.

    def refuse(shape, dtype, pin_memory=False):
        if pin_memory:
            raise RuntimeError("cudaErrorMemoryAllocation")
        return real_empty(shape, dtype=dtype)

    monkeypatch.setattr(batches.torch, "empty", refuse)
    buf = batches.staging_buffer((4, 8, 8, 1), torch.uint8, torch.device("cuda", 0))
    assert buf.shape == (4, 8, 8, 1) and batches.pinned_total() == 2 * 8192
    # The next epoch's buffers take the blocks its freed ones left: no more is locked.
    monkeypatch.setattr(batches.torch, "empty", empty)
    del rows
    again = batches.Rows(data.x_train, torch.device("cuda", 0), batch_size=100, staged=True)
    again._buffer(100), again._buffer(100)
    assert batches._pinned["live"] == 2 * 8192 and batches.pinned_total() == 2 * 8192


def test_evaluation_halves_its_batch_when_out_of_memory_and_names_itself(monkeypatch):
    data = load_dataset(DataConfig(image_size=8), 0)
    model = build_cnn(in_channels=1, num_classes=10, image_size=8, depth=1, width=4)
    forward = model.forward
    sizes = []

    def small_memory(x):
        sizes.append(len(x))
        if len(x) > 100:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return forward(x)

    monkeypatch.setattr(model, "forward", small_memory)
    whole = evaluate(model, data, data.x_val, data.y_val)
    assert max(sizes) > 100 and sizes[-1] <= 100 and 0 <= whole[1] <= 1
    monkeypatch.setattr(model, "forward", lambda x: (_ for _ in ()).throw(
        torch.OutOfMemoryError("CUDA out of memory")))
    with pytest.raises(OutOfMemory, match="in evaluation"):
        evaluate(model, data, data.x_val, data.y_val)
    # cuDNN's allocation failures come as plain RuntimeErrors: the same halving.
    monkeypatch.setattr(model, "forward", lambda x: (_ for _ in ()).throw(
        RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED")))
    with pytest.raises(OutOfMemory, match="in evaluation"):
        evaluate(model, data, data.x_val, data.y_val)
    monkeypatch.setattr(model, "forward", lambda x: (_ for _ in ()).throw(
        RuntimeError("a bug, not memory")))
    with pytest.raises(RuntimeError, match="a bug"):
        evaluate(model, data, data.x_val, data.y_val)


def test_evaluation_batches_are_sized_to_the_memory():
    small = build_cnn(in_channels=1, num_classes=10, image_size=16, depth=2, width=64)
    large = build_cnn(in_channels=3, num_classes=10, image_size=128, depth=4, width=64,
                      growth=2)
    assert train.eval_batch_size(small, 16, CPU) == 1024
    assert 16 <= train.eval_batch_size(large, 128, CPU) < 1024


# --- folders ----------------------------------------------------------------------------


def write_photos(root, per_class=4, size=(160, 120)):
    rng = np.random.default_rng(0)
    for label in ("cats", "dogs"):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / label / f"{i}.jpg", quality=90)


def test_folders_report_progress_and_decode_large_jpegs_in_draft_mode(tmp_path, monkeypatch):
    monkeypatch.setenv("HPSEARCH_CACHE_DIR", str(tmp_path / "cache"))
    write_photos(tmp_path / "pets", size=(400, 300))
    seen = []
    images = folder_images(tmp_path / "pets", 16, on_progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (8, 8) and len(seen) == 8 and images.x.shape == (8, 3, 16, 16)
    from PIL import JpegImagePlugin

    drafted = []
    real_draft = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        drafted.append(size)
        return real_draft(self, mode, size)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    out = np.empty((16, 16, 3), dtype=np.uint8)
    assert images_module._decode(tmp_path / "pets" / "cats" / "0.jpg", 16, out) is not None
    assert drafted == [(32, 32)]
    with Image.open(tmp_path / "pets" / "cats" / "0.jpg") as img:
        img.draft("RGB", (32, 32))
        assert img.size == (50, 38)  # an eighth: still at least twice the image size


def test_a_photo_study_file_runs_on_a_folder(tmp_path):
    write_photos(tmp_path / "pets", per_class=12, size=(90, 70))
    out = run_cli("--config", ROOT / "studies" / "photos.toml", "--storage",
                  f"sqlite:///{tmp_path / 's.db'}", "--trials", 1,
                  "--set", f"data.dataset='folder:{tmp_path / 'pets'}'",
                  "--set", "data.image_size=16", "--set", "train.epochs=1",
                  HPSEARCH_CACHE_DIR=str(tmp_path / "cache"))
    assert out.returncode == 0, out.stderr


def test_a_study_stored_before_the_default_space_rebuilds_as_it_ran():
    """Its record names only what its [space] named: the rest was fixed at the defaults."""
    from hpsearch.records import config_of

    old = {"config": {"study": {"name": "old"}, "data": {"image_size": 64,
                                                         "dataset": "folder:x"},
                      "train": {}, "space": {"lr": {"low": 1e-3, "high": 1e-2, "log": True}}}}
    cfg = config_of(old)
    assert searched_names(cfg) == ["lr"]
    fixed = {p.name: p.value for p in cfg.space if isinstance(p, Fixed)}
    assert fixed == {"depth": 2, "width": 32, "dropout": 0.0, "optimizer": "adam",
                     "head": "flatten", "growth": 1, "augment": "none",
                     "schedule": "constant", "label_smoothing": 0.0, "decay_on": "all"}


def test_a_searched_augmentation_choice_survives_the_stored_record():
    from hpsearch.config import build_config

    cfg = load_config(None, ["space.augment=[['crop'], ['flip']]"])
    assert build_config(cfg.settings()).space == cfg.space


def test_copies_to_a_gpu_go_on_one_stream_per_process(monkeypatch):
    """Every epoch's Rows copies on the GPU's one copy stream, not a new one each (faked)."""
    made = []
    monkeypatch.setattr(batches.torch.cuda, "Stream", lambda index: made.append(index) or
                        object())
    monkeypatch.setattr(batches, "_copy_streams", {})
    first = batches.copy_stream(torch.device("cuda", 0))
    assert batches.copy_stream(torch.device("cuda", 0)) is first
    assert batches.copy_stream(torch.device("cuda", 1)) is not first
    assert made == [0, 1]
