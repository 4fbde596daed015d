"""The report's Results and What mattered sections: the best trials, the search's charts,
the chosen model on the test split, and the parameters' importances."""

from __future__ import annotations

import warnings
import numpy as np

import hpsearch.report.charts as charts
import hpsearch.report.collect as collect
import hpsearch.report.draw as draw
from hpsearch.report.output import ReportResult, figure
from hpsearch.report.render import Section, Table, Text

N_CURVES = 5  # best trials drawn in the learning curves
N_TOP = 10  # rows of the top-configurations table
N_SAMPLES = 32  # test images in the prediction grid


def results(result: ReportResult, rows: list, ranked: list, trials: list, best, cfg,
            test_blocks: list, findings: list) -> Section:
    """`ranked`: completed rows, best first; `test_blocks`: what test_split made;
    `findings`: the diagnosis of the chosen trial (see diagnose.py)."""
    if not rows:
        return Section("Results", [Text("No trial has finished yet: nothing to show.")])
    names = collect.searched(trials)
    categorical = {n: collect.is_categorical(trials, n) for n in names}
    log = {n: collect.is_log(trials, n) for n in names}
    chosen = best.number if best is not None else None
    blocks = [*_top_table(ranked[:N_TOP], names)]
    if findings:  # a trained model that generalises needs no paragraph
        blocks.append(Text(f"Diagnosis of trial {chosen}, from its own curves (the learning "
                           f"curves below) and the data: " + " ".join(f.text for f in findings)))
    blocks.append(figure(
        result, charts.optimization_history(rows, chosen), "optimization_history.png",
        "Each completed trial's validation accuracy in the order the trials ran, and the best "
        "so far: a line that flattens early means more trials would gain little."))
    if any(r.history.get("val_acc") for r in rows):
        blocks.append(figure(
            result, charts.intermediate_values(rows, chosen, _epochs(result)),
            "intermediate_values.png",
            "Validation accuracy per epoch of every trial: pruned trials stop at the epoch "
            "the pruner stopped them."))
    curves = [r for r in ranked[:N_CURVES] if r.history]
    if curves:
        blocks.append(figure(
            result, draw.learning_curves(curves, chosen), "learning_curves.png",
            "The best trials per epoch: validation (solid) against training (dashed). A "
            "training curve far above its validation curve means overfitting."))
    blocks.append(figure(
        result, draw.comparison(rows, names, categorical, log, chosen), "comparison.png",
        "Validation accuracy against each searched parameter, the model's size and its "
        "training time: where the filled dots sit high is where the search found good "
        "values."))
    complete = [r for r in rows if r.state == "COMPLETE"]
    if len(complete) >= 2 and names:
        blocks.append(figure(
            result, charts.parallel_coordinates(complete, names, categorical, log, chosen),
            "parallel_coordinate.png",
            "Each line is a completed trial through its parameter values, coloured by its "
            "accuracy; the chosen trial is drawn on top."))
    else:
        result.notes.append("parallel_coordinate.png: needs two completed trials and a "
                            "searched parameter.")
    blocks += test_blocks
    blocks += [Text(f"Not drawn: {note}") for note in result.notes]
    return Section("Results", blocks)


def _epochs(result: ReportResult) -> int:
    """The epochs a trial could run, as best_config.json holds them (0 without a best)."""
    epochs = (result.best or {}).get("epochs")
    return epochs if isinstance(epochs, int) else 0


def _top_table(top: list, searched: list) -> list:
    if not top:
        return [Text("No trial has completed yet.")]
    header = ["rank", "trial", "val acc", *searched, "parameters", "train s"]
    body = [[i + 1, r.number, f"{r.value:.4f}", *[fmt(r.params.get(p)) for p in searched],
             fmt(r.n_params), f"{r.train_seconds:.1f}"] for i, r in enumerate(top)]
    return [Text(f"The {len(top)} best completed trials by validation accuracy (ties: the "
                 f"earlier trial first):"), Table(header, body)]


def mattered(result: ReportResult, study, trials: list) -> Section:
    """Parameter importances (PED-ANOVA, Optuna's default) and how many trials they rest
    on."""
    import optuna

    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) < 2 or not collect.searched(trials):
        return Section("What mattered", [Text(
            f"Importances need at least two completed trials of a searched space; this study "
            f"has {len(complete)}.")])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            importances = optuna.importance.get_param_importances(study)
    except (ValueError, RuntimeError, ZeroDivisionError) as err:
        return Section("What mattered", [Text(f"Importances could not be computed ({err}).")])
    if not importances:
        return Section("What mattered", [Text("No parameter varied across the trials.")])
    n = len(complete)
    rows = [[name, label] for name, _, label in charts.importance_shares(importances)]
    caution = " With fewer than about 30, read the order as rough." if n < 30 else ""
    return Section("What mattered", [
        Text(f"How much each parameter decides whether a trial is among the best ones "
             f"(PED-ANOVA, Optuna's default: it compares the values the top trials took with "
             f"those of all), from {n} completed trials.{caution} Narrow the search on the "
             f"top ones; the bottom ones can be fixed."),
        figure(result, charts.param_importances(importances, n), "param_importances.png",
               f"Parameter importance from {n} completed trials."),
        Table(["parameter", "importance"], rows)])


