"""The diagnosis of a trial from its own curves (a drawn history for each finding), and the
next study acting on it, read back as a study file."""

from __future__ import annotations

from dataclasses import replace

import pytest

from hpsearch.config import load_config
from hpsearch.params import Fixed, Range
from hpsearch.report import advice
from hpsearch.report.diagnose import Finding, diagnose

N_VAL, CLASSES, PLENTY = 270, 10, 120  # validation images, classes, training images per class


def history(train_loss: list, train_acc: list, val_acc: list) -> dict:
    """A trial's per-epoch lists as train.History stores them."""
    return {"train_loss": train_loss, "train_acc": train_acc, "val_loss": [1.0] * len(val_acc),
            "val_acc": val_acc, "epoch_seconds": [0.1] * len(val_acc)}


STILL_LEARNING = history([2.0, 1.6, 1.3, 1.05, 0.85, 0.7, 0.58, 0.48],
                         [0.3, 0.42, 0.52, 0.6, 0.67, 0.73, 0.78, 0.83],
                         [0.3, 0.45, 0.55, 0.63, 0.7, 0.75, 0.79, 0.82])
OVERFITTING = history([1.0, 0.4, 0.15, 0.06, 0.03, 0.02, 0.015, 0.012],
                      [0.7, 0.88, 0.96, 0.99, 1.0, 1.0, 1.0, 1.0],
                      [0.6, 0.7, 0.72, 0.73, 0.73, 0.72, 0.73, 0.73])
UNDERFITTING = history([2.2, 2.05, 2.0, 1.98, 1.97, 1.97, 1.96, 1.97],
                       [0.15, 0.2, 0.22, 0.23, 0.23, 0.24, 0.23, 0.24],
                       [0.15, 0.2, 0.21, 0.22, 0.22, 0.23, 0.22, 0.23])
HEALTHY = history([1.0, 0.4, 0.2, 0.12, 0.09, 0.08, 0.075, 0.072],
                  [0.7, 0.88, 0.94, 0.97, 0.98, 0.98, 0.985, 0.985],
                  [0.7, 0.86, 0.92, 0.95, 0.958, 0.96, 0.963, 0.963])


@pytest.mark.parametrize("curves,per_class,kinds", [
    (STILL_LEARNING, PLENTY, ["still learning"]),
    (OVERFITTING, PLENTY, ["overfitting"]),
    (UNDERFITTING, PLENTY, ["underfitting"]),
    (HEALTHY, 40, ["few images"]),
    (HEALTHY, PLENTY, []),  # a trained model that generalises: nothing to say
], ids=["still learning", "overfitting", "underfitting", "few images", "healthy"])
def test_each_drawn_history_gives_its_diagnosis(curves, per_class, kinds):
    assert [f.kind for f in diagnose(curves, N_VAL, CLASSES, per_class)] == kinds


def test_the_findings_state_their_evidence():
    still, = diagnose(STILL_LEARNING, N_VAL, CLASSES, PLENTY)
    assert "over its last 3 epochs its training loss changed -0.110 per epoch (to 0.480)" in \
        still.text and "+9.4 of 270 validation images" in still.text
    over, = diagnose(OVERFITTING, N_VAL, CLASSES, PLENTY)
    assert "training accuracy, 1.000, is 0.270 above its validation accuracy, 0.730 " \
           "(95% interval 0.674-0.779)" in over.text
    under, = diagnose(UNDERFITTING, N_VAL, CLASSES, PLENTY)
    assert "ended at 0.240 (far below 1, chance level 0.100)" in under.text
    few, = diagnose(HEALTHY, N_VAL, CLASSES, 39.6)
    assert "about 40 training images per class" in few.text and "more photos" in few.text


def test_several_findings_come_most_important_first():
    fitting = history(STILL_LEARNING["train_loss"], [0.5, 0.6, 0.7, 0.8, 0.88, 0.93, 0.96, 0.98],
                      [0.3, 0.4, 0.45, 0.5, 0.53, 0.56, 0.58, 0.6])
    kinds = [f.kind for f in diagnose(fitting, N_VAL, CLASSES, 30)]
    assert kinds == ["still learning", "overfitting", "few images"]


def test_a_gap_within_the_validation_noise_is_not_overfitting():
    curves = history(OVERFITTING["train_loss"], [0.88] * 8, [0.75] * 8)
    assert [f.kind for f in diagnose(curves, N_VAL, CLASSES, PLENTY)] == ["overfitting"]
    assert diagnose(curves, 20, CLASSES, PLENTY) == []  # 15 of 20 could well be 17 of 20


