"""Trial checkpoints: a resumed fit continues exactly where it stopped."""

from __future__ import annotations

import pytest
import torch

from hpsearch.checkpoint import TrialCheckpoint
from hpsearch.config import DataConfig
from hpsearch.data import load_dataset
from hpsearch.model import build_cnn
from hpsearch.train import FitSettings, fit

SETTINGS = FitSettings(epochs=5, batch_size=64, lr=0.01, optimizer="adam", seed=7)


def new_model(data):
    torch.manual_seed(7)
    return build_cnn(in_channels=1, num_classes=10, image_size=8, depth=2, width=6,
                     dropout=0.3)


@pytest.mark.parametrize("padding,augment,schedule",
                         [((1, None), "none", "constant"), ((16, None), "none", "constant"),
                          ((1, None), "crop+flip", "constant"), ((1, None), "none", "wsd")],
                         ids=["plain", "padded", "augmented", "wsd-schedule"])
def test_a_resumed_fit_repeats_the_uninterrupted_one_on_the_cpu(tmp_path, monkeypatch, padding,
                                                                augment, schedule):
    """With the conv channels trained as they are and padded (the checkpoint keeps the
    model's own shapes either way), with crops and flips (the resumed epochs draw the
    augmentations the uninterrupted ones drew), and along a warmup-hold-decay learning-rate
    curve with label smoothing (the resumed steps take the rates the uninterrupted ones
    took)."""
    from dataclasses import replace

    from hpsearch import train

    monkeypatch.setattr(train, "channel_padding", lambda device: padding)
    data = load_dataset(DataConfig(image_size=8), 0)
    settings = replace(SETTINGS, augment=augment, schedule=schedule,
                       label_smoothing=0.1 if schedule == "wsd" else 0.0)
    whole = fit(new_model(data), data, settings, torch.device("cpu"))

    ckpt = TrialCheckpoint.under(tmp_path, "s", 3, {"lr": 0.01})
    saved = []

    def die_in_epoch_three(epoch, history):
        saved.append(epoch)
        if epoch == 3:
            raise KeyboardInterrupt  # the process dies here; the checkpoint of epoch 2 stays

    try:
        fit(new_model(data), data, settings, torch.device("cpu"),
            on_epoch_end=die_in_epoch_three, save_state=ckpt.save)
    except KeyboardInterrupt:
        pass
    state, why = ckpt.load()
    assert why is None and state["epoch"] == 2
    assert state["model"]["0.weight"].shape == (6, 1, 3, 3)  # the model's width, never padded
    resumed = fit(new_model(data), data, settings, torch.device("cpu"), resume=state)
    assert resumed.val_acc == whole.val_acc
    assert resumed.train_loss == whole.train_loss
    if schedule == "wsd":
        from hpsearch.schedule import steps_per_epoch

        steps = 5 * steps_per_epoch(len(data.y_train), 64)
        assert state["schedule"] == {"name": "wsd", "lr": 0.01, "total_steps": steps}


def test_a_resumed_trial_keeps_the_curve_it_started_on():
    """A checkpoint's schedule wins over this run's (a trial goes on along the curve it
    started on); one written before schedules existed trained at a constant rate."""
    from hpsearch.schedule import LrPlan, resumed_plan

    mine = LrPlan(0.01, "wsd", 100)
    assert resumed_plan(mine, {"name": "wsd", "lr": 0.02, "total_steps": 80}) == \
        LrPlan(0.02, "wsd", 80)
    assert resumed_plan(mine, None) == LrPlan(0.01, "constant", 100)


def test_the_learning_rate_warms_up_holds_and_decays_to_zero():
    from hpsearch.schedule import lr_factor

    total = 1000
    curve = [lr_factor(step, total, "wsd") for step in range(total)]
    assert curve[0] == pytest.approx(0.1) and max(curve) == 1.0
    assert all(a <= b for a, b in zip(curve[:30], curve[1:31]))  # the warmup rises
    assert curve[30:600] == [1.0] * 570  # holds while the pruner judges
    assert all(a > b for a, b in zip(curve[600:], curve[601:])) and curve[-1] < 0.01
    assert {lr_factor(step, total, "constant") for step in range(total)} == {1.0}


def test_an_epoch_that_ends_the_trial_writes_no_checkpoint():
    data = load_dataset(DataConfig(image_size=8), 0)
    saved = []
    fit(new_model(data), data, SETTINGS, torch.device("cpu"),
        save_state=lambda epoch, state: saved.append(epoch))
    assert saved == [1, 2, 3, 4]  # the fifth and last completes the trial

    def pruned_in_epoch_two(epoch, history):
        if epoch == 2:
            raise StopIteration

    saved.clear()
    try:
        fit(new_model(data), data, SETTINGS, torch.device("cpu"),
            on_epoch_end=pruned_in_epoch_two, save_state=lambda epoch, state: saved.append(epoch))
    except StopIteration:
        pass
    assert saved == [1]


def test_a_checkpoint_of_another_trial_or_a_damaged_one_is_not_used(tmp_path):
    ckpt = TrialCheckpoint.under(tmp_path, "study/with:odd name", 3, {"lr": 0.01})
    assert ckpt.load() == (None, None)
    ckpt.save(1, {"history": {}})
    assert ckpt.load()[0]["epoch"] == 1
    for other in (TrialCheckpoint(ckpt.path, "other", 3, {"lr": 0.01}),
                  TrialCheckpoint(ckpt.path, ckpt.study, 4, {"lr": 0.01}),
                  TrialCheckpoint(ckpt.path, ckpt.study, 3, {"lr": 0.02})):
        state, why = other.load()
        assert state is None and "belongs to another" in why
    ckpt.path.write_bytes(b"\x00 not a checkpoint")
    state, why = ckpt.load()
    assert state is None and "cannot be read" in why
    ckpt.delete()
    assert not ckpt.path.exists() and list(ckpt.path.parent.iterdir()) == []
