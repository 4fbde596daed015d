"""Config, search space, model, trainer and objective in process, without a store."""

from __future__ import annotations

import optuna
import pytest
import torch

from conftest import ROOT
from hpsearch.config import ConfigError, build_config, default_config_path, load_config
from hpsearch.params import Choice, Fixed, Range, grid_values
from hpsearch.data import load_dataset
from hpsearch.model import PaddedNet, build_cnn, count_params
from hpsearch.objective import make_objective
from hpsearch.space import suggest_params
from hpsearch.storage import parse_storage
from hpsearch.study import _same, make_sampler, runs_alone, sampler_seed
from hpsearch.train import (DeviceError, Diverged, FitSettings, choose_precision, fit,
                            make_optimizer, train_step)


def test_default_study_searches_the_promised_space():
    cfg = load_config(None)
    space = {p.name: p for p in cfg.space}
    assert space["lr"] == Range("lr", 1e-4, 1e-1, log=True)
    assert space["depth"] == Range("depth", 1, 4)
    assert space["width"] == Range("width", 8, 64, log=True)
    assert isinstance(space["optimizer"], Choice)
    assert (cfg.study.trials, cfg.data.dataset, cfg.data.image_size) == (50, "digits", 16)


def test_overrides_are_read_as_toml_values():
    cfg = load_config(None, ["space.depth=3", "space.optimizer=['sgd']", "train.epochs=4",
                             "space.lr={low=0.001, high=0.01}", "study.name=run 2"])
    space = {p.name: p for p in cfg.space}
    assert space["depth"] == Fixed("depth", 3)
    assert space["optimizer"] == Choice("optimizer", ("sgd",))
    assert space["lr"] == Range("lr", 0.001, 0.01)
    assert cfg.train.epochs == 4 and cfg.study.name == "run 2"


@pytest.mark.parametrize("raw,message", [
    ({"data": {"image_size": 4}}, "data.image_size must be 8..256, got 4"),
    ({"space": {"depth": {"low": 4, "high": 1}}}, "space.depth: low must be below high"),
    ({"space": {"depth": 2.5}}, "space.depth must be an integer, got 2.5"),
    ({"space": {"dropout": {"low": 0.0, "high": 0.5, "log": True}}}, "a log range needs low > 0"),
    ({"space": {"optimizer": ["adam", "rmsprop"]}}, "space.optimizer must be adam | adamw | sgd"),
    ({"study": {"pruner": "asha"}}, "study.pruner must be one of median, hyperband, sha, none"),
    ({"study": {"trials": 0}}, "study.trials must be at least 1, got 0"),
    ({"study": {"time": "0s"}},
     "study.time must be a duration above zero: 90 (seconds), 300s, 20m, 1.5h or 1h30m; got '0s'"),
    ({"study": {"time": "-5m"}}, "study.time must be a duration above zero"),
    ({"study": {"time": "ten minutes"}}, "got 'ten minutes'"),
    ({"study": {"time": True}}, "study.time must be a duration above zero"),
    ({"model": {}}, "unknown section [model]"),
])
def test_config_errors_name_key_value_and_what_is_allowed(raw, message):
    with pytest.raises(ConfigError) as err:
        build_config(raw)
    assert message in str(err.value)


@pytest.mark.parametrize("value,seconds", [
    ("90", 90), (90, 90), (2.5, 2.5), ("300s", 300), ("20m", 1200), ("1.5h", 5400),
    ("1h30m", 5400), ("1h 30m 15s", 5415), ("2H", 7200), (".5m", 30),
])
def test_a_time_budget_is_read_in_each_form_as_seconds(value, seconds):
    cfg = load_config(None, [f"study.time={value!r}" if isinstance(value, str) else
                             f"study.time={value}"])
    assert cfg.study.time == seconds and isinstance(cfg.study.time, float)
    assert "time" not in cfg.settings()["study"]  # like trials: may change on resume
    assert load_config(None).study.time == 0  # none unless asked for


