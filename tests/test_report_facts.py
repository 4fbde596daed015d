"""What the report states: Wilson intervals, ties within one image, chance level, a trial
still improving, the chosen model's layers, and the next study (narrowed ranges, advice, a
study file that reads back)."""

from __future__ import annotations

import math

import pytest

from hpsearch.build import model_for
from hpsearch.config import load_config
from hpsearch.params import Choice, Fixed, Range
from hpsearch.report import advice, facts
from hpsearch.report.collect import Row
from hpsearch.report.diagnose import Finding


def test_wilson_intervals():
    low, high = facts.wilson(0.5, 100)
    assert low == pytest.approx(0.4038, abs=1e-4) and high == pytest.approx(0.5962, abs=1e-4)
    low, high = facts.wilson(1.0, 270)  # a perfect score still has room below it
    assert high == 1.0 and low == pytest.approx(0.98596, abs=1e-4)
    assert facts.wilson(0.0, 10)[0] == 0.0
    assert all(math.isnan(v) for v in facts.wilson(0.9, 0))
    assert facts.interval_text(0.9889, 270) == "0.9889 (95% interval 0.968-0.996, 270 images)"


def test_ties_within_one_image_and_a_trial_still_improving():
    n = 270
    best = 267 / n
    values = [best, 266 / n, 266 / n, 265 / n, 0.5]
    assert facts.within_one_image(values, best, n) == 3
    flat_loss = [0.3, 0.29, 0.29, 0.29]
    assert facts.still_improving(curves(flat_loss, [0.9, 0.95, 0.97, 0.99]), n, 10)
    # its best came earlier
    assert not facts.still_improving(curves(flat_loss, [0.9, 0.99, 0.98, 0.985]), n, 10)
    # under one image in two epochs
    assert not facts.still_improving(curves(flat_loss[1:], [0.982, 0.984, 0.985]), n, 10)
    assert not facts.still_improving(curves([2.0, 1.0], [0.9, 0.95]), n, 10)  # no trend yet


def curves(train_loss: list, val_acc: list) -> dict:
    return {"train_loss": train_loss, "val_acc": val_acc}


def test_a_tie_after_a_rise_while_the_loss_rises_is_not_still_improving():
    # The digits report said "still improving" here: the last epoch tied the one before it,
    # which had risen more than one image above the epoch two before, while the loss rose.
    history = curves([0.40, 0.15, 0.09, 0.07, 0.075], [0.90, 0.95, 0.97, 0.978, 0.978])
    assert not facts.still_improving(history, 270, 10)


def test_a_fast_falling_loss_is_still_improving_when_the_last_epoch_lost_one_image():
    n = 270
    val_acc = [0.5, 0.6, 0.7, 0.8, 0.8 - 1 / n]  # the last epoch is not the best
    assert facts.still_improving(curves([2.0, 1.5, 1.1, 0.8, 0.6], val_acc), n, 10)
    assert facts.still_improving(curves([], val_acc), n, 10)  # the accuracy's trend alone
    assert facts.still_improving(curves([2.0, 1.5, 1.1, 0.8, 0.6], [0.5] * 5), n, 10)
    assert facts.loss_falling([2.0, 1.5, 1.1, 0.8, 0.6], 10)
    assert not facts.loss_falling([0.2, 0.1, 0.05, 0.03, 0.02], 10)  # falling ever less


def test_accuracy_against_chance_level():
    assert facts.against_chance(0.343, 6, 108) == (
        "0.343, about 2.1 times chance level (0.167, 6 classes)")
    assert facts.near_chance(0.19, 6, 108)  # 2.5 images above chance on 108
    assert "no better than guessing" in facts.against_chance(0.19, 6, 108)
    assert not facts.near_chance(0.19, 6, 10_000)  # the same accuracy on many more images
    assert not facts.near_chance(0.19, 0, 108)  # classes not recorded: nothing to say


