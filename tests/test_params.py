"""The parameter table (params.PARAMS) is each parameter's one home: an entry added to it is
fixed or searched in the space, checked against its limits, written into a study's record,
study.toml, next.toml and the report's Search space section, widened as far as it allows,
and filled into the record of a study stored before it existed. Build passes it by name to
the part it feeds, which must take it: that one step is code, and a test here says where."""

from __future__ import annotations

import dataclasses
import inspect
import sys

import optuna
import pytest

from hpsearch import records
from hpsearch.build import fit_settings, model_for
from hpsearch.config import load_config
from hpsearch.errors import ConfigError
from hpsearch.model import build_cnn
from hpsearch.params import (FROM_THE_START, PARAMS, Fixed, Range, Spec, between,
                             default_space, values_for)
from hpsearch.report import _as_run, advice, document
from hpsearch.report.collect import Row
from hpsearch.space import searched_names, suggest_params
from hpsearch.train import FitSettings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

MIXUP = Spec(float, 0.0, between(0, 1), "training", "the share of an image mixed with another",
             widest=(0.0, 1.0), before=0.0)
# The values the default space draws, for a FixedTrial.
DRAWN = {"lr": 3e-3, "depth": 2, "width": 16, "dropout": 0.1, "optimizer": "adam"}


@pytest.fixture
def mixup(monkeypatch):
    """A parameter registered in the table for one test. The table itself, not a copy bound
    to params.PARAMS: config, space, records and advice hold the same dict by name."""
    monkeypatch.setitem(PARAMS, "mixup", MIXUP)


def by_name(cfg) -> dict:
    return {p.name: p for p in cfg.space}


def read_back(text: str, tmp_path, name: str):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return tomllib.loads(text), load_config(path)


def search_space_rows(cfg) -> dict:
    table = document.search_space(cfg, 8).blocks[1]
    return {row[0]: row[1:] for row in table.rows}


def test_a_new_parameter_is_fixed_at_its_default_wherever_a_space_leaves_it_out(mixup):
    cfg = load_config(None)
    assert by_name(cfg)["mixup"] == Fixed("mixup", 0.0)
    assert suggest_params(optuna.trial.FixedTrial(DRAWN), cfg)["mixup"] == 0.0
    assert search_space_rows(cfg)["mixup"] == ["fixed", "0.0"]
    assert cfg.settings()["space"]["mixup"] == 0.0  # the study's record


def test_a_new_parameter_is_searched_where_the_space_names_it(mixup):
    cfg = load_config(None, ["space.mixup={low=0.0, high=0.4}"])
    assert by_name(cfg)["mixup"] == Range("mixup", 0.0, 0.4)
    assert "mixup" in searched_names(cfg)
    params = suggest_params(optuna.trial.FixedTrial({**DRAWN, "mixup": 0.25}), cfg)
    assert params["mixup"] == 0.25
    assert search_space_rows(cfg)["mixup"] == ["range", "0 .. 0.4"]


def test_a_new_parameter_s_limits_are_checked_with_the_table_s_words(mixup):
    for value in ("1.5", "{low=0.0, high=2.0}", "[0.1, -0.1]"):
        with pytest.raises(ConfigError, match=r"space.mixup must be 0..1, got"):
            load_config(None, [f"space.mixup={value}"])
    with pytest.raises(ConfigError, match="space.mixup must be a number, got 'a lot'"):
        load_config(None, ["space.mixup='a lot'"])
    with pytest.raises(ConfigError, match="parameters are .*label_smoothing, mixup"):
        load_config(None, ["space.mixups=0.1"])


def test_study_toml_writes_a_new_parameter_and_reads_it_back(mixup, tmp_path):
    for sets in ([], ["space.mixup={low=0.0, high=0.4}"]):
        cfg = load_config(None, sets)
        text = advice.to_toml(_as_run(cfg, 8))
        raw, again = read_back(text, tmp_path, "study.toml")
        assert "mixup" in raw["space"] and again.space == cfg.space