def test_grid_values_enumerate_steps():
    assert grid_values(Range("depth", 1, 4, step=1)) == [1, 2, 3, 4]
    assert grid_values(Range("dropout", 0.0, 0.5, step=0.25)) == [0.0, 0.25, 0.5]


def test_sampler_seed_depends_on_stored_trials_and_worker():
    seeds = {sampler_seed(0, n, w) for n in (0, 3) for w in (0, 1)}
    assert len(seeds) == 4 and sampler_seed(0, 3) == sampler_seed(0, 3)


@pytest.mark.parametrize("sampler", ["tpe", "random", "gp"])
def test_samplers_are_built(sampler):
    cfg = load_config(None, [f"study.sampler='{sampler}'"])
    assert make_sampler(cfg, 1) is not None


def test_constant_liar_only_where_trials_can_run_side_by_side(tmp_path):
    cfg = load_config(None)
    sqlite = parse_storage(f"sqlite:///{tmp_path / 's.db'}")
    assert runs_alone(sqlite, 1) and not runs_alone(sqlite, 2)
    for url in (f"journal:{tmp_path / 's.log'}", "postgresql://u@localhost/db"):
        assert not runs_alone(parse_storage(url), 1)
    assert not make_sampler(cfg, 1, alone=True)._constant_liar
    assert make_sampler(cfg, 1)._constant_liar


def test_model_fits_any_depth_on_small_images():
    for depth in (1, 4, 6):
        model = build_cnn(in_channels=3, num_classes=5, image_size=8, depth=depth, width=4)
        assert model(torch.zeros(2, 3, 8, 8)).shape == (2, 5)
        assert count_params(model) > 0


def test_pooling_before_relu_computes_the_usual_block():
    """build_cnn pools before its ReLUs; the same modules in the usual order (conv, batch norm,
    ReLU, pool) give the same outputs and gradients, and the weights keep their names."""
    import copy

    torch.manual_seed(0)
    model = build_cnn(in_channels=1, num_classes=10, image_size=8, depth=4, width=6)
    layers = list(copy.deepcopy(model))
    for i, layer in enumerate(layers[:-1]):
        if isinstance(layer, torch.nn.MaxPool2d):
            layers[i], layers[i + 1] = layers[i + 1], layer
    usual = torch.nn.Sequential(*layers)
    assert [type(m) for m in usual[:4]] == [torch.nn.Conv2d, torch.nn.BatchNorm2d,
                                            torch.nn.ReLU, torch.nn.MaxPool2d]
    assert model.state_dict().keys() == usual.state_dict().keys()
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    for net in (model, usual):
        torch.nn.functional.cross_entropy(net(x), y).backward()
    assert torch.equal(model(x), usual(x))
    for a, b in zip(model.parameters(), usual.parameters()):
        assert torch.equal(a.grad, b.grad)


@pytest.mark.parametrize("kind, decay_on", [("adam", "all"), ("adamw", "all"), ("sgd", "all"),
                                            ("adamw", "weights"), ("sgd", "weights")])
