"""The report, best/status/compare/train on real studies, and edge cases built with add_trial."""

from __future__ import annotations

import json
import re
import time

import matplotlib.pyplot as plt
import numpy as np
import optuna
import pytest
import torch
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from conftest import finished_tiny_study, hpsearch, load, run_cli
from hpsearch.config import load_config
from hpsearch.report import collect, make_report
from hpsearch.records import SETTINGS_ATTR

CHARTS = ("learning_curves.png", "predictions.png", "comparison.png",
          "optimization_history.png", "intermediate_values.png", "param_importances.png",
          "parallel_coordinate.png", "confusion_matrix.png")


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """A real six-trial study made by the CLI, and its report."""
    folder = tmp_path_factory.mktemp("report")
    config, store = finished_tiny_study(folder, 6, "--set", "study.pruner='none'")
    report = hpsearch("report", "--config", config, "--storage", store)
    assert report.returncode == 0, report.stderr
    return folder, config, store, folder / "reports" / "tiny", report.stdout


SECTIONS = ("Summary", "Dataset", "Search space", "Model", "Training", "Results",
            "What mattered", "Next study", "Run")


def test_report_writes_every_file(real):
    folder, _, store, out, stdout = real
    for name in ("best_config.json", "report.md", "report.html", "report.pdf", "next.toml",
                 "study.toml", *CHARTS):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert f"Report: {out / 'report.pdf'} and {out / 'report.html'}" in stdout
    md = (out / "report.md").read_text()
    for chart in CHARTS:
        assert f"]({chart})" in md
    assert "| device (precision) | cpu (" in md  # from the trials' owner records


def test_the_report_is_a_document_of_nine_sections_in_each_format(real):
    from pypdf import PdfReader

    out = real[3]
    md = (out / "report.md").read_text()
    assert re.findall(r"^## (.+)$", md, re.M) == list(SECTIONS)
    html = (out / "report.html").read_text()
    assert re.findall(r"<h2>(.+?)</h2>", html) == list(SECTIONS)
    pages = PdfReader(out / "report.pdf").pages
    assert all(p.mediabox.width == pytest.approx(595.3, abs=0.5) for p in pages)  # A4
    text = "\n".join(p.extract_text() for p in pages)
    positions = [text.find(f"\n{title}\n") for title in SECTIONS]
    assert -1 not in positions and positions == sorted(positions), positions
    # Every chart is in the PDF as drawn (its own text, not a picture of it).
    for words in ("Optimization history", "Validation accuracy per epoch", "Parallel coordinates",
                  "Parameter importance", "test split: accuracy", "share of the true class",
                  "training seconds", "Cross-entropy loss"):
        assert words in text, words
    summary = md.split("## Dataset")[0]
    assert "95% interval" in summary and "within one validation image" in summary
    assert "| conv 3x3, 1 -> " in md and "| total |" in md  # the chosen model's layers
    assert "those of all), from 6 completed trials" in md


def test_next_toml_runs_as_it_is(real, tmp_path):
    out = real[3]
    other = f"sqlite:///{tmp_path / 'other.db'}"
    run = run_cli("--config", out / "next.toml", "--trials", 2, "--storage", other)
    assert run.returncode == 0, run.stderr
    assert len(load(other, "tiny-next").trials) == 2
    again = run_cli("--config", out / "study.toml", "--storage",
                    f"sqlite:///{tmp_path / 'again.db'}", "--trials", 1)
    assert again.returncode == 0, again.stderr


def test_the_next_study_runs_as_printed_into_the_same_store_and_compares(tmp_path):
    """The report's next-study command names the store, so the next study lands beside the
    first wherever the command runs, and `hpsearch compare` sets the two side by side."""
    import shlex

    config, store = finished_tiny_study(tmp_path, 3, "--set", "study.pruner='none'")
    out = tmp_path / "report"
    assert hpsearch("report", "--config", config, "--storage", store, "--out", out
                    ).returncode == 0
    section = (out / "report.md").read_text().split("## Next study")[1].split("## Run")[0]
    command = shlex.split(re.findall(r"`(hpsearch run [^`]+)`", section)[-1])
    assert command[command.index("--storage") + 1] == store
    assert f"--storage {store}" in (out / "next.toml").read_text()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = hpsearch(*command[1:], cwd=elsewhere)
    assert run.returncode == 0, run.stderr
    assert len(load(store, "tiny-next").trials) == 3 and not (elsewhere / "studies").exists()
    compared = hpsearch("compare", "tiny", "tiny-next", "--storage", store, "--out",
                        tmp_path / "compare")
    assert compared.returncode == 0, compared.stderr
    assert (tmp_path / "compare" / "report.html").is_file()