def test_split(result: ReportResult, best, cfg, artifacts, study, data,
               retrain_device) -> list:
    """The chosen trial's model on the test split: its accuracy, a grid of predictions and
    the confusion matrix (blocks for Results); sets result.test_accuracy."""
    from hpsearch import best as best_model
    from hpsearch.precision import usable

    if best is None:
        return []
    state, why = best_model.trial_weights(best, artifacts, study)
    if data is None:
        result.notes.append("prediction grid and confusion matrix: the dataset was not loaded.")
        return []
    params = result.best["params"]
    if state is not None:
        model = best_model.loaded_model(params, data, state)
        source = f"the weights trial {best.number} saved"
    elif retrain_device is not None:
        model = best_model.retrain(params, _epochs(result), result.best["seed"], data,
                                   retrain_device, usable(retrain_device, cfg.train.precision))
        source = f"trial {best.number} retrained with its seed (--retrain), as it had no weights"
    else:
        result.notes.append(f"prediction grid and confusion matrix: {why}; run "
                            f"`hpsearch report --retrain` to retrain the best trial for them.")
        return []
    preds = best_model.predictions_on_test(model.cpu(), data)
    result.test_accuracy = preds.accuracy
    result.best["test_accuracy"] = round(preds.accuracy, 6)
    result.best["test_size"] = int(len(preds.true))
    matrix = confusion_matrix(preds, len(data.classes))
    result.best["confusion_matrix"] = matrix.tolist()
    n, wrong = len(preds.true), int((preds.predicted != preds.true).sum())
    title = (f"Trial {best.number}, test split: accuracy {preds.accuracy:.4f} "
             f"({wrong} of {n} wrong)")
    return [
        Text(f"On the test split, measured once after the search: accuracy "
             f"{preds.accuracy:.4f} on {n} held-out images, from {source}. The test split "
             f"played no part in choosing the trial."),
        figure(result, _grid(preds, data, title), "predictions.png",
               "Test images, each titled with the predicted class and the model's "
               "confidence in it; mistakes come first, framed, with the true class in "
               "brackets."),
        figure(result, draw.confusion(matrix, data.classes, title), "confusion_matrix.png",
               "Rows are the true class, columns the prediction: everything off the "
               "diagonal is a mistake, and its row says what was confused.")]


def confusion_matrix(preds, k: int) -> np.ndarray:
    from sklearn.metrics import confusion_matrix as sk_confusion

    return sk_confusion(preds.true, preds.predicted, labels=list(range(k)))


def _grid(preds, data, title: str):
    """Mistakes first (up to half the grid), then correct images at random, seeded."""
    wrong = np.flatnonzero(preds.predicted != preds.true)[: N_SAMPLES // 2]
    right = np.flatnonzero(preds.predicted == preds.true)
    rng = np.random.default_rng(0)
    n_right = min(len(right), N_SAMPLES - len(wrong))
    picked = np.concatenate([wrong, np.sort(rng.choice(right, n_right, replace=False))])
    picked = picked.astype(np.int64)
    images = data.x_test[picked].cpu().numpy() / 255.0  # 0..1 pixels, as the file showed them
    confidence = getattr(preds, "confidence", None)
    return draw.prediction_grid(images, preds.predicted[picked], preds.true[picked],
                                tuple(data.classes), title,
                                confidence=None if confidence is None else confidence[picked])


def fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 1_000:
        return f"{v:,}"
    return str(v)


# The report's charts by the name a notebook asks for them (hpsearch.api's Study.plot).
FIGURE_NAMES = ("history", "epochs", "curves", "comparison", "parallel", "importance")


def study_figure(study, name: str):
    """The report's chart `name` (FIGURE_NAMES) of `study`, as a matplotlib Figure, drawn by
    the report's own code from the trials stored now; None when the study has too little to
    draw it (no finished trial, fewer than two completed, no searched parameter)."""
    import optuna

    trials = study.get_trials(deepcopy=False)
    rows = collect.finished_rows(trials)
    if name not in FIGURE_NAMES:
        raise ValueError(f"no chart {name!r}; the charts are {', '.join(FIGURE_NAMES)}")
    if not rows:
        return None
    best = collect.best_trial(trials)
    chosen = best.number if best is not None else None
    names = collect.searched(trials)
    categorical = {n: collect.is_categorical(trials, n) for n in names}
    log = {n: collect.is_log(trials, n) for n in names}
    complete = [r for r in rows if r.state == "COMPLETE"]
    if name == "history":
        return charts.optimization_history(rows, chosen)
    if name == "epochs":
        from hpsearch.records import stored_max_epochs

        stored = stored_max_epochs(collect.study_settings(study))
        return charts.intermediate_values(rows, chosen, stored or max(r.epochs_run for r in rows))
    if name == "curves":
        curves = [r for r in collect.top_rows(rows, N_CURVES) if r.history]
        return draw.learning_curves(curves, chosen) if curves else None
    if name == "comparison":
        return draw.comparison(rows, names, categorical, log, chosen)
    if len(complete) < 2 or not names:
        return None
    if name == "parallel":
        return charts.parallel_coordinates(complete, names, categorical, log, chosen)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        importances = optuna.importance.get_param_importances(study)
    return charts.param_importances(importances, len(complete)) if importances else None