def test_a_padded_net_trains_as_the_plain_one_and_its_padding_stays_zero(kind, decay_on):
    """fit trains a net whose channels are padded to fill the CPU's vectors (PaddedNet): after
    ten steps with weight decay (on all parameters, or in two groups, the weights' first),
    its weights, optimizer moments and outputs in the model's shapes are the plain net's to
    float rounding, and every padded value is still zero."""
    import copy

    torch.manual_seed(0)
    # Depth 2 on 8 pixels leaves 2x2 maps: the classifier sees channels x pixels.
    plain = build_cnn(in_channels=1, num_classes=10, image_size=8, depth=2, width=6)
    plain.to(memory_format=torch.channels_last)
    state = torch.get_rng_state()
    padded = PaddedNet(copy.deepcopy(plain), 16)
    assert torch.equal(torch.get_rng_state(), state)  # the twin draws nothing
    assert padded.net_width == 16 and padded.net[0].out_channels == 16
    padded.net.to(memory_format=torch.channels_last)
    settings = FitSettings(epochs=1, batch_size=16, lr=0.01, optimizer=kind, weight_decay=0.1,
                           decay_on=decay_on)
    cpu, fp32 = torch.device("cpu"), choose_precision(torch.device("cpu"), "fp32")
    optimizers = [make_optimizer(net, settings, cpu) for net in (plain, padded.net)]
    assert len(optimizers[1].param_groups) == (2 if decay_on == "weights" else 1)
    gen = torch.Generator().manual_seed(1)
    for _ in range(10):
        x, y = torch.randn(16, 1, 8, 8, generator=gen), torch.randint(0, 10, (16,), generator=gen)
        x = x.to(memory_format=torch.channels_last)
        for net, optimizer in zip((plain, padded.net), optimizers):
            train_step(net, x, y, optimizer, fp32)
    for state in (padded.net.state_dict(), optimizers[1].state_dict()):  # padding still zero
        again = padded.pad(padded.unpad(state))
        if "state" in state:
            state, again = state["state"], again["state"]
            assert all(torch.equal(again[i][n], t) for i in state for n, t in state[i].items())
        else:
            assert all(torch.equal(again[k], t) for k, t in state.items())
    padded.copy_back()
    for a, b in zip(plain.state_dict().values(), padded.model.state_dict().values()):
        assert a.shape == b.shape and torch.allclose(a.float(), b.float(), atol=1e-5)
    theirs = padded.unpad(optimizers[1].state_dict())["state"]
    for i, moments in optimizers[0].state_dict()["state"].items():
        assert all(torch.allclose(m, theirs[i][name], atol=1e-6) for name, m in moments.items())
    plain.eval()
    padded.net.eval()
    padded.copy_back()
    assert not padded.model.training and not padded.model[-2].training  # dropout too
    x = torch.randn(4, 1, 8, 8)
    assert torch.allclose(plain(x), padded.model(x), atol=1e-5)


def test_padding_takes_torch_optims_state_and_stops_at_the_width_limit():
    model = build_cnn(in_channels=1, num_classes=10, image_size=8, depth=2, width=6)
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    padded = PaddedNet(model, 16)
    assert padded.pad(sgd.state_dict()) == sgd.state_dict()  # no moments before a step
    model(torch.randn(4, 1, 8, 8)).sum().backward()
    sgd.step()
    moments = padded.pad(sgd.state_dict())["state"]
    assert moments[0]["momentum_buffer"].shape == (16, 1, 3, 3)
    assert PaddedNet(model, 16, below=6).net is model  # width 6 is not under 6


def test_a_net_that_fills_the_vectors_already_trains_unpadded():
    model = build_cnn(in_channels=3, num_classes=5, image_size=8, depth=2, width=16)
    assert PaddedNet(model, 16).net is model and PaddedNet(model, 1).net is model
    state = model.state_dict()
    assert PaddedNet(model, 16).unpad(state) is state


@pytest.fixture(scope="module")
def digits8():
    cfg = load_config(None, ["data.image_size=8"])
    return cfg, load_dataset(cfg.data, cfg.study.seed)


def test_objective_with_a_fixed_trial(digits8):
    cfg, data = digits8
    cfg = load_config(None, ["data.image_size=8", "train.epochs=2"])
    trial = optuna.trial.FixedTrial({"lr": 0.01, "depth": 2, "width": 8, "dropout": 0.1,
                                     "optimizer": "adam"})
    value = make_objective(cfg, data, torch.device("cpu"))(trial)
    assert 0.5 < value <= 1.0
    history = trial.user_attrs["history"]
    assert history["val_acc"][-1] == value and len(history["train_loss"]) == 2
    assert trial.user_attrs["owner"]["trial"] == trial.number