def test_no_classes_or_images_recorded_still_gives_what_the_curves_say():
    assert [f.kind for f in diagnose(OVERFITTING, N_VAL, 0, 0)] == ["overfitting"]
    assert diagnose(HEALTHY, 0, 0, 0) == []


def rows(depths: list) -> list:
    from hpsearch.report.collect import Row

    return [Row(i, "COMPLETE", 0.7 - i / 100, {"lr": 3e-3, "depth": d, "width": 16,
                                                "dropout": 0.1, "optimizer": "adam"}, 1000,
                1.0, 6) for i, d in enumerate(depths)]


def reads_back(plan, tmp_path):
    path = tmp_path / "next.toml"
    path.write_text(advice.to_toml(plan.settings), encoding="utf-8")
    return load_config(path)


def test_still_learning_trains_longer_from_a_number_or_from_auto(tmp_path):
    cfg = load_config(None)  # 6 epochs
    still = diagnose(STILL_LEARNING, N_VAL, CLASSES, PLENTY)
    plan = advice.next_study(cfg, rows([2] * 5), still, 20)
    assert plan.settings["train"]["epochs"] == 9 and "9 epochs instead of 6" in plan.advice[0]
    assert reads_back(plan, tmp_path).train.epochs == 9
    auto = replace(cfg, train=replace(cfg.train, epochs="auto"))
    plan = advice.next_study(auto, rows([2] * 5), still, 20, max_epochs=40)
    assert plan.settings["train"]["epochs"] == 60  # an explicit number, 1.5 x the resolved 40
    assert "still improving" in plan.advice[0] and '`epochs = "auto"` chose' in plan.advice[0]
    healthy = advice.next_study(auto, rows([2] * 5), [], 20, max_epochs=40)
    assert healthy.settings["train"]["epochs"] == "auto"


def test_overfitting_on_photos_turns_augmentation_on_and_reaches_higher_dropout(tmp_path):
    cfg = load_config(None, [f"data.dataset='folder:{tmp_path}'", "train.augment='none'"])
    over = diagnose(OVERFITTING, N_VAL, CLASSES, PLENTY)
    plan = advice.next_study(cfg, rows([2] * 5), over, 20)
    assert "overfits" in plan.advice[0] and "crop+flip" in plan.advice[0]
    again = {p.name: p for p in reads_back(plan, tmp_path).space}
    assert again["augment"] == Fixed("augment", "crop+flip")
    assert again["dropout"].high == pytest.approx(0.7)  # 0.5 + 0.2
    digits = advice.next_study(load_config(None), rows([2] * 5), over, 20)
    assert "augmentation" not in digits.advice[0]  # a flipped digit is another glyph
    space = {p.name: p for p in reads_back(digits, tmp_path).space}
    assert space["augment"] == Fixed("augment", "none") and space["dropout"].high > 0.5


def test_underfitting_grows_depth_and_width_and_searches_the_whole_lr_range(tmp_path):
    cfg = load_config(None)  # depth 1..4, width 8..64 (log), lr 1e-4..1e-1 (log)
    under = diagnose(UNDERFITTING, N_VAL, CLASSES, PLENTY)
    for top in (rows([2, 2, 3, 2, 2]), rows([2])):  # narrowed, and too few to narrow
        plan = advice.next_study(cfg, top, under, 20)
        space = {p.name: p for p in reads_back(plan, tmp_path).space}
        assert space["depth"].high > 4 and space["width"].high > 64, plan.advice
        assert (space["lr"].low, space["lr"].high) == (1e-4, 1e-1)
        assert "underfits" in plan.advice[0] and "depth up to 5" in plan.advice[0]


def test_few_images_is_advice_only():
    cfg = load_config(None)
    few = diagnose(HEALTHY, N_VAL, CLASSES, 40)
    plan = advice.next_study(cfg, rows([2]), few, 20)
    assert plan.advice[0] == few[0].text and plan.changes == []
    assert plan.settings["space"] == advice.next_study(cfg, rows([2]), [], 20).settings["space"]


def test_a_fixed_dropout_becomes_a_range_only_where_the_sampler_takes_one():
    over = [Finding("overfitting", "")]
    cfg = load_config(None, ["space.dropout=0.2"])
    dropout = advice.next_study(cfg, rows([2]), over, 20).settings["space"]["dropout"]
    assert (dropout["low"], dropout["high"]) == (0.2, 0.4)
    grid = replace(cfg, study=replace(cfg.study, sampler="grid"))
    assert advice.next_study(grid, rows([2]), over, 20).settings["space"]["dropout"] == 0.2