def test_the_summary_says_plainly_when_the_best_is_no_better_than_guessing():
    from hpsearch.report import document

    best = {"trial": 3, "validation_accuracy": 0.19}
    section = document.summary("s", {"COMPLETE": 4}, best, 108, 6, 1, None, 10.0, "cpu")
    text = [b.text for b in section.blocks if hasattr(b, "text")]
    assert any(t.startswith("The best trial is no better than guessing") for t in text)
    rows = dict(section.blocks[1].rows)
    assert rows["validation accuracy against chance level (1 / classes)"].startswith(
        "0.190, no better than guessing")


def test_the_training_table_says_what_weight_decay_applied_to():
    from hpsearch.config import load_config
    from hpsearch.report import document

    def decay(params):
        section = document.training(load_config(None, []), {"params": params}, "fp32")
        return dict(section.blocks[1].rows)["weight decay"]

    assert decay({"lr": 0.01}) == "0"
    assert decay({"weight_decay": 0.1}) == "0.1 (all parameters)"  # as studies before it ran
    assert decay({"weight_decay": 0.1, "decay_on": "weights"}) == (
        "0.1 (weights only: not batch norm, not biases)")


def test_the_layer_table_adds_up_to_the_model():
    params = {"depth": 3, "width": 24, "dropout": 0.2, "head": "gap", "growth": 2}
    rows = facts.layer_table(params, 3, 6, 32)

    class Data:
        channels, classes, image_size = 3, tuple(range(6)), 32

    total = sum(p.numel() for p in model_for(params, Data).parameters())
    assert rows[-1] == ("total", None, total)
    assert sum(count for _, _, count in rows[:-1]) == total
    assert rows[0] == ("conv 3x3, 3 -> 24", (24, 32, 32), 3 * 24 * 9)
    assert rows[-2] == ("linear 96 -> 6", (6,), 96 * 6 + 6)  # 24 -> 48 -> 96 channels
    assert ("global average pool", (96, 1, 1), 0) in rows


def rows_with(values: list) -> list:
    """Completed rows, best first, whose lr, depth and optimizer are `values`."""
    return [Row(i, "COMPLETE", 0.99 - i / 1000, {"lr": lr, "depth": d, "optimizer": o}, 1000,
                1.0, 6) for i, (lr, d, o) in enumerate(values)]


def test_ranges_narrow_around_the_best_trials_and_choices_keep_what_they_used():
    lr = Range("lr", 1e-4, 1e-1, log=True)
    new, note = advice.narrowed(lr, [3e-3, 5e-3, 4e-3, 2e-3, 6e-3], 3e-3)
    assert new.log and 1e-4 < new.low <= 2e-3 and 6e-3 <= new.high < 1e-1 and note == ""
    depth = Range("depth", 1, 8)
    new, _ = advice.narrowed(depth, [3, 4, 4, 3, 5], 4)
    assert (new.low, new.high) == (2, 6) and isinstance(new.low, int)  # 3..5, margin 0.7
    stepped = Range("width", 8, 64, step=8)
    new, _ = advice.narrowed(stepped, [24, 32, 32, 40], 32)
    assert (new.low - 8) % 8 == 0 and (new.high - 8) % 8 == 0 and new.low <= 24 and 40 <= new.high
    opt = Choice("optimizer", ("adam", "adamw", "sgd"))
    assert advice.narrowed(opt, ["sgd", "adam", "sgd"], "sgd")[0] == Choice(
        "optimizer", ("adam", "sgd"))
    assert advice.narrowed(opt, ["sgd", "sgd"], "sgd")[0] == Fixed("optimizer", "sgd")
    assert advice.narrowed(Fixed("head", "gap"), ["gap"], "gap") == (Fixed("head", "gap"), "")


def test_a_best_value_at_the_edge_of_its_range_widens_it_within_the_trainers_limits():
    lr = Range("lr", 1e-4, 1e-2, log=True)
    new, note = advice.narrowed(lr, [9.8e-3, 9e-3, 8e-3], 9.8e-3)
    assert new.high > 1e-2 and "sits at the top of its range: widen it upwards" in note
    depth = Range("depth", 1, 4)  # at its bottom, but 1 is the least depth there is
    new, note = advice.narrowed(depth, [1, 1, 2], 1)
    assert new.low == 1 and note == ""
    dropout = Range("dropout", 0.3, 0.6)
    new, note = advice.narrowed(dropout, [0.3, 0.35], 0.3)
    assert 0.0 <= new.low < 0.3 and "bottom" in note


