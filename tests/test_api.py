"""The notebook API (hpsearch.api), the chosen model (hpsearch.trained) and `hpsearch predict`,
each on a real study in a real store."""

from __future__ import annotations

import csv
import json
import os
import signal
import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import hpsearch
from conftest import ROOT, hpsearch as hpsearch_cli, load, run_cli, states
from hpsearch.bench.photo_folder import make_photo_folder
from hpsearch.config import load_config
from hpsearch.data import split_indices
from hpsearch.images import list_image_files


def test_run_returns_the_study_and_a_rerun_continues_it(study_file, store):
    study = hpsearch.run(study_file, storage=store, trials=2, quiet=True)
    assert isinstance(study, hpsearch.Study) and study.name == "tiny"
    assert sum(states(load(store)).values()) == 2
    again = hpsearch.run(study_file, storage=store, trials=4, quiet=True)  # the total
    assert len(again.optuna.trials) == 4
    loaded = hpsearch.load("tiny", storage=store)
    assert loaded.best.trial == again.best.trial and loaded.best.val_accuracy > 0.1
    assert "tiny" in repr(loaded) and "4 trials finished" in repr(loaded)


def test_keywords_are_the_flags_and_the_study_files_keys(study_file, store):
    study = hpsearch.run(study_file, storage=store, trials=1, quiet=True, image_size=10,
                         epochs=1, study_name="named", space={"depth": 1, "width": [4, 6]},
                         set=["train.batch_size=32"])
    cfg = study._record(study.optuna.trials[0])
    assert study.name == "named" and cfg["image_size"] == 10 and cfg["epochs"] == 1
    assert cfg["params"]["depth"] == 1 and cfg["params"]["width"] in (4, 6)
    assert cfg["params"]["batch_size"] == 32


def test_bad_input_raises_one_error_with_the_cli_message_and_stores_nothing(study_file, store,
                                                                            tmp_path):
    with pytest.raises(hpsearch.HpsearchError) as err:
        hpsearch.run(study_file, storage=store, trials=1, image_size=3)
    assert str(err.value) == "data.image_size must be 8..256, got 3"
    frames = []
    tb = err.value.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame.f_code.co_filename)
        tb = tb.tb_next
    assert not any("hpsearch" in f and not f.endswith("api.py") for f in frames)
    out = run_cli("--config", study_file, "--storage", store, "--set", "data.image_size=3")
    assert out.returncode == 2 and str(err.value) in out.stderr
    with pytest.raises(hpsearch.HpsearchError, match="takes no keyword 'imagesize'"):
        hpsearch.run(study_file, storage=store, imagesize=3)
    assert not (tmp_path / "store.db").exists()  # refused before the store was made
    with pytest.raises(hpsearch.HpsearchError, match="does not exist"):
        hpsearch.load("tiny", storage=store)
    hpsearch.run(study_file, storage=store, trials=1, quiet=True)
    with pytest.raises(hpsearch.HpsearchError, match="no study 'nope'"):
        hpsearch.load("nope", storage=store)


def test_results_as_objects(study_file, store):
    study = hpsearch.run(study_file, storage=store, trials=3, quiet=True)
    best = study.best
    assert best.params["depth"] in (1, 2) and best.test_accuracy is None
    rows = study.trials
    count = len(rows)
    assert count == 3
    from matplotlib.figure import Figure

    for name in ("history", "epochs", "curves", "comparison", "parallel", "importance"):
        try:
            assert isinstance(study.plot(name), Figure)
        except hpsearch.HpsearchError as err:  # two completed trials are needed for some
            assert "too few" in str(err) and name in ("parallel", "importance")
    with pytest.raises(hpsearch.HpsearchError, match="the charts are"):
        study.plot("nonsense")
    folder = study.report(show=False)
    assert (folder / "report.html").is_file()
    tested = json.loads((folder / "best_config.json").read_text())
    assert study.best.test_accuracy == tested["test_accuracy"]