def test_the_next_command_never_carries_a_password():
    from hpsearch.storage import parse_storage

    for url in ("postgresql://alice:secret@db.lab:5432/hpo",
                "postgresql://alice@db.lab/hpo?password=secret&sslmode=require"):
        shown = parse_storage(url).as_option
        assert "secret" not in shown and "***" not in shown and "alice@db.lab" in shown
    assert "sslmode=require" in parse_storage(
        "postgresql://alice@db.lab/hpo?password=secret&sslmode=require").as_option


def test_html_is_self_contained(real):
    html = (real[3] / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(CHARTS)
    sources = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert sources and all(s.startswith("data:") for s in sources)
    assert "http://" not in html and "https://" not in html and "<script" not in html


def test_best_config_matches_the_store(real):
    _, _, store, out, _ = real
    study = load(store)
    best = json.loads((out / "best_config.json").read_text())
    assert best["trial"] == study.best_trial.number
    assert best["validation_accuracy"] == study.best_value
    assert {**best["params"], **study.best_params} == best["params"]
    assert best["normalization"] == study.user_attrs[SETTINGS_ATTR]["data"]["normalization"]
    # The confusion matrix counts every test image once.
    test_size = study.user_attrs[SETTINGS_ATTR]["data"]["sizes"]["test"]
    assert np.asarray(best["confusion_matrix"]).sum() == best["test_size"] == test_size
    assert 0.0 <= best["test_accuracy"] <= 1.0


def test_the_best_config_seed_retrains_the_best_trial(real):
    """The seed is not stored with a trial: the report derives it, and retraining with it
    gives back the trial's own weights."""
    from hpsearch.best import retrain, trial_weights
    from hpsearch.data import load_dataset
    from hpsearch.storage import open_artifacts

    folder, config, store, out, _ = real
    best = json.loads((out / "best_config.json").read_text())
    study = load(store)
    assert "seed" not in study.best_trial.user_attrs
    cfg = load_config(config, [])
    data = load_dataset(cfg.data, cfg.study.seed)
    model = retrain(best["params"], best["epochs"], best["seed"], data, torch.device("cpu"))
    stored, why = trial_weights(study.best_trial, open_artifacts(folder / "artifacts"), study)
    assert why is None
    for name, tensor in model.state_dict().items():
        assert torch.allclose(tensor.cpu().float(), stored[name].float(), atol=1e-5), name


def test_history_best_equals_the_study_best(real):
    study = load(real[2])
    numbers, best = collect.best_so_far(study.trials)
    assert best[-1] == study.best_value
    assert numbers[best.index(best[-1])] == study.best_trial.number


def test_best_config_round_trips_into_train(real):
    folder, _, _, out, _ = real
    done = hpsearch("train", "--best", out / "best_config.json", "--out", folder / "model",
                    "--device", "cpu")
    assert done.returncode == 0, done.stderr
    assert "Test accuracy" in done.stdout
    state = torch.load(folder / "model" / "weights.pt", weights_only=True)
    saved = json.loads((folder / "model" / "config.json").read_text())
    assert saved["trained_on"] == "train+validation"
    best = json.loads((out / "best_config.json").read_text())
    assert saved["params"] == best["params"]
    # The saved weights rebuild the model they came from.
    from hpsearch.model import build_cnn

    p = best["params"]
    model = build_cnn(in_channels=1, num_classes=10, image_size=best["image_size"],
                      depth=p["depth"], width=p["width"], dropout=p["dropout"])
    model.load_state_dict(state)


def test_completed_trials_keep_weights_and_pruned_ones_none(tmp_path, study_file):
    store = f"sqlite:///{tmp_path / 'store.db'}"
    out = run_cli("--config", study_file, "--storage", store, "--trials", 8,
                  "--set", "study.pruner='median'",
                  "--set", "space.lr={low=1e-4, high=10.0, log=true}")
    assert out.returncode == 0, out.stderr
    study = load(store)
    files = {p.name for p in (tmp_path / "artifacts").iterdir()}
    for t in study.trials:
        metas = optuna.artifacts.get_all_artifact_meta(t, storage=study._storage)
        if t.state == TrialState.COMPLETE:
            assert [m.filename for m in metas] == ["weights.pt"]
            assert metas[0].artifact_id in files
        else:
            assert metas == []


def test_missing_weights_are_explained_and_only_retrain_rebuilds_them(real, tmp_path):
    _, config, store, _, _ = real
    empty = tmp_path / "no-artifacts"
    empty.mkdir()
    out = hpsearch("report", "--config", config, "--storage", store, "--artifacts", empty,
                   "--out", tmp_path / "r1")
    assert out.returncode == 0, out.stderr
    md = (tmp_path / "r1" / "report.md").read_text()
    assert "cannot be read from the artifact folder" in md and "--retrain" in md
    assert not (tmp_path / "r1" / "predictions.png").exists()
    again = hpsearch("report", "--config", config, "--storage", store, "--artifacts", empty,
                     "--out", tmp_path / "r2", "--retrain", "--device", "cpu")
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "r2" / "predictions.png").is_file()
    assert "retrained with its seed" in (tmp_path / "r2" / "report.md").read_text()