def test_the_next_study_file_reads_back_as_a_study(tmp_path):
    cfg = load_config(None, ["space.augment=['none', 'crop+flip']",
                             "data.dataset='folder:/data/ph\u00f6tos \"2026\"'"])
    ranked = rows_with([(2e-3, 3, "sgd"), (3e-3, 3, "sgd"), (1e-3, 2, "sgd"),
                        (4e-3, 4, "sgd"), (2e-3, 3, "sgd")])
    plan = advice.next_study(cfg, ranked, [Finding("still learning", "")], trials=30)
    path = tmp_path / "next.toml"
    path.write_text(advice.to_toml(plan.settings, "the next study\nrun it"))
    again = load_config(path)
    assert again.study.name == f"{cfg.study.name}-next" and again.study.trials == 30
    assert again.train.epochs == 9 and again.data.dataset == cfg.data.dataset
    space = {p.name: p for p in again.space}
    assert space["optimizer"] == Fixed("optimizer", "sgd")
    assert space["augment"] == Choice("augment", ("none", "crop+flip"))  # unused: kept
    assert space["lr"].low >= 1e-4 and space["lr"].high <= 1e-1 and space["lr"].log
    assert "still improving" in plan.advice[0]
    assert ("optimizer", "adam | sgd", "fixed sgd") in plan.changes


def test_toml_values():
    assert advice.toml_value(1e-4) == "0.0001" and advice.toml_value(True) == "true"
    assert advice.toml_value({"low": 1, "log": False}) == "{ low = 1, log = false }"
    assert advice.toml_value([["crop", "flip"], []]) == '[["crop", "flip"], []]'
    with pytest.raises(ValueError):
        advice.toml_value(math.inf)


@pytest.mark.parametrize("p,values,best", [
    (Range("width", 8, 64, step=8), [8, 16, 8], 8),  # a grid's low can go no lower
    (Range("batch_size", 16, 256, step=16), [16, 32], 16),
    (Range("depth", 2, 8, step=2), [2, 4], 2),
    (Range("depth", 1, 7, step=2), [7, 5], 7),
    (Range("lr", 0.001, 0.1), [0.001, 0.002], 0.001),  # linear: widening must stay above 0
    (Range("weight_decay", 0.0, 0.9), [0.9, 0.85], 0.9),  # and below 1
    (Range("weight_decay", 0.3, 1.0), [0.97, 0.9], 0.97),
    (Range("dropout", 0.05, 0.5), [0.2, 0.3], 0.2),
    (Range("depth", 1, 4), [3, 3, 3], 3),  # the best trials agree: a step either side
])
def test_a_narrowed_range_is_one_a_study_file_accepts(p, values, best):
    from hpsearch.params import build_param, param_to_toml

    new, _ = advice.narrowed(p, values, best)
    assert build_param(p.name, param_to_toml(new)) == new
    assert new.low <= min(values) and max(values) <= new.high and new.low < new.high
    if p.step:
        assert (new.low - p.low) % p.step == 0 and (new.high - p.low) % p.step == 0


def test_too_few_trials_leave_the_space_as_it_was():
    cfg = load_config(None)
    plan = advice.next_study(cfg, rows_with([(2e-3, 3, "sgd")] * 3), [], trials=3)
    assert plan.changes == [] and "too few to narrow" in plan.advice[0]


def test_any_folder_name_reads_back_from_the_study_file(tmp_path):
    name = "folder:/photos/\U0001f4f7 caf\u00e9 \"2026\" \\ tab\t del\x7f"
    path = tmp_path / "s.toml"
    path.write_text(advice.to_toml({"data": {"dataset": name}}), encoding="utf-8")
    import tomllib

    assert tomllib.loads(path.read_text(encoding="utf-8"))["data"]["dataset"] == name