def test_suggest_params_fills_fixed_and_default_values():
    cfg = load_config(None, ["space.depth=3", "train.batch_size=32"])
    params = suggest_params(optuna.trial.FixedTrial({"lr": 0.01, "width": 8, "dropout": 0.0,
                                                     "optimizer": "sgd"}), cfg)
    assert params["depth"] == 3 and params["batch_size"] == 32 and params["weight_decay"] == 0


def test_nan_loss_raises_diverged(digits8):
    _, data = digits8
    # A zero spread normalises every pixel to an infinity (or NaN): the loss follows.
    poisoned = type(data)(**{**vars(data), "std": (0.0,), "_stats": {}})
    model = build_cnn(in_channels=1, num_classes=10, image_size=8, depth=1, width=4)
    with pytest.raises(Diverged, match="became nan in epoch 1"):
        fit(model, poisoned, FitSettings(epochs=2, batch_size=64, lr=0.01), torch.device("cpu"))


def test_the_mixed_precision_step_runs_on_the_cpu_in_bf16(digits8):
    """The step a GPU runs in bf16 or fp16, here on the CPU: bf16 autocast, scaler off."""
    _, data = digits8
    precision = choose_precision(torch.device("cpu"), "bf16")
    assert precision.name == "bf16" and not precision.scaler.is_enabled()
    torch.manual_seed(0)
    model = build_cnn(in_channels=1, num_classes=10, image_size=8, depth=2, width=8)
    optimizer = make_optimizer(model, FitSettings(epochs=1, batch_size=64, lr=0.01))
    xb, yb = data.normalized(data.x_train[:64]), data.y_train[:64]
    losses = []
    for _ in range(20):
        loss, logits = train_step(model, xb, yb, optimizer, precision)
        losses.append(loss.item())
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32
    assert model[0].weight.dtype == torch.float32  # the weights stay in full precision
    assert losses[-1] < losses[0] / 2
    history = fit(model, data, FitSettings(epochs=1, batch_size=64, lr=0.01, precision="bf16"),
                  torch.device("cpu"))
    assert history.val_acc[-1] > 0.5


def test_precision_auto_is_bf16_only_on_cpus_where_it_was_measured_faster(monkeypatch):
    from hpsearch import precision, private

    cpu = torch.device("cpu")
    for native_bf16, vendor, expected in ((True, "AuthenticAMD", "bf16"),
                                          (False, "AuthenticAMD", "fp32"),
                                          (True, "GenuineIntel", "fp32"),
                                          (False, "GenuineIntel", "fp32")):
        monkeypatch.setattr(private, "cpu_has_native_bf16", lambda: native_bf16)
        monkeypatch.setattr(precision, "cpu_vendor", lambda: vendor)
        assert choose_precision(cpu).name == expected, (native_bf16, vendor)
    assert choose_precision(cpu, "bf16").name == "bf16"
    assert choose_precision(cpu, "fp32").name == "fp32"
    with pytest.raises(DeviceError, match="fp16 needs a CUDA device"):
        choose_precision(cpu, "fp16")


def test_training_is_reproducible_on_the_cpu(digits8):
    _, data = digits8
    runs = []
    for _ in range(2):
        torch.manual_seed(7)
        model = build_cnn(in_channels=1, num_classes=10, image_size=8, depth=2, width=8)
        runs.append(fit(model, data, FitSettings(epochs=2, batch_size=64, lr=0.01, seed=7),
                        torch.device("cpu")).val_acc)
    assert runs[0] == runs[1]


def test_the_studies_folder_shows_the_packaged_default():
    assert (ROOT / "studies" / "digits.toml").read_text() == default_config_path().read_text()


def test_settings_compare_integers_exactly_and_floats_to_rounding():
    assert _same(0.1 + 0.2, 0.3) and _same([0.5, 1 / 3], [0.5, 0.3333333333333333])
    assert not _same(2**53, 2**53 + 1)
    assert not _same(1e-4, 1.0001e-4) and not _same(1.0, "1.0") and not _same(True, 1.0)
