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


@pytest.mark.parametrize("padding,augment", [((1, None), "none"), ((16, None), "none"),
                                             ((1, None), "crop+flip")],
                         ids=["plain", "padded", "augmented"])
def test_a_resumed_fit_repeats_the_uninterrupted_one_on_the_cpu(tmp_path, monkeypatch, padding,
                                                                augment):
    """With the conv channels trained as they are and padded (the checkpoint keeps the
    model's own shapes either way), and with crops and flips: the resumed epochs draw the
    augmentations the uninterrupted ones drew."""
    from dataclasses import replace

    from hpsearch import train

    monkeypatch.setattr(train, "channel_padding", lambda device: padding)
    data = load_dataset(DataConfig(image_size=8), 0)
    settings = replace(SETTINGS, augment=augment)
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
