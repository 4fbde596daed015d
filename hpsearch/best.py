"""The best model: its weights from the artifact store, a retrain from best_config.json, and
its predictions on the held-out test split. Knows nothing of reports or the command line."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from hpsearch.build import fit_settings, model_for
from hpsearch.data import Dataset, pooled
from hpsearch.precision import usable
from hpsearch.model import cpu_state_dict
from hpsearch.records import weights_artifact
from hpsearch.train import eval_batch_size, fit


@dataclass(frozen=True)
class Predictions:
    """The best model on the test split: predicted and true class per image, and the
    probability the model gave its prediction (softmax of the predicted class, 0..1)."""

    predicted: np.ndarray
    true: np.ndarray
    confidence: Optional[np.ndarray] = None

    @property
    def accuracy(self) -> float:
        return float((self.predicted == self.true).mean()) if len(self.true) else float("nan")


def trial_weights(trial, artifacts, study) -> tuple:
    """(state dict, None) for a trial whose weights were uploaded, else (None, why not)."""
    from optuna.artifacts import download_artifact

    artifact_id = weights_artifact(trial, study)
    if artifact_id is None:
        return None, (f"trial {trial.number} has no saved weights (it ran before hpsearch "
                      f"saved weights, or without an artifact store)")
    if artifacts is None:
        return None, "no artifact folder was given"
    with tempfile.TemporaryDirectory(prefix="hpsearch-") as tmp:
        path = os.path.join(tmp, "weights.pt")
        try:
            download_artifact(artifact_store=artifacts, file_path=path, artifact_id=artifact_id)
            return torch.load(path, map_location="cpu", weights_only=True), None
        except Exception as err:  # a missing file, a damaged one: both mean "no weights"
            return None, (f"the weights of trial {trial.number} (artifact {artifact_id}) cannot "
                          f"be read from the artifact folder: {type(err).__name__}")


def retrain(params: dict, epochs: int, seed: int, data: Dataset, device: torch.device,
            precision: str = "auto") -> torch.nn.Module:
    """Train a model from scratch as a trial with these values and seed trains it."""
    torch.manual_seed(seed)
    model = model_for(params, data)
    fit(model, data, fit_settings(params, epochs, seed, precision), device)
    return model


def loaded_model(params: dict, data: Dataset, state: dict) -> torch.nn.Module:
    model = model_for(params, data)
    model.load_state_dict(state)
    return model


@torch.inference_mode()
def predict_with_confidence(model: torch.nn.Module, data: Dataset, x: torch.Tensor) -> tuple:
    """(predicted class, its softmax probability) of each uint8 image of x, in batches sized
    to the memory."""
    model.eval()
    device = next(model.parameters()).device
    size = eval_batch_size(model, data.image_size, device)
    classes, sure = [], []
    for i in range(0, len(x), size):
        # float32 softmax: in bf16 or fp16 a probability of 0.999 would round up to 1.0
        logits = model(data.normalized(x[i:i + size].to(device))).float()
        k = logits.argmax(1)  # the logits' argmax, as before: exact even where two tie
        classes.append(k.cpu())
        sure.append(torch.softmax(logits, 1).gather(1, k[:, None])[:, 0].cpu())
    if not classes:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    return torch.cat(classes).numpy(), torch.cat(sure).numpy()


def predictions_on_test(model: torch.nn.Module, data: Dataset) -> Predictions:
    """The model on the held-out test split, measured once, after the search chose it."""
    predicted, confidence = predict_with_confidence(model, data, data.x_test)
    return Predictions(predicted, data.y_test.cpu().numpy(), confidence)


def with_validation_in_training(data: Dataset) -> Dataset:
    """Train and validation pooled for the final fit (normalised as the study normalised
    them); validation scores then read the test split, which nothing is chosen by any more."""
    return replace(data, x_train=pooled(data.x_train, data.x_val),
                   y_train=torch.cat([data.y_train, data.y_val]), x_val=data.x_test,
                   y_val=data.y_test.to(data.device), _stats={})


def read_best_config(path: Path) -> dict:
    """A best_config.json written by `hpsearch report` (or `hpsearch best`)."""
    try:
        best = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ValueError(f"{path} cannot be read: {err.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not JSON ({err}); pass the best_config.json that "
                         f"`hpsearch report` wrote") from None
    needed = ("params", "config", "seed", "epochs")
    if not isinstance(best, dict) or any(k not in best for k in needed):
        raise ValueError(f"{path} is not a best_config.json: it needs {', '.join(needed)}")
    return best


def read_best(path: Path, data_dir: Optional[str] = None) -> tuple:
    """(best_config.json's content, the study's Config) of `hpsearch train --best PATH`."""
    from hpsearch.errors import ConfigError
    from hpsearch.records import config_of

    try:
        best = read_best_config(path)
        return best, config_of({"config": best["config"]}, data_dir)
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"--best {path}: {err}") from None


def final_model(best: dict, data: Dataset, device: torch.device) -> tuple:
    """(model, its test predictions, the record saved beside it): the best configuration
    trained from scratch on train + validation with its seed, then tested once."""
    model = retrain(best["params"], best["epochs"], best["seed"],
                    with_validation_in_training(data), device,
                    usable(device, best.get("precision", "auto")))
    preds = predictions_on_test(model, data)
    saved = {**{k: v for k, v in best.items() if k != "confusion_matrix"},
             "trained_on": "train+validation", "test_accuracy": round(preds.accuracy, 6),
             "test_size": int(len(preds.true))}
    return model, preds, saved


def save_model(model: torch.nn.Module, config: dict, folder: Path) -> tuple:
    """weights.pt (a plain state dict: `torch.load(..., weights_only=True)` reads it) and
    config.json side by side; each written to a temporary name first, then renamed."""
    folder.mkdir(parents=True, exist_ok=True)
    weights, cfg_path = folder / "weights.pt", folder / "config.json"
    torch.save(cpu_state_dict(model), weights.with_suffix(".tmp"))
    os.replace(weights.with_suffix(".tmp"), weights)
    cfg_path.with_suffix(".tmp").write_text(json.dumps(config, indent=2) + "\n")
    os.replace(cfg_path.with_suffix(".tmp"), cfg_path)
    return weights, cfg_path