def test_the_stop_button_stops_at_a_safe_point_and_the_cell_resumes(study_file, store,
                                                                      capsys):
    """As the kernel's stop button: SIGINT to the process, here once two trials completed."""
    done = threading.Event()

    def completed() -> int:  # read-only: the run may be creating the store's tables
        try:
            with sqlite3.connect(f"file:{store.removeprefix('sqlite:///')}?mode=ro",
                                 uri=True) as db:
                return db.execute("SELECT count(*) FROM trials WHERE state = 'COMPLETE'")\
                    .fetchone()[0]
        except sqlite3.Error:
            return 0

    def press_stop():
        while not done.wait(0.2):
            if completed() >= 2:
                os.kill(os.getpid(), signal.SIGINT)
                return

    before = signal.getsignal(signal.SIGINT)
    presser = threading.Thread(target=press_stop, daemon=True)
    presser.start()
    try:
        hpsearch.run(study_file, storage=store, trials=60, quiet=True)
    finally:
        done.set()
    out = capsys.readouterr()
    assert "Stopped: the study is intact; run this cell again" in out.out
    assert "Traceback" not in out.err and "failed with value None" not in out.err
    assert signal.getsignal(signal.SIGINT) is before  # the notebook's handler is back
    counts = states(load(store))
    assert "RUNNING" not in counts and 2 <= counts.get("COMPLETE", 0) < 60
    finished = sum(counts.get(k, 0) for k in ("COMPLETE", "PRUNED"))
    study = hpsearch.run(study_file, storage=store, trials=finished + 2, quiet=True)
    counts = states(load(store))
    assert "RUNNING" not in counts and counts.get("COMPLETE", 0) + counts.get("PRUNED", 0) \
        == finished + 2
    assert study.best is not None


def test_the_dashboard_starts_in_the_background_and_stops(study_file, store, capsys):
    import urllib.request

    study = hpsearch.run(study_file, storage=store, trials=1, quiet=True)
    board = hpsearch.dashboard(study, port=8765)
    try:
        assert "Dashboard: http://127.0.0.1:" in capsys.readouterr().out
        with urllib.request.urlopen(board.url + "api/studies", timeout=30) as page:
            assert page.status == 200 and b"tiny" in page.read()
    finally:
        board.stop()
    assert board.process.poll() is not None
    with pytest.raises(hpsearch.HpsearchError, match="does not exist"):
        hpsearch.dashboard(store.replace("store.db", "other.db"))


def test_in_colab_the_dashboard_shows_in_the_cell_through_the_proxy(study_file, store,
                                                                     monkeypatch, capsys):
    """Colab faked: its output module records what hpsearch asks of it."""
    import sys
    import types

    asked = []
    output = types.SimpleNamespace(
        serve_kernel_port_as_iframe=lambda port, height: asked.append((port, height)),
        eval_js=lambda js: f"https://proxied.example/{js}")
    colab = types.ModuleType("google.colab")
    colab.output = output
    monkeypatch.setitem(sys.modules, "google", types.ModuleType("google"))
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    study = hpsearch.run(study_file, storage=store, trials=1, quiet=True)
    board = hpsearch.dashboard(study, port=8775)
    try:
        port = int(board.url.rsplit(":", 1)[1].strip("/"))
        assert asked == [(port, "700")]
        assert board.proxied == f"https://proxied.example/google.colab.kernel.proxyPort({port})"
        assert f"Dashboard: {board.proxied}" in capsys.readouterr().out
    finally:
        board.stop()


def test_compare_sets_two_studies_side_by_side(study_file, store, tmp_path):
    first = hpsearch.run(study_file, storage=store, trials=2, quiet=True)
    second = hpsearch.run(study_file, storage=store, trials=2, quiet=True, study_name="other",
                          sampler="random")
    folder = first.compare(second, out=tmp_path / "both", show=False)
    page = (folder / "report.html").read_text()
    assert "tiny" in page and "other" in page
    with pytest.raises(hpsearch.HpsearchError, match="needs another study"):
        first.compare()


# --- the chosen model and predict ------------------------------------------------------------


@pytest.fixture(scope="module")
def photo_study(tmp_path_factory):
    """A reported photo study of a drawn folder: JPEG and PNG, greyscale and EXIF-turned
    files of mixed sizes, as a user's folder is."""
    root = tmp_path_factory.mktemp("photos")
    folder = make_photo_folder(root / "shapes", per_class=14, classes=3)
    store = f"sqlite:///{root / 'store.db'}"
    sets = [f"data.dataset='folder:{folder}'", "data.image_size=16", "train.epochs=3"]
    out = run_cli("--config", ROOT / "studies" / "photos.toml", "--storage", store,
                  "--trials", 3, *(a for s in sets for a in ("--set", s)),
                  HPSEARCH_CACHE_DIR=os.environ["HPSEARCH_CACHE_DIR"])
    assert out.returncode == 0, out.stderr
    report = hpsearch_cli("report", "--config", ROOT / "studies" / "photos.toml",
                          "--storage", store, "--out", root / "report")
    assert report.returncode == 0, report.stderr
    cfg = load_config(ROOT / "studies" / "photos.toml", sets)
    return root, folder, store, cfg, json.loads((root / "report" / "best_config.json")
                                                .read_text())


