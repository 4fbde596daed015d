"""A trial's length in optimizer steps ("auto" epochs), the pruner's rungs over it, and the
learning-rate schedule and label smoothing as study parameters."""

from __future__ import annotations

import pytest

from hpsearch.build import max_epochs
from hpsearch.config import load_config
from hpsearch.errors import ConfigError
from hpsearch.schedule import AUTO_STEPS, MAX_EPOCHS, MIN_EPOCHS, auto_epochs, budget_epochs, \
    steps_per_epoch
from hpsearch.study import first_rung, make_pruner


def test_a_small_folder_trains_more_epochs_than_a_large_one():
    assert steps_per_epoch(130, 64) == 3 and steps_per_epoch(129, 64) == 2  # 1 image: no step
    many, few = auto_epochs(1_500, 64), auto_epochs(6_000, 64)
    assert many > few
    # About AUTO_STEPS steps either way, within the bounds.
    for n, epochs in ((1_500, many), (6_000, few)):
        assert epochs * steps_per_epoch(n, 64) >= AUTO_STEPS
        assert (epochs - 1) * steps_per_epoch(n, 64) < AUTO_STEPS or epochs == MIN_EPOCHS
    assert auto_epochs(60_000, 64) == MIN_EPOCHS and auto_epochs(20, 64) == MAX_EPOCHS
    assert auto_epochs(420, 64) == MAX_EPOCHS  # 7 steps an epoch: 100 epochs, 700 steps
    assert max_epochs("auto", 1_500, 64) == many and max_epochs(7, 1_500, 64) == 7


def test_a_time_budget_shortens_the_longest_trial():
    assert budget_epochs(60, seconds_per_epoch=2.0, budget=1200) == 60  # fits: kept
    assert budget_epochs(60, seconds_per_epoch=2.0, budget=200) == 25  # a quarter of 200 s
    assert budget_epochs(60, seconds_per_epoch=60.0, budget=100) == 3  # never below 3
    assert budget_epochs(60, seconds_per_epoch=2.0, budget=0) == 60  # no budget


def test_epochs_are_auto_by_default_and_a_number_or_auto_otherwise(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text("[study]\nname = 's'\n")
    assert load_config(path).train.epochs == "auto"
    assert load_config(path, ["train.epochs=12"]).train.epochs == 12
    assert load_config(None, ["train.epochs=auto"]).train.epochs == "auto"
    for bad, says in (("0", "auto or 1..10000, got 0"), ("'many'", "got 'many'"),
                      ("2.5", "got 2.5"), ("true", "got True")):
        with pytest.raises(ConfigError, match="train.epochs must be auto or"):
            load_config(path, [f"train.epochs={bad}"])
        with pytest.raises(ConfigError) as err:
            load_config(path, [f"train.epochs={bad}"])
        assert says in str(err.value)


def test_hyperband_and_halving_judge_long_trials_after_their_warmup():
    assert first_rung(6) == 1 and first_rung(100) == 3
    cfg = load_config(None, ["study.pruner='hyperband'"])
    pruner = make_pruner(cfg, 100)
    assert pruner._min_resource == 3 and pruner._max_resource == 100
    sha = make_pruner(load_config(None, ["study.pruner='sha'"]), 54)
    assert sha._min_resource == 2


def test_schedule_and_label_smoothing_are_parameters_a_study_fixes_or_searches():
    from hpsearch.params import Choice, Fixed, Range

    by_name = {p.name: p for p in load_config(None).space}
    assert by_name["schedule"] == Fixed("schedule", "wsd")
    assert by_name["label_smoothing"] == Fixed("label_smoothing", 0.0)
    cfg = load_config(None, ["space.schedule=['wsd', 'constant']",
                             "space.label_smoothing={low=0.0, high=0.2}"])
    by_name = {p.name: p for p in cfg.space}
    assert by_name["schedule"] == Choice("schedule", ("wsd", "constant"))
    assert by_name["label_smoothing"] == Range("label_smoothing", 0.0, 0.2)
    with pytest.raises(ConfigError, match="space.schedule must be constant | wsd"):
        load_config(None, ["space.schedule='cosine'"])
    with pytest.raises(ConfigError, match=r"space.label_smoothing must be 0..0.5, got 0.7"):
        load_config(None, ["space.label_smoothing=0.7"])
