"""The benchmark code runs on a tiny setting (its figures come from `make bench`, not tests)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT, cli_env, hpsearch
from hpsearch.config import load_config


def test_bench_runs_every_part_and_writes_its_tables(tmp_path):
    out = hpsearch("bench", "--trials", 1, "--repeats", 1, "--epochs", 1, "--overhead-at", "2,4",
                   "--photo-per-class", 8, "--photo-trials", 1, "--out", tmp_path, timeout=900)
    assert out.returncode == 0, out.stderr
    result = json.loads((tmp_path / "bench.json").read_text())
    assert {"throughput", "compute", "study", "pruning", "workers", "overhead",
            "photos", "report"} <= set(result)
    assert result["report"]["trials"] == 1000 and result["report"]["median_seconds"] > 0
    assert all(v["images_per_second"] > 0 for v in result["throughput"]["median"].values())
    compute = result["compute"]
    assert 0 < compute["share_of_fp32_peak"] < 1
    assert compute["peak_fp32_flops"] == compute["peak_by_library"]["fp32"]["peak"]
    assert result["study"]["runs"][0]["hpsearch"]["states"]
    assert set(result["pruning"]["pruners"]) == {"none", "median", "hyperband", "sha"}
    # Without a pruner every trial runs every epoch of the default study.
    none = result["pruning"]["pruners"]["none"]
    assert none["epochs_run"] == none["budget"] == 1 * load_config(None).train.epochs
    assert result["workers"]["workers"]["2"]["trials_per_minute"] > 0
    sqlite = result["overhead"]["storages"]["sqlite"]["ms_per_trial"]
    assert set(sqlite) == {"2", "4"} and all(v["total"] > 0 for v in sqlite.values())
    assert "journal" in result["overhead"]["storages"]
    # Optuna's floor: the bare objective writes nothing of hpsearch's.
    alone = result["overhead"]["optuna_alone"]["sqlite"]["ms_per_trial"]["4"]
    assert alone["total"] > 0 and alone["of which checkpoints"] == 0
    photos = result["photos"]
    assert photos["images"] == 6 * 8 and len(photos["classes"]) == 6
    assert set(photos["fixed"]) == {"32", "64"}
    assert all(side["images_per_second"] > 0 for size in photos["fixed"].values()
               for side in size["median"].values())
    assert photos["study"]["runs"][0]["recipe"]["states"]
    assert photos["study"]["runs"][0]["hpsearch"]["states"]
    assert len(photos["targets"]) == 3
    table = (tmp_path / "bench.md").read_text()
    for heading in ("Training throughput", "Achieved compute", "Whole study", "Pruning",
                    "Workers", "Framework overhead", "**Photos**"):
        assert heading in table
    assert "Optuna alone" in table and "mean trial at 2 trials" in table
    assert "Totals at 2 trials, study by study" in table
    assert "48 images in 6 classes" in table and "Targets met" in table
    # Each run's store, weights and checkpoints went with it: only the tables and the drawn
    # photo folder, kept for the next run, stay.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json", "bench.md",
                                                          "photo-folder"]


def test_overhead_keeps_the_median_study_at_the_smallest_count():
    from hpsearch.bench.suite import with_median_first

    first = {"50": {"total": 30.0, "ask": 1.0}, "1000": {"total": 99.0, "ask": 9.0}}
    runs = [{"ms_per_trial": first}] + [{"ms_per_trial": {"50": {"total": t, "ask": t / 10}}}
                                        for t in (50.0, 40.0)]
    chosen = with_median_first(runs, "50")
    assert chosen["ms_per_trial"] == {"50": {"total": 40.0, "ask": 4.0}, "1000": first["1000"]}
    assert chosen["totals_at_first"] == [30.0, 50.0, 40.0]


def test_the_peak_is_the_faster_library_and_onednn_computes_the_same_product():
    import torch

    from hpsearch.bench.flops import matmul_peak, onednn_product

    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(128, 48, generator=gen), torch.randn(48, 80, generator=gen)
    with torch.inference_mode():
        out = onednn_product(a, b)()
    assert out.shape == (1, 80, 2, 64)
    torch.testing.assert_close(out.reshape(80, 128).t(), a @ b, rtol=1e-4, atol=1e-4)
    peak = matmul_peak(torch.float32, size=128, repeats=1)
    assert peak["peak"] == max(peak["mm"], peak["conv1x1"]) > 0


def test_the_photo_folder_is_mixed_like_real_photos_and_drawn_once(tmp_path):
    import numpy as np
    from PIL import Image, ImageOps

    from hpsearch.bench.photo_folder import ORIENTATION, SHAPES, draw_photo, make_photo_folder
    from hpsearch.bench.photo_recipe import image_folder, photo_split

    root = make_photo_folder(tmp_path / "photos", per_class=12, seed=3)
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == sorted(SHAPES[:6])
    files = sorted(p for p in root.glob("*/*"))
    assert len(files) == 6 * 12
    kinds, shown, oriented = set(), set(), []
    for path in files:
        with Image.open(path) as img:
            kinds.add((path.suffix, img.format, img.mode))
            tag = img.getexif().get(ORIENTATION)
            shown.add(ImageOps.exif_transpose(img).size)
            if tag:
                assert img.format == "JPEG" and tag in (3, 6, 8)
                oriented.append((path, tag))
    assert {(".jpg", "JPEG"), (".png", "PNG")} <= {k[:2] for k in kinds}
    assert {"RGB", "L"} <= {k[2] for k in kinds}
    assert len(shown) > 30 and all(72 <= v <= 200 for size in shown for v in size)
    # Shown as its tag says, a rotated photo is the upright drawing (JPEG's loss aside).
    assert {6, 8} & {tag for _, tag in oriented}
    for path, _ in oriented:
        label, index = SHAPES.index(path.parent.name), int(path.stem)
        drawn = draw_photo(np.random.default_rng([3, label, index]), path.parent.name)
        with Image.open(path) as img:
            upright = ImageOps.exif_transpose(img).convert("L")
        assert upright.size == drawn.size
        diff = np.abs(np.asarray(upright, float) - np.asarray(drawn.convert("L"), float))
        assert diff.mean() < 12, path
    # Complete folders are reused as they are; other settings draw it again.
    stamp = files[0].stat().st_mtime_ns
    assert make_photo_folder(root, per_class=12, seed=3) == root
    assert files[0].stat().st_mtime_ns == stamp
    make_photo_folder(root, per_class=10, seed=3)
    assert len(list(root.glob("*/*"))) == 6 * 10
    # The photo recipe's ImageFolder lists the images in hpsearch's order.
    listed, train, val = photo_split(root, 0)
    assert len(image_folder(root, None, listed)) == len(listed) == 60
    assert len(train) + len(val) < 60


def test_the_gpu_check_without_a_gpu_says_so_and_exits_0():
    out = subprocess.run([sys.executable, "-m", "hpsearch.bench.gpu_check"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120,
                         env=cli_env(CUDA_VISIBLE_DEVICES=""))
    assert out.returncode == 0 and "no CUDA GPU on this machine" in out.stdout


def test_the_hard_folder_is_drawn_the_same_each_time_and_unlike_the_easy_one(tmp_path):
    from hpsearch.bench.photo_folder import MARKER, make_photo_folder, read_marker

    def contents(root):
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.glob("*/*")}

    hard = make_photo_folder(tmp_path / "hard", per_class=3, seed=1, difficulty="hard")
    again = make_photo_folder(tmp_path / "again", per_class=3, seed=1, difficulty="hard")
    easy = make_photo_folder(tmp_path / "easy", per_class=3, seed=1)
    assert contents(hard) == contents(again) and len(contents(hard)) == 6 * 3
    shared = set(contents(hard)) & set(contents(easy))
    assert shared and all(contents(hard)[name] != contents(easy)[name] for name in shared)
    # The easy folder's marker is as before, so folders drawn before are reused.
    assert read_marker(easy) == {"version": 1, "per_class": 3, "classes": 6, "seed": 1}
    assert read_marker(hard)["difficulty"] == "hard" and (hard / MARKER).is_file()
    # A folder drawn at the other difficulty is drawn again, not reused.
    make_photo_folder(easy, per_class=3, seed=1, difficulty="hard")
    assert contents(easy) == contents(hard)


def test_the_real_photos_become_one_folder_per_class(tmp_path):
    pytest.importorskip("skimage")
    from hpsearch.bench.real_photos import CLASSES, make_real_folder
    from hpsearch.images import list_image_files

    root = make_real_folder(tmp_path / "faces")
    files, labels, classes = list_image_files(root)
    assert classes == CLASSES and len(files) == 200
    assert [labels.count(i) for i in range(2)] == [100, 100]
    stamp = (root / files[0]).stat().st_mtime_ns
    assert make_real_folder(root) == root and (root / files[0]).stat().st_mtime_ns == stamp


def test_accuracy_per_minute_is_read_off_the_best_so_far_curve():
    from hpsearch.bench.curves import best_at, best_so_far, time_to_reach
    from hpsearch.bench.panel import middle

    finished = [[112.0, "COMPLETE", 0.7], [105.0, "COMPLETE", 0.5], [108.0, "PRUNED", 0.9],
                [120.0, "COMPLETE", 0.6], [130.0, "FAIL", None]]
    curve = best_so_far(finished, started=100.0)
    assert curve == [[5.0, 0.5], [12.0, 0.7], [20.0, 0.7]]
    assert best_at(curve, 4.9) is None and best_at(curve, 12.0) == 0.7
    assert time_to_reach(curve, 0.6) == 12.0 and time_to_reach(curve, 0.8) is None
    assert middle([None, 3.0, 1.0], float("inf")) == 3.0
    assert middle([None, 0.5], float("-inf")) is None


def test_panel_data_are_named_by_kind_count_and_size():
    from hpsearch.bench.panel import PanelData, parse_data

    assert parse_data("hard-500@32") == PanelData("hard-500@32", "drawn", 32, "hard", 500)
    assert parse_data("faces@32") == PanelData("faces@32", "real", 32)
    assert parse_data("digits") == PanelData("digits", "digits")
    for bad in ("hard-500", "faces-10@32", "digits@32", "easy@32", "medium-5@32", "hard-5@4"):
        with pytest.raises(ValueError):
            parse_data(bad)


def test_the_panel_runs_end_to_end_and_writes_its_table(tmp_path):
    out = hpsearch("bench", "--what", "panel", "--panel", "hard-8@16", "--panel-trials", 2,
                   "--epochs", 1, "--panel-epochs", 1, "--panel-set", "train.epochs=1",
                   "--panel-time", "8s", "--panel-short", 0.5,
                   "--repeats", 1, "--out", tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr
    panel = json.loads((tmp_path / "bench.json").read_text())["panel"]
    assert set(panel) >= {"trials", "time", "repeats", "reference", "data", "rows", "skipped"}
    (row,) = panel["rows"]
    assert set(row) == {"data", "images", "classes", "recipe_seconds", "recipe_best",
                        "hpsearch_seconds", "hpsearch_best", "reference_acc",
                        "reference_seconds", "at_recipe_time",
                        "hpsearch_reaches_recipe_best_seconds", "short_seconds",
                        "short_best"}
    assert panel["time"] == "8s" and panel["short"] == 0.5
    assert 0 <= row["short_best"] <= 1 and row["short_seconds"] > 0
    assert row["data"] == "hard-8@16" and row["images"] == 6 * 8 and row["classes"] == 6
    assert set(row["at_recipe_time"]) == {"25%", "50%", "100%"}
    assert row["at_recipe_time"]["100%"]["recipe"] == row["recipe_best"]
    run = panel["data"]["hard-8@16"]["runs"][0]
    assert run["recipe"]["curve"] and run["hpsearch"]["curve"]
    assert 0 < run["hpsearch"]["curve"][0][0] < run["hpsearch"]["wall_seconds"]
    assert 0 <= row["reference_acc"] <= 1
    table = (tmp_path / "bench.md").read_text()
    assert "**Panel**" in table and "| hard-8@16 | 48 (6) |" in table
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json", "bench.md", "panel"]


def test_the_budget_table_reads_each_pruners_best_at_shares_of_the_budget():
    from hpsearch.bench.budget import _medians, parse_arm, table

    assert parse_arm("sha") == ("sha", ("study.pruner='sha'",))
    assert parse_arm("growth 2=study.pruner='sha'; space.growth=2") == (
        "growth 2", ("study.pruner='sha'", "space.growth=2"))

    runs = [{"best_value": 0.8, "best_at": [None, 0.6, 0.8], "states": {"COMPLETE": 3,
                                                                        "PRUNED": 9}},
            {"best_value": 0.9, "best_at": [0.5, 0.7, 0.9], "states": {"COMPLETE": 5,
                                                                       "PRUNED": 7}}]
    m = _medians(runs)
    assert m["best_at"] == [0.5, pytest.approx(0.65), pytest.approx(0.85)]
    assert m["trials"] == 12 and m["complete"] == 4
    text = table({"budget": "240s", "data": {"hard-500@32": {"median": {"sha": m}}}})
    assert text.splitlines()[0].startswith("| data | arm | best at 0.25 of 240s |")
    assert "| hard-500@32 | sha | 0.500 | 0.650 | 0.850 | 12 (4) |" in text
