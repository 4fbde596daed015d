"""Trial -> params -> model -> fit, reporting each epoch and pruning."""

from __future__ import annotations

import os
import tempfile

import optuna
import torch

from hpsearch.config import Config
from hpsearch.data import Dataset
from hpsearch.model import build_cnn, count_params, cpu_state_dict
from hpsearch.owner import OWNER_ATTR, owner_record
from hpsearch.space import suggest_params
from hpsearch.train import FitSettings, Diverged, fit

WEIGHTS_ATTR = "weights"  # user attribute: the artifact id of a completed trial's weights
WEIGHTS_FILE = "weights.pt"
OUTCOME_ATTRS = ("history", "prune_reason", "fail_reason", WEIGHTS_ATTR)


def trial_seed(cfg: Config, trial: optuna.Trial) -> int:
    """The seed of a trial's initialisation and shuffling. A retry inherits its original's
    user attributes, and with them its seed."""
    seed = trial.user_attrs.get("seed")
    return seed if isinstance(seed, int) else cfg.study.seed * 100_003 + trial.number


def make_objective(cfg: Config, data: Dataset, device: torch.device, artifacts=None):
    """The function `study.optimize` calls: returns the final validation accuracy. With an
    artifact store, a completed trial's weights are uploaded to it."""

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr(OWNER_ATTR, owner_record(trial.number))
        for key in OUTCOME_ATTRS:  # a retry inherits these from the trial it repeats
            if trial.user_attrs.get(key) is not None:
                trial.set_user_attr(key, None)
        params = suggest_params(trial, cfg)
        seed = trial_seed(cfg, trial)
        trial.set_user_attr("seed", seed)
        torch.manual_seed(seed)
        model = build_cnn(in_channels=data.channels, num_classes=len(data.classes),
                          image_size=data.image_size, depth=params["depth"],
                          width=params["width"], dropout=params["dropout"])
        trial.set_user_attr("n_params", count_params(model))
        trial.set_user_attr("device", str(device))
        settings = FitSettings(epochs=cfg.train.epochs, batch_size=params["batch_size"],
                               lr=params["lr"], optimizer=params["optimizer"],
                               weight_decay=params["weight_decay"], seed=seed)

        def report(epoch: int, history) -> None:
            trial.set_user_attr("history", history.as_dict())
            trial.report(history.val_acc[-1], step=epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch}")

        try:
            history = fit(model, data, settings, device, on_epoch_end=report)
        except Diverged as err:
            # Pruned, not failed: samplers learn from pruned trials and skip failed ones.
            trial.set_user_attr("prune_reason", str(err))
            raise optuna.TrialPruned(str(err)) from None
        except optuna.TrialPruned:
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("fail_reason", "interrupted")
            raise
        except Exception as err:
            trial.set_user_attr("fail_reason", f"{type(err).__name__}: {err}")
            raise
        if artifacts is not None:
            save_weights(trial, model, artifacts)
        return history.val_acc[-1]

    return objective


def save_weights(trial: optuna.Trial, model: torch.nn.Module, artifacts) -> str:
    """Upload the model's state dict as the trial's artifact. It must happen here: a finished
    trial is read-only."""
    with tempfile.TemporaryDirectory(prefix="hpsearch-") as tmp:
        path = os.path.join(tmp, WEIGHTS_FILE)
        torch.save(cpu_state_dict(model), path)
        artifact_id = optuna.artifacts.upload_artifact(
            artifact_store=artifacts, file_path=path, study_or_trial=trial)
    trial.set_user_attr(WEIGHTS_ATTR, artifact_id)
    return artifact_id