def test_predict_on_the_test_files_gives_the_reports_test_accuracy(photo_study):
    root, folder, store, cfg, best = photo_study
    files, labels, classes = list_image_files(folder)
    _, _, test = split_indices(np.asarray(labels), cfg.data, best["split_seed"])
    paths = [folder / files[i] for i in test]
    (root / "notes.txt").write_text("not an image")
    out = hpsearch_cli("predict", *paths, root / "notes.txt", "--config",
                       ROOT / "studies" / "photos.toml", "--storage", store, "--top-k", 2,
                       "--out", root / "predicted.csv")
    assert out.returncode == 0, out.stderr
    assert "1 file skipped (not an image" in out.stderr and "notes.txt" in out.stderr
    with open(root / "predicted.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(test) and set(rows[0]) == {"file", "class", "probability",
                                                       "class_2", "probability_2"}
    right = sum(Path(r["file"]).parent.name == r["class"] for r in rows)
    assert round(right / len(rows), 6) == best["test_accuracy"]  # as best_config.json rounds
    assert all(float(r["probability"]) >= float(r["probability_2"]) for r in rows)


def test_the_best_model_saves_and_loads_back_and_takes_images_as_objects(photo_study, tmp_path):
    root, folder, store, cfg, best = photo_study
    model = hpsearch.load("photos-cnn", storage=store).best_model()
    assert model.classes == tuple(best["classes"]) and model.image_size == 16
    files, _, _ = list_image_files(folder)
    path = folder / files[0]
    by_path = model.predict(path, top_k=3)[0]
    with Image.open(path) as img:
        by_image = model.predict(img.copy() if img.format != "JPEG" else img, top_k=3)[0]
    assert by_path.source == str(path) and len(by_path.classes) == 3
    assert abs(sum(by_path.probabilities) - 1) < 1e-4
    assert by_image.label == by_path.label or files[0].endswith(".jpg")  # JPEG: no draft mode
    array = np.asarray(Image.open(path).convert("RGB"))
    assert model.predict([array, array[..., 0]])[0].source == "image 0"
    saved = model.save(tmp_path / "model")
    again = hpsearch.load_model(saved)
    assert again.predict(path, top_k=3)[0] == by_path
    out = hpsearch_cli("predict", folder, "--model", saved)
    assert out.returncode == 0 and out.stdout.count("\n") == len(files) + 1
    with pytest.raises(hpsearch.HpsearchError, match="must be uint8"):
        model.predict(np.zeros((8, 8), dtype=np.float32))


def test_train_best_writes_a_model_that_loads_with_one_call(photo_study, tmp_path):
    root, folder, store, cfg, best = photo_study
    out = hpsearch_cli("train", "--best", root / "report" / "best_config.json", "--out",
                       tmp_path / "final", "--device", "cpu")
    assert out.returncode == 0, out.stderr
    model = hpsearch.load_model(tmp_path / "final")
    assert model.record["trained_on"] == "train+validation"
    assert len(model.predict(folder)) == 42


def test_a_missing_model_or_file_is_one_line_and_exit_2(photo_study, tmp_path):
    root, folder, store, cfg, best = photo_study
    for args in (("predict", folder, "--model", tmp_path / "none"),
                 ("predict", tmp_path / "missing.jpg", "--storage", store),
                 ("predict", folder, "--storage", store, "--study-name", "other")):
        out = hpsearch_cli(*args)
        assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
        assert "Traceback" not in out.stderr
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "a.txt").write_text("x")
    out = hpsearch_cli("predict", tmp_path / "text", "--model", root / "none")
    assert out.returncode == 2


def test_the_live_figure_keeps_its_share_and_is_not_drawn_outside_a_notebook(study_file, store):
    import time

    from hpsearch import live

    study = hpsearch.run(study_file, storage=store, trials=2, quiet=True)
    assert live.in_notebook() is False and live.in_cell(object()) is None
    draws = []  # (start, end) of each picture: the figure is made, then shown

    def show(png: bytes) -> None:
        assert png.startswith(b"\x89PNG")
        draws.append(time.perf_counter())

    figure = live.LiveFigure(study.optuna, 2, show)
    figure.draw()
    start = time.perf_counter()
    while time.perf_counter() - start < 4:  # epochs far faster than a figure draws
        figure.epoch_done(99, {"val_acc": [0.2, 0.4]})
        figure.trial_done(study.optuna, None)
    figure.close()
    # Each redraw waited at least MIN_GAP and 1/SHARE times the drawing before it.
    gaps = [b - a for a, b in zip(draws, draws[1:-1])]
    assert all(g >= live.MIN_GAP for g in gaps)
    assert figure.updates == len(draws) <= 2 + 4 / live.MIN_GAP


def test_a_live_figure_that_fails_to_draw_stops_drawing_not_the_trial(study_file, store):
    from hpsearch import live

    study = hpsearch.run(study_file, storage=store, trials=1, quiet=True)

    def show(png: bytes) -> None:
        raise OSError("the cell is gone")

    figure = live.LiveFigure(study.optuna, 2, show)
    figure.epoch_done(0, {"val_acc": [0.5]})
    figure.close()
    assert figure.broken and figure.updates == 0
