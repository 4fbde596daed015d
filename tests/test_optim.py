"""hpsearch's fused optimizer against torch.optim's, step for step, on a real CNN."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from hpsearch.model import build_cnn
from hpsearch.optim import FusedOptimizer, decay_groups

TORCH_OPTIM = {
    "adam": lambda params, **kw: torch.optim.Adam(params, fused=True, **kw),
    "adamw": lambda params, **kw: torch.optim.AdamW(params, fused=True, **kw),
    "sgd": lambda params, **kw: torch.optim.SGD(params, momentum=0.9, nesterov=True,
                                                fused=True, **kw),
}


def twin_models():
    torch.manual_seed(0)
    model = build_cnn(in_channels=1, num_classes=10, image_size=8, depth=2, width=8)
    model.to(memory_format=torch.channels_last)
    return model, copy.deepcopy(model)


def batches(n: int):
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(16, 1, 8, 8, generator=gen).to(memory_format=torch.channels_last),
             torch.randint(0, 10, (16,), generator=gen)) for _ in range(n)]


def train(model, optimizer, data, scaler=None, poison_step=None) -> None:
    scaler = scaler or torch.amp.GradScaler("cpu", enabled=False)
    for i, (xb, yb) in enumerate(data):
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(xb), yb)
        scaler.scale(loss).backward()
        if i == poison_step:
            next(model.parameters()).grad.view(-1)[0] = float("inf")
        scaler.step(optimizer)
        scaler.update()


def assert_same_weights(a, b) -> None:
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", ["adam", "adamw", "sgd"])
def test_steps_as_torch_optim_and_resumes_from_its_state(kind):
    ours, theirs = twin_models()
    settings = {"lr": 0.01, "weight_decay": 1e-3}
    mine = FusedOptimizer(ours.parameters(), kind, **settings)
    reference = TORCH_OPTIM[kind](theirs.parameters(), **settings)
    data = batches(8)
    train(ours, mine, data[:5])
    train(theirs, reference, data[:5])
    assert_same_weights(ours, theirs)
    # A checkpoint written by torch.optim goes on in hpsearch's optimizer, and the other way.
    resumed_ours = FusedOptimizer(ours.parameters(), kind, **settings)
    resumed_ours.load_state_dict(copy.deepcopy(reference.state_dict()))
    resumed_theirs = TORCH_OPTIM[kind](theirs.parameters(), **settings)
    resumed_theirs.load_state_dict(copy.deepcopy(mine.state_dict()))
    train(ours, resumed_ours, data[5:])
    train(theirs, resumed_theirs, data[5:])
    assert_same_weights(ours, theirs)
    assert not torch.equal(ours[0].weight, twin_models()[0][0].weight)


@pytest.mark.parametrize("kind", ["adamw", "sgd"])
def test_weight_decay_on_the_weights_only_steps_and_resumes_as_torch_optim_groups(kind):
    """decay_on "weights": convolution and classifier weights decay, batch norm and biases
    do not; two groups that step, save and load as torch.optim's, either way."""
    ours, theirs = twin_models()
    groups = decay_groups(ours.named_parameters(), 0.1, "weights")
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    assert all(p.dim() > 1 for p in groups[0]["params"])
    assert "1.weight" in groups[1]["param_names"] and "1.bias" in groups[1]["param_names"]
    assert len(decay_groups(ours.named_parameters(), 0.0, "weights")) == 1
    assert len(decay_groups(ours.named_parameters(), 0.1, "all")) == 1
    mine = FusedOptimizer(groups, kind, lr=0.01)
    reference = TORCH_OPTIM[kind](decay_groups(theirs.named_parameters(), 0.1, "weights"),
                                  lr=0.01)
    data = batches(8)
    train(ours, mine, data[:5])
    train(theirs, reference, data[:5])
    assert_same_weights(ours, theirs)
    resumed_ours = FusedOptimizer(decay_groups(ours.named_parameters(), 0.1, "weights"), kind,
                                  lr=0.01)
    resumed_ours.load_state_dict(copy.deepcopy(reference.state_dict()))
    resumed_theirs = TORCH_OPTIM[kind](decay_groups(theirs.named_parameters(), 0.1, "weights"),
                                       lr=0.01)
    resumed_theirs.load_state_dict(copy.deepcopy(mine.state_dict()))
    train(ours, resumed_ours, data[5:])
    train(theirs, resumed_theirs, data[5:])
    assert_same_weights(ours, theirs)
    # Decay on every parameter moves batch norm's scales elsewhere than on the weights only.
    alike, _ = twin_models()
    everything = FusedOptimizer(decay_groups(alike.named_parameters(), 0.1, "all"), kind, lr=0.01)
    train(alike, everything, data)
    assert not torch.allclose(alike[1].weight, ours[1].weight)
    with pytest.raises(ValueError, match="does not fit"):
        FusedOptimizer(alike.parameters(), kind, lr=0.01).load_state_dict(mine.state_dict())


@pytest.mark.parametrize("kind", ["adam", "sgd"])
def test_a_gradient_scaler_unscales_and_skips_an_inf_step_as_with_torch_optim(kind):
    ours, theirs = twin_models()
    mine = FusedOptimizer(ours.parameters(), kind, lr=0.01)
    reference = TORCH_OPTIM[kind](theirs.parameters(), lr=0.01)
    scalers = [torch.amp.GradScaler("cpu", init_scale=1024.0) for _ in range(2)]
    data = batches(4)
    train(ours, mine, data, scalers[0], poison_step=1)
    train(theirs, reference, data, scalers[1], poison_step=1)
    assert scalers[0].get_scale() == scalers[1].get_scale() == 512.0  # halved once, at the inf
    assert_same_weights(ours, theirs)
    if kind == "adam":  # the skipped step is not counted
        assert mine.state_dict()["state"][0]["step"].item() == 3


def test_a_parameter_without_a_gradient_keeps_its_weights_and_state():
    model, _ = twin_models()
    optimizer = FusedOptimizer(model.parameters(), "adam", lr=0.01)
    train(model, optimizer, batches(1))
    frozen, other = model[0].weight, list(model.parameters())[-1]
    before = [frozen.detach().clone(), other.detach().clone()]
    optimizer.zero_grad()
    model(batches(1)[0][0]).sum().backward()
    frozen.grad = None
    optimizer.step()
    assert torch.equal(frozen, before[0]) and not torch.equal(other, before[1])
    steps = [s["step"].item() for s in optimizer.state_dict()["state"].values()]
    assert steps[0] == 1 and steps[-1] == 2


def test_training_never_imports_torchs_compiler():
    """torch.optim's step imports torch._dynamo (over a second per process); a trial must not."""
    code = ("import sys, torch; from hpsearch.model import build_cnn; "
            "from hpsearch.data import load_dataset; from hpsearch.config import load_config; "
            "from hpsearch.train import FitSettings, fit; "
            "cfg = load_config(None, ['data.image_size=8']); "
            "data = load_dataset(cfg.data, 0); "
            "model = build_cnn(in_channels=1, num_classes=10, image_size=8, depth=1, width=4); "
            "fit(model, data, FitSettings(epochs=1, batch_size=64, lr=0.01), "
            "torch.device('cpu')); "
            "print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "False"