def test_best_status_and_compare(real, tmp_path):
    folder, config, store, _, _ = real
    best = hpsearch("best", "--json", "--config", config, "--storage", store)
    assert best.returncode == 0, best.stderr
    assert json.loads(best.stdout)["trial"] == load(store).best_trial.number
    # The same record as the report's best_config.json, the test split's fields included.
    written = json.loads((real[3] / "best_config.json").read_text())
    assert written["confusion_matrix"] and json.loads(best.stdout) == written

    other = run_cli("--config", config, "--storage", store, "--trials", 3, "--study-name",
                    "tiny-random", "--set", "study.sampler='random'", "--set",
                    "study.pruner='none'")
    assert other.returncode == 0, other.stderr
    status = hpsearch("status", "--storage", store)
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert lines[1].split()[:3] == ["study", "complete", "pruned"]
    assert any(line.split()[:2] == ["tiny", "6"] for line in lines)
    assert any(line.split()[:2] == ["tiny-random", "3"] for line in lines)

    compare = hpsearch("compare", "tiny", "tiny-random", "--storage", store, "--out",
                       tmp_path / "cmp")
    assert compare.returncode == 0, compare.stderr
    for name in ("report.md", "report.html", "histories.png", "best_against_time.png"):
        assert (tmp_path / "cmp" / name).is_file()
    md = (tmp_path / "cmp" / "report.md").read_text()
    assert "| tiny |" in md and "| tiny-random |" in md


@pytest.mark.parametrize("command", ["report", "best", "status", "compare", "dashboard"])
def test_a_mistyped_store_is_an_error_not_a_new_store(tmp_path, command):
    args = ["tiny"] if command == "compare" else []
    out = hpsearch(command, *args, "--storage", f"sqlite:///{tmp_path / 'typo.db'}")
    assert out.returncode == 2, out.stderr
    assert "does not exist" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "typo.db").exists()


def test_an_unknown_study_name_lists_the_names(real):
    out = hpsearch("report", "--storage", real[2], "--study-name", "tinny")
    assert out.returncode == 2
    assert "no study 'tinny'" in out.stderr and "tiny" in out.stderr.split("studies:")[1]
    assert len(out.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------- edge cases built with add_trial

DISTRIBUTIONS = {
    "lr": FloatDistribution(1e-4, 1e-1, log=True),
    "depth": IntDistribution(1, 4),
    "width": IntDistribution(8, 64, log=True),
    "dropout": FloatDistribution(0.0, 0.5),
    "optimizer": CategoricalDistribution(["adam", "sgd"]),
}


def synthetic_trial(rng, state: TrialState, epochs: int = 10):
    params = {"lr": float(10 ** rng.uniform(-4, -1)), "depth": int(rng.integers(1, 5)),
              "width": int(rng.integers(8, 65)), "dropout": float(rng.uniform(0, 0.5)),
              "optimizer": str(rng.choice(["adam", "sgd"]))}
    ran = epochs if state == TrialState.COMPLETE else int(rng.integers(1, epochs))
    curve = list(np.clip(0.9 - 0.5 * np.exp(-np.arange(1, ran + 1) / 2)
                         + rng.normal(0, 0.01, ran), 0, 1))
    history = {"train_loss": [1.0 / (e + 1) for e in range(ran)], "train_acc": curve,
               "val_loss": [1.2 / (e + 1) for e in range(ran)], "val_acc": curve,
               "epoch_seconds": [0.1] * ran}
    finished = state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return create_trial(
        state=state, params=params, distributions=DISTRIBUTIONS,
        value=curve[-1] if state == TrialState.COMPLETE else None,
        intermediate_values={e + 1: v for e, v in enumerate(curve)} if finished else {},
        user_attrs={"history": history, "n_params": int(rng.integers(1_000, 100_000)),
                    "seed": 1, "device": "cpu"})


def synthetic_study(storage, name: str, states: list) -> optuna.Study:
    cfg = load_config(None, ["data.image_size=8"])
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    study.set_user_attr(SETTINGS_ATTR, {"config": cfg.settings(), "split_seed": 0,
                                        "data": {"normalization": {"mean": [0.3],
                                                                   "std": [0.4]}}})
    rng = np.random.default_rng(0)
    study.add_trials([synthetic_trial(rng, s) for s in states])
    return study


C, P, F, R = TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING
EDGE_CASES = {
    "no trial at all": [],
    "no completed trial yet": [F, R],
    "only pruned trials": [P, P, P],
    "failed trials among others": [C, F, P, C, F],
    "a single trial": [C],
}


@pytest.mark.parametrize("case", EDGE_CASES, ids=list(EDGE_CASES))
def test_edge_cases_write_a_report(tmp_path, case):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'edge.db'}")
    study = synthetic_study(storage, "edge", EDGE_CASES[case])
    result = make_report(study, tmp_path / "out")  # no data, no artifacts
    assert (tmp_path / "out" / "report.md").is_file()
    assert (tmp_path / "out" / "report.html").is_file()
    has_complete = C in EDGE_CASES[case]
    assert (tmp_path / "out" / "best_config.json").is_file() == has_complete
    md = (tmp_path / "out" / "report.md").read_text()
    if not has_complete:
        assert "No trial has completed yet" in md
    assert plt.get_fignums() == []  # no figure left open in pyplot
    assert all(p.exists() for p in result.files)