def test_next_toml_narrows_and_widens_a_new_parameter_within_the_table(mixup, tmp_path):
    cfg = load_config(None, ["space.mixup={low=0.0, high=0.4}"])
    top = [Row(i, "COMPLETE", 0.9 - i / 100, {**DRAWN, "mixup": 0.4 - i / 100}, 1000, 1.0, 6)
           for i in range(5)]  # the best at the top of the range
    plan = advice.next_study(cfg, top, [], trials=8)
    raw, again = read_back(advice.to_toml(plan.settings), tmp_path, "next.toml")
    mixup = by_name(again)["mixup"]
    assert raw["space"]["mixup"]["high"] == mixup.high
    assert 0.4 < mixup.high <= MIXUP.widest[1] and mixup.low > 0.0  # narrowed below, widened
    assert any(note.startswith("mixup: the best trial's value 0.4 sits at the top")
               for note in plan.advice)
    wide = load_config(None, ["space.mixup={low=0.0, high=0.95}"])
    top = [dataclasses.replace(r, params={**r.params, "mixup": 0.95}) for r in top]
    narrowed = advice.next_study(wide, top, [], trials=8).settings["space"]["mixup"]
    assert narrowed["high"] == MIXUP.widest[1]  # widened no further than the table allows


def test_a_study_stored_before_a_new_parameter_resumes_with_the_value_it_ran_with(mixup):
    stored = {"config": load_config(None).settings()}
    del stored["config"]["space"]["mixup"]
    assert records.later_settings()[("space", "mixup")] == 0.0
    assert records.with_later_defaults(stored)["config"]["space"]["mixup"] == 0.0
    assert by_name(records.config_of(stored))["mixup"] == Fixed("mixup", 0.0)


def test_build_passes_a_new_parameter_by_name_to_the_part_it_feeds(mixup):
    """Where the table stops: the trainer must take the value. FitSettings has no field for
    mixup, so building its settings fails loudly, and Spec's docstring says what to add."""
    params = {**DRAWN, "batch_size": 32, "weight_decay": 0.0, "mixup": 0.2}
    assert values_for("training", params)["mixup"] == 0.2
    with pytest.raises(TypeError, match="mixup"):
        fit_settings(params, epochs=2, seed=0)
    assert "train.FitSettings" in Spec.__doc__ and "model.build_cnn" in Spec.__doc__

    class Data:
        channels, classes, image_size = 1, tuple(range(3)), 8

    model_for(params, Data)  # the model's part does not take mixup: unaffected


def test_every_parameter_feeds_a_part_that_takes_it_with_the_same_default():
    """build_cnn's and FitSettings' own defaults (for callers that leave a value out) are the
    table's: the value before the parameter existed, or its one default."""
    fields = {f.name: f.default for f in dataclasses.fields(FitSettings)}
    keywords = {k: p.default for k, p in inspect.signature(build_cnn).parameters.items()}
    for name, spec in PARAMS.items():
        takes = keywords if spec.feeds == "model" else fields
        assert name in takes, f"{name} feeds {spec.feeds}, which has no {name}"
        own = takes[name]
        if own not in (dataclasses.MISSING, inspect.Parameter.empty):
            table = spec.default if spec.before is FROM_THE_START else spec.before
            assert own == table, name


def test_only_the_first_stores_parameters_lack_the_value_older_stores_ran_with():
    """A parameter added now must say what studies stored before it ran with (Spec.before),
    or those studies could not resume nor report."""
    first = {"lr", "depth", "width", "dropout", "weight_decay", "batch_size", "optimizer"}
    assert {n for n, s in PARAMS.items() if s.before is FROM_THE_START} == first


def test_a_spec_that_cannot_be_widened_or_fed_is_refused():
    with pytest.raises(ValueError, match="widest"):
        Spec(float, 0.0, between(0, 1), "training", "no widest")
    with pytest.raises(ValueError, match="outside the limits"):
        Spec(float, 0.0, between(0, 1), "training", "too wide", widest=(0.0, 2.0))
    with pytest.raises(ValueError, match="feeds"):
        Spec(str, "a", between("a", "b"), "optimizer", "not a part")


def test_lr_accepts_up_to_10_and_next_toml_widens_it_up_to_1():
    """A learning rate above 1 never trains these models; a study may still search up to 10
    to see where training diverges. next.toml never widens past 1."""
    assert by_name(load_config(None, ["space.lr={low=1e-4, high=10.0, log=true}"]))["lr"].high \
        == 10.0
    with pytest.raises(ConfigError, match=r"space.lr must be 0 < lr <= 10, got 20.0"):
        load_config(None, ["space.lr=20.0"])
    assert PARAMS["lr"].widest == (1e-6, 1.0)
    new, note = advice.narrowed(Range("lr", 0.01, 0.5, log=True), [0.5, 0.45], 0.5)
    assert new.high == 1.0 and "widen it upwards" in note


def test_the_default_space_is_the_table_s():
    assert [p.name for p in default_space()] == [n for n, s in PARAMS.items() if s.search]
    assert load_config(None).space[:len(default_space())] == default_space()
