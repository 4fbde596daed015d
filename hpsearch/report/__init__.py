"""The best-config report of a study: collect plain data, draw figures, write the files."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from hpsearch import records
from hpsearch.report import collect, draw
from hpsearch.report.render import Image, Section, Table, Text, html_page, markdown

N_CURVES = 5  # best trials drawn in the learning curves
N_TOP = 10  # rows of the top-configurations table
N_SAMPLES = 32  # test images in the prediction grid


@dataclass
class ReportResult:
    folder: Path
    files: list = field(default_factory=list)  # written, in order
    notes: list = field(default_factory=list)  # what could not be drawn, and why
    best: Optional[dict] = None  # best_config.json's content
    test_accuracy: Optional[float] = None


def make_report(study, out: Path, artifacts=None, load_data: Optional[Callable] = None,
                data_dir: Optional[str] = None, retrain_device=None) -> ReportResult:
    """Write best_config.json, report.md, report.html and the charts of `study` into `out`.

    `load_data(cfg)` returns the study's Dataset and is called only when a model chart needs
    the test split. Weights come from `artifacts`; with `retrain_device` a best trial without
    weights is retrained there (never otherwise).
    """
    out.mkdir(parents=True, exist_ok=True)
    result = ReportResult(out)
    trials = study.get_trials(deepcopy=False)
    settings = collect.study_settings(study)
    cfg = records.config_of(settings, data_dir)
    rows = collect.finished_rows(trials)
    top = collect.top_rows(rows, N_TOP)
    best = collect.best_trial(trials)
    summary = collect.summarize(study, trials, settings)

    sections = [Section("Summary", [_summary_table(summary)])]
    if best is None:
        sections[0].blocks.append(Text("No trial has completed yet, so there is no best "
                                       "configuration, model or test accuracy."))
    else:
        result.best = collect.best_config(study, best, settings, cfg)
    sections.append(_model_section(result, best, cfg, artifacts, study, load_data,
                                   retrain_device))
    if result.best is not None:
        sections.insert(1, _best_section(result.best))
        _write(out / "best_config.json", json.dumps(result.best, indent=2) + "\n", result)
    sections.append(_top_section(top, collect.searched(trials)))
    sections.append(_curves_section(result, top[:N_CURVES]))
    sections.append(_comparison_section(result, rows, trials))
    sections.append(_optuna_section(result, study, trials))
    if result.notes:
        sections.append(Section("Not drawn", [Text(n) for n in result.notes]))

    title = f"hpsearch report: {study.study_name}"
    _write(out / "report.md", markdown(title, sections) + "\n", result)
    _write(out / "report.html", html_page(title, sections, out) + "\n", result)
    return result


def _write(path: Path, text: str, result: ReportResult) -> None:
    path.write_text(text, encoding="utf-8")
    result.files.append(path)


def _figure(result: ReportResult, fig, filename: str, caption: str,
            tight: bool = False) -> Image:
    draw.save(fig, result.folder / filename, tight)
    result.files.append(result.folder / filename)
    return Image(filename, caption)


def _summary_table(s: collect.Summary) -> Table:
    states = ", ".join(f"{n} {k.lower()}" for k, n in sorted(s.states.items())) or "none"
    saved = (f"{s.epochs_saved} of {s.epochs_possible} "
             f"({s.epochs_saved / s.epochs_possible:.0%})" if s.epochs_possible else "0")
    return Table(["", ""], [
        ["trials", states],
        ["wall time", f"{s.wall_seconds:.1f} s"],
        ["device", s.device or "unknown"],
        ["sampler", s.sampler],
        ["pruner", s.pruner],
        ["epochs per trial", s.epochs],
        ["epochs saved by pruning", saved],
    ])


def _best_section(best: dict) -> Section:
    rows = [["trial", best["trial"]],
            ["validation accuracy", f"{best['validation_accuracy']:.4f}"]]
    if best.get("test_accuracy") is not None:
        rows.append(["test accuracy (held out, measured once)", f"{best['test_accuracy']:.4f}"])
    rows += [[k, _fmt(v)] for k, v in best["params"].items()]
    rows += [["dataset", best["dataset"]], ["image size", best["image_size"]],
             ["epochs", best["epochs"]], ["seed", best["seed"]],
             ["parameters", _fmt(best.get("n_params"))]]
    return Section("Best configuration", [
        Table(["", ""], rows),
        Text("`best_config.json` holds these values with the study's settings; "
             "`hpsearch train --best best_config.json` retrains it on train + validation.")])


def _top_section(top: list, searched: list) -> Section:
    header = ["rank", "trial", "val acc", *searched, "parameters", "train s"]
    body = [[i + 1, r.number, f"{r.value:.4f}", *[_fmt(r.params.get(p)) for p in searched],
             _fmt(r.n_params), f"{r.train_seconds:.1f}"] for i, r in enumerate(top)]
    text = Text(f"The {len(top)} best completed trials by validation accuracy.")
    return Section("Top configurations", [text, Table(header, body)] if top else
                   [Text("No trial has completed yet.")])


def _curves_section(result: ReportResult, top: list) -> Section:
    if not any(r.history for r in top):
        return Section("Learning curves", [Text("No completed trial has per-epoch history.")])
    fig = draw.learning_curves([r for r in top if r.history])
    return Section("Learning curves", [_figure(
        result, fig, "learning_curves.png",
        "Per epoch, for the best trials: validation (solid) against training (dashed). A "
        "training curve far above its validation curve means overfitting.")])


def _comparison_section(result: ReportResult, rows: list, trials: list) -> Section:
    if not rows:
        return Section("Comparison across configurations", [Text("No trial has finished.")])
    names = collect.searched(trials)
    fig = draw.comparison(rows, names, {n: collect.is_categorical(trials, n) for n in names},
                          {n: collect.is_log(trials, n) for n in names})
    return Section("Comparison across configurations", [_figure(
        result, fig, "comparison.png",
        "Each dot is a trial: filled, completed; hollow grey, pruned at its last reported "
        "accuracy. Where the filled dots sit high is where the search found good values.")])


ACC = "validation accuracy"
# (Optuna's plot, file, how to read it, how to label it)
OPTUNA_PLOTS = (
    ("plot_optimization_history", "optimization_history.png",
     "Each completed trial's validation accuracy and the best so far: a curve that flattens "
     "early means more trials would gain little.", dict(ylabel=ACC)),
    ("plot_intermediate_values", "intermediate_values.png",
     "Validation accuracy per epoch of every trial: lines that stop early were pruned there.",
     dict(legend=False, xlabel="epoch", ylabel=ACC)),
    ("plot_param_importances", "param_importances.png",
     "How much of the variation in validation accuracy each parameter explains (PED-ANOVA): "
     "narrow the search on the top ones, fix the rest.", dict(legend=False)),
    ("plot_parallel_coordinate", "parallel_coordinate.png",
     "Each line is a completed trial through its parameter values, coloured by accuracy: "
     "bands where the dark lines gather are good regions.", {}),
)


def _optuna_section(result: ReportResult, study, trials: list) -> Section:
    import optuna
    from optuna.visualization import matplotlib as plots

    blocks = []
    n_complete = sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    for name, filename, caption, labels in OPTUNA_PLOTS:
        if name in ("plot_param_importances", "plot_parallel_coordinate") and n_complete < 2:
            result.notes.append(f"{filename}: needs at least two completed trials "
                                f"({n_complete} so far).")
            continue
        if name == "plot_intermediate_values" and not any(t.intermediate_values for t in trials):
            result.notes.append(f"{filename}: no trial has reported an epoch yet.")
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # experimental-API notices
                fig = draw.optuna_plot(getattr(plots, name), study, **labels)
        except (ValueError, RuntimeError, ZeroDivisionError) as err:
            result.notes.append(f"{filename}: Optuna could not draw it ({err}).")
            continue
        blocks.append(_figure(result, fig, filename, caption, tight=True))
    return Section("The search", blocks or [Text("Nothing to draw yet.")])


def _model_section(result: ReportResult, best, cfg, artifacts, study, load_data,
                   retrain_device) -> Section:
    from hpsearch import best as best_model
    from hpsearch.precision import usable

    title = "The best model on the test split"
    if best is None:
        return Section(title, [Text("No completed trial, so no model.")])
    state, why = best_model.trial_weights(best, artifacts, study)
    data = load_data(cfg) if load_data is not None else None
    if data is None:
        result.notes.append("model charts: the dataset was not loaded.")
        return Section(title, [Text("The dataset was not loaded, so the model was not run.")])
    params = result.best["params"]
    if state is not None:
        model = best_model.loaded_model(params, data, state)
        source = f"the weights trial {best.number} saved"
    elif retrain_device is not None:
        model = best_model.retrain(params, cfg.train.epochs, result.best["seed"], data,
                                   retrain_device, usable(retrain_device, cfg.train.precision))
        source = f"trial {best.number} retrained with its seed (--retrain), as it had no weights"
    else:
        result.notes.append(f"prediction grid and confusion matrix: {why}; run "
                            f"`hpsearch report --retrain` to retrain the best trial for them.")
        return Section(title, [Text(f"Not drawn: {why}. Pass `--retrain` to retrain the best "
                                    f"trial with its seed and draw them.")])
    preds = best_model.predictions_on_test(model.cpu(), data)
    result.test_accuracy = preds.accuracy
    result.best["test_accuracy"] = round(preds.accuracy, 6)
    result.best["test_size"] = int(len(preds.true))
    matrix = confusion_matrix(preds, len(data.classes))
    result.best["confusion_matrix"] = matrix.tolist()
    blocks = [Text(f"Test accuracy {preds.accuracy:.4f} on {len(preds.true)} held-out images, "
                   f"from {source}. The test split played no part in choosing it.")]
    blocks.append(_figure(result, _grid(preds, data), "predictions.png",
                          "Test images titled with the prediction; a mistake is framed in red "
                          "and titled predicted / true. Mistakes come first."))
    blocks.append(_figure(result, draw.confusion(matrix, data.classes), "confusion_matrix.png",
                          "Rows are the true class, columns the prediction: everything off "
                          "the diagonal is a mistake, and its row says what was confused."))
    return Section(title, blocks)


def confusion_matrix(preds, k: int) -> np.ndarray:
    from sklearn.metrics import confusion_matrix as sk_confusion

    return sk_confusion(preds.true, preds.predicted, labels=list(range(k)))


def _grid(preds, data):
    """Mistakes first (up to half the grid), then correct images at random, seeded."""
    wrong = np.flatnonzero(preds.predicted != preds.true)[: N_SAMPLES // 2]
    right = np.flatnonzero(preds.predicted == preds.true)
    rng = np.random.default_rng(0)
    n_right = min(len(right), N_SAMPLES - len(wrong))
    picked = np.concatenate([wrong, np.sort(rng.choice(right, n_right, replace=False))])
    picked = picked.astype(np.int64)
    images = data.x_test[picked].cpu().numpy() / 255.0  # 0..1 pixels, as the file showed them
    n_wrong = int((preds.predicted != preds.true).sum())
    title = (f"{n_wrong} of {len(preds.true)} test images wrong"
             + (f"; {len(wrong)} shown first" if n_wrong else ""))
    return draw.prediction_grid(images, preds.predicted[picked], preds.true[picked],
                                tuple(data.classes), title)


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 1_000:
        return f"{v:,}"
    return str(v)