@pytest.fixture(scope="session")
def thousand(tmp_path_factory):
    """A 1,000-trial store, built once per session."""
    folder = tmp_path_factory.mktemp("thousand")
    storage = optuna.storages.RDBStorage(f"sqlite:///{folder / 'big.db'}")
    rng = np.random.default_rng(1)
    states = [C if u < 0.3 else P for u in rng.random(1000)]
    synthetic_study(storage, "big", states)
    return folder, storage


def test_a_thousand_trials_report(thousand):
    folder, storage = thousand
    study = optuna.load_study(study_name="big", storage=storage)
    start = time.perf_counter()
    result = make_report(study, folder / "out")
    seconds = time.perf_counter() - start
    print(f"report of 1,000 trials: {seconds:.1f} s")  # for the record; never asserted
    best = json.loads((folder / "out" / "best_config.json").read_text())
    assert best["validation_accuracy"] == study.best_value
    assert len(collect.finished_rows(study.trials)) == 1000
    assert plt.get_fignums() == [] and result.files


def test_the_device_comes_from_the_owner_record_or_an_older_attribute():
    now = create_trial(value=0.5, user_attrs={"owner": {"pid": 1, "device": "cpu",
                                                        "precision": "bf16"}})
    earlier = create_trial(value=0.5, user_attrs={"owner": {"pid": 1, "device": "cuda:0"}})
    before = create_trial(value=0.5, user_attrs={"device": "cpu"})
    assert [collect.device_of(t) for t in (now, earlier, before, create_trial(value=0.5))] == [
        "cpu (bf16)", "cuda:0", "cpu", None]


def test_the_report_states_chance_level_and_why_the_result_is_poor(tmp_path):
    """The issue's case, drawn: 720 photos of 6 classes, the best of five trials 0.343 and
    still learning when its 10 epochs ran out."""
    cfg = load_config(None, ["data.dataset='folder:/photos'", "data.image_size=32",
                             "train.epochs=10"])
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'photos.db'}")
    study = optuna.create_study(study_name="photos", storage=storage, direction="maximize")
    study.set_user_attr(SETTINGS_ATTR, {"config": cfg.settings(), "split_seed": 0, "data": {
        "classes": [f"class {i}" for i in range(6)],
        "sizes": {"train": 504, "val": 108, "test": 108},
        "normalization": {"mean": [0.5] * 3, "std": [0.2] * 3}}})
    epochs = range(1, 11)
    for final in (0.25, 37 / 108, 0.28, 0.31, 0.27):
        val = [round(final - 0.02 * (10 - e), 6) for e in epochs]  # still rising at the end
        history = {"train_loss": [1.8 - 0.06 * e for e in epochs],
                   "train_acc": [0.2 + 0.021 * e for e in epochs],
                   "val_loss": [1.8 - 0.05 * e for e in epochs], "val_acc": val,
                   "epoch_seconds": [0.1] * 10}
        study.add_trial(create_trial(
            params={"lr": 3e-3, "depth": 2, "width": 16, "dropout": 0.1, "optimizer": "adam"},
            distributions=DISTRIBUTIONS, value=val[-1],
            intermediate_values=dict(zip(epochs, val)),
            user_attrs={"history": history, "n_params": 5_000, "seed": 1}))
    out = tmp_path / "out"
    make_report(study, out)
    md = (out / "report.md").read_text()
    summary = md.split("## Dataset")[0]
    found = md.split("## Results")[1].split("## What mattered")[0]
    assert "0.343, about 2.1 times chance level (0.167, 6 classes)" in summary
    assert "Diagnosis of trial 1, from its own curves" in found
    assert "Still learning: over its last 4 epochs its training loss changed -0.060" in found
    assert "Few images: about 84 training images per class" in found
    assert "the next study trains 15 epochs instead of 10" in md.split("## Next study")[1]
    assert "\nepochs = 15\n" in (out / "next.toml").read_text()
