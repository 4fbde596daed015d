"""The GPU's precisions on the CPU: fp16 with its gradient scaler forced through torch's CPU
autocast, checkpoints that resume in any other precision, random streams of the trial's own
device, and a divergence check that ignores the steps the scaler skipped."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import pytest
import torch

from hpsearch import train
from hpsearch.checkpoint import TrialCheckpoint, rng_state, set_rng_state
from hpsearch.config import DataConfig
from hpsearch.data import load_dataset
from hpsearch.model import build_cnn
from hpsearch.precision import Precision
from hpsearch.train import Diverged, FitSettings, fit

CPU = torch.device("cpu")
PRECISIONS = ("fp32", "bf16", "fp16")
real_choose = train.choose_precision


def cpu_precision(device, wanted="auto"):
    """choose_precision with fp16 allowed on the CPU: float16 autocast and an enabled scaler,
    the path a T4 takes."""
    if wanted == "fp16":
        return Precision("cpu", torch.float16, torch.amp.GradScaler("cpu", enabled=True))
    return real_choose(device, wanted)


@pytest.fixture
def fp16_on_cpu(monkeypatch):
    monkeypatch.setattr(train, "choose_precision", cpu_precision)


@pytest.fixture(scope="module")
def data():
    return load_dataset(DataConfig(image_size=8), 0)


def new_model():
    torch.manual_seed(7)
    return build_cnn(in_channels=1, num_classes=10, image_size=8, depth=2, width=6, dropout=0.2)


def interrupted_after_epoch_two(data, settings, tmp_path) -> dict:
    ckpt = TrialCheckpoint.under(tmp_path, "s", 0, {"p": settings.precision})

    def stop(epoch, history):
        if epoch == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(new_model(), data, settings, CPU, on_epoch_end=stop, save_state=ckpt.save)
    state, why = ckpt.load()
    assert why is None and state["epoch"] == 2
    return state


@pytest.mark.parametrize("kind", ["adam", "adamw", "sgd"])
def test_a_checkpoint_resumes_in_every_other_precision(fp16_on_cpu, data, tmp_path, kind):
    """Every pair of precisions, fp16 with its scaler included: the same precision repeats the
    uninterrupted run exactly; another one goes on from the checkpoint with a fresh scaler."""
    base = FitSettings(epochs=4, batch_size=64, lr=0.01, optimizer=kind, weight_decay=0.01,
                       seed=3)
    for before, after in itertools.product(PRECISIONS, PRECISIONS):
        first = replace(base, precision=before)
        state = interrupted_after_epoch_two(data, first, tmp_path / f"{before}-{after}")
        assert state["precision"] == before and state["device"] == "cpu"
        assert bool(state["scaler"]) == (before == "fp16")
        resumed = fit(new_model(), data, replace(base, precision=after), CPU, resume=state)
        assert len(resumed.val_acc) == 4 and resumed.val_acc[-1] > 0.3, (before, after)
        if before == after:
            whole = fit(new_model(), data, first, CPU)
            assert resumed.val_acc == whole.val_acc and resumed.train_loss == whole.train_loss


def test_an_fp16_checkpoint_keeps_its_scale(fp16_on_cpu, data, tmp_path, monkeypatch):
    settings = FitSettings(epochs=4, batch_size=64, lr=0.01, seed=3, precision="fp16")
    state = interrupted_after_epoch_two(data, settings, tmp_path)
    state["scaler"]["scale"] = 1024.0  # as if it had backed off twice
    seen = []
    real_load = torch.amp.GradScaler.load_state_dict

    def spy(self, s):
        seen.append(s["scale"])
        return real_load(self, s)

    monkeypatch.setattr(torch.amp.GradScaler, "load_state_dict", spy)
    fit(new_model(), data, settings, CPU, resume=state)
    assert seen == [1024.0]


def test_random_streams_are_of_the_trials_own_device_only():
    gen = torch.Generator().manual_seed(1)
    state = rng_state(gen, CPU)
    assert set(state) == {"torch", "shuffle"}  # a CPU trial has no device stream to keep
    # A GPU's stream (or an older checkpoint's list of every GPU's) is not restored onto the
    # CPU, and restoring the rest repeats the draws.
    foreign = {**state, "device": torch.zeros(16, dtype=torch.uint8), "device_type": "cuda",
               "cuda": [torch.zeros(16, dtype=torch.uint8)]}
    first = torch.rand(3), torch.rand(3, generator=gen)
    set_rng_state(foreign, gen, CPU)
    again = torch.rand(3), torch.rand(3, generator=gen)
    assert all(torch.equal(a, b) for a, b in zip(first, again))


@pytest.fixture
def unpadded(monkeypatch):
    """The net that trains is the model itself (no channel padding), so its forward is ours."""
    monkeypatch.setattr(train, "channel_padding", lambda device: (1, None))


def poisoned_once(model):
    """The model with one forward pass (the third) returning infinities: an fp16 overflow."""
    forward, calls = model.forward, {"n": 0}

    def once(x):
        calls["n"] += 1
        out = forward(x)
        return out * float("inf") if calls["n"] == 3 else out

    model.forward = once
    return model


def test_a_step_the_scaler_skipped_is_not_divergence(fp16_on_cpu, unpadded, data):
    settings = FitSettings(epochs=2, batch_size=64, lr=0.01, seed=3, precision="fp16")
    history = fit(poisoned_once(new_model()), data, settings, CPU)
    assert all(map(lambda v: v == v and v < 10, history.train_loss))  # finite: step skipped
    assert history.val_acc[-1] > 0.3


def test_without_a_scaler_one_non_finite_loss_is_divergence(unpadded, data):
    settings = FitSettings(epochs=2, batch_size=64, lr=0.01, seed=3, precision="fp32")
    with pytest.raises(Diverged):
        fit(poisoned_once(new_model()), data, settings, CPU)


@pytest.mark.filterwarnings("ignore::UserWarning")  # a CUDA scaler without CUDA disables itself
@pytest.mark.parametrize("capability,auto", [((9, 0), "bf16"), ((8, 0), "bf16"),
                                             ((7, 5), "fp16"), ((7, 0), "fp16"),
                                             ((6, 1), "fp32"), ((3, 7), "fp32")])
def test_precision_by_what_the_gpu_computes_natively(monkeypatch, capability, auto):
    from hpsearch.errors import DeviceError

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    gpu = torch.device("cuda")
    chosen = train.choose_precision(gpu, "auto")
    assert chosen.name == auto and not chosen.note
    if capability[0] >= 8:
        assert not train.choose_precision(gpu, "bf16").note
    else:
        with pytest.raises(DeviceError, match="has no native bf16; use auto"):
            train.choose_precision(gpu, "bf16")
    if capability[0] < 7:
        assert "no fp16 tensor cores" in train.choose_precision(gpu, "fp16").note


def test_a_gpu_or_mps_stream_is_kept_for_its_own_device_and_restored_onto_the_retrys(
        monkeypatch):
    """Device facts faked: the stream of the trial's GPU (or mps) alone is saved, and goes
    back onto the GPU the retry runs on, whatever its index; an older checkpoint's list of
    every GPU's streams gives the retry's index, or nothing on a machine with fewer GPUs."""
    saved, restored = torch.zeros(8, dtype=torch.uint8), []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device=None: saved)
    monkeypatch.setattr(torch.cuda, "set_rng_state",
                        lambda s, device=None: restored.append(("cuda", device)))
    monkeypatch.setattr(torch.mps, "get_rng_state", lambda: saved)
    monkeypatch.setattr(torch.mps, "set_rng_state", lambda s: restored.append(("mps", None)))
    gen = torch.Generator()
    on_gpu = rng_state(gen, torch.device("cuda", 3))
    assert on_gpu["device_type"] == "cuda" and "cuda" not in on_gpu
    set_rng_state(on_gpu, gen, torch.device("cuda", 0))  # the new runtime's only GPU
    set_rng_state(on_gpu, gen, torch.device("mps"))  # another kind: drawn afresh
    on_mps = rng_state(gen, torch.device("mps"))
    set_rng_state(on_mps, gen, torch.device("mps"))
    legacy = {k: v for k, v in on_gpu.items() if k not in ("device", "device_type")}
    set_rng_state({**legacy, "cuda": [saved, saved]}, gen, torch.device("cuda", 1))
    set_rng_state({**legacy, "cuda": [saved]}, gen, torch.device("cuda", 1))  # no IndexError
    assert restored == [("cuda", torch.device("cuda", 0)), ("mps", None),
                        ("cuda", torch.device("cuda", 1))]


def test_mps_memory_is_handed_back_between_trials(monkeypatch):
    emptied = []
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.mps, "empty_cache", lambda: emptied.append(True))
    train.release_device_memory()
    assert emptied == [True]


def inner_conv_poisoned_once(model, at: int = 3):
    """The first convolution's output multiplied by infinity in one forward pass (the
    `at`-th): an fp16 overflow inside the net, which the batch norm after it sees."""
    calls = {"n": 0}

    def hook(module, inputs, output):
        calls["n"] += 1
        return output * float("inf") if calls["n"] == at else None

    model[0].register_forward_hook(hook)
    return model


def norm_buffers(model) -> list:
    return [b for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)
            for b in (m.running_mean, m.running_var)]


def test_an_overflow_inside_the_net_leaves_no_nan_in_batch_norm(fp16_on_cpu, unpadded, data):
    """The scaler skips the step, and the batch-norm statistics that step spoilt are put back:
    the trial trains on with finite validation losses and a sane accuracy."""
    settings = FitSettings(epochs=2, batch_size=64, lr=0.01, seed=3, precision="fp16")
    model = inner_conv_poisoned_once(new_model())
    history = fit(model, data, settings, CPU)
    assert all(math.isfinite(v) for v in history.val_loss + history.train_loss)
    assert history.val_acc[-1] > 0.3
    assert all(torch.isfinite(b).all() for b in norm_buffers(model))


def test_a_net_that_computes_nan_is_diverged_not_completed(fp16_on_cpu, unpadded, data,
                                                           monkeypatch):
    """Without the statistics put back, the validation loss is NaN: the trial ends as
    diverged with that reason, never as a completed poor configuration."""
    monkeypatch.setattr(train.NormStats, "restore_if_spoilt", lambda self: False)
    settings = FitSettings(epochs=2, batch_size=64, lr=0.01, seed=3, precision="fp16")
    with pytest.raises(Diverged, match="validation loss became nan in epoch 1"):
        fit(inner_conv_poisoned_once(new_model()), data, settings, CPU)


def test_fp32_on_cuda_is_float32_not_tf32(tf32_restored, monkeypatch):
    from hpsearch import precision
    from hpsearch.precision import set_tf32

    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    for under_autocast in (False, True):
        monkeypatch.setattr(precision, "TF32_UNDER_AUTOCAST", under_autocast)
        matmul.allow_tf32 = cudnn.allow_tf32 = True
        set_tf32("fp32")
        assert not matmul.allow_tf32 and not cudnn.allow_tf32  # whatever the setting
        set_tf32("bf16")
        assert matmul.allow_tf32 == cudnn.allow_tf32 == under_autocast


@pytest.fixture
def tf32_restored():
    """torch's TF32 switches as they were before the test (they are process-wide)."""
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def test_a_trial_on_cuda_records_that_its_fp32_is_not_tf32(tf32_restored):
    """fp32 on CUDA means float32: a trial turns TF32 off before it starts, records so with
    its owner, and the report's device line says it (`cuda:0 (fp32, TF32 off)`)."""
    import optuna

    from hpsearch import objective, records
    from hpsearch.config import load_config
    from hpsearch.precision import tf32_state

    for conv, matmul, said in ((True, True, "on"), (False, False, "off"),
                               (True, False, "cuDNN only"), (False, True, "matmul only")):
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv, matmul
        assert tf32_state(torch.device("cuda", 0)) == said
        assert tf32_state(torch.device("cpu")) is None
    torch.backends.cudnn.allow_tf32 = True  # torch's default
    study = optuna.create_study()
    cfg = load_config(None, [])
    trial = study.ask()
    objective.start_trial(trial, cfg, torch.device("cuda", 0), "fp32")
    assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    assert records.owner_of(trial)["tf32"] == "off"
    study.tell(trial, 0.5)
    assert records.device_of(study.trials[0]) == "cuda:0 (fp32, TF32 off)"
    cpu = study.ask()
    objective.start_trial(cpu, cfg, torch.device("cpu"), "bf16")
    assert "tf32" not in records.owner_of(cpu)
    study.tell(cpu, 0.5)
    assert records.device_of(study.trials[1]) == "cpu (bf16)"
