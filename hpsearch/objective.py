"""Trial -> params -> model -> fit, reporting each epoch and pruning."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Callable, Optional

import optuna
import torch

from hpsearch import interrupts, records
from hpsearch.build import fit_settings, max_epochs, model_for
from hpsearch.checkpoint import TrialCheckpoint
from hpsearch.config import Config
from hpsearch.data import Dataset
from hpsearch.errors import OutOfMemory, OwnerGone, allocation_failed, out_of_memory
from hpsearch.model import count_params, cpu_state_dict
from hpsearch.owner import owner_record
from hpsearch.space import suggest_params
from hpsearch.precision import choose_precision, set_tf32, tf32_state
from hpsearch.train import TRAINING_ADVICE, Diverged, fit

log = logging.getLogger("hpsearch")


def make_objective(cfg: Config, data: Dataset, device: torch.device, artifacts=None,
                   checkpoints: Optional[Path] = None, backup=None,
                   trainer: Optional[Callable] = None, epochs: Optional[int] = None,
                   on_epoch: Optional[Callable[[int, dict], None]] = None,
                   precision: Optional[str] = None):
    """The function `study.optimize` calls: returns the final validation accuracy. With an
    artifact store, a completed trial's weights are uploaded to it; with a checkpoint folder,
    every epoch is checkpointed and a retried trial resumes from its last one; with a backup,
    the store and the checkpoint are copied when a trial starts and after its epochs.
    `trainer` stands in for `train.fit` (the overhead benchmark trains nothing). `epochs`: the
    most a trial trains (default: what `train.epochs` comes to for this data). `on_epoch(trial
    number, history so far)` hears each epoch (the notebook's live figure). `precision`: what
    `train.precision` means on this device, as the run resolved it (resolved here if not
    given); every trial records and trains in it."""
    trainer = trainer or fit
    if epochs is None:
        epochs = max_epochs(cfg.train.epochs, len(data.y_train), cfg.train.batch_size)
    if precision is None:
        precision = choose_precision(torch.device(device), cfg.train.precision).name

    def objective(trial: optuna.Trial) -> float:
        params, seed = start_trial(trial, cfg, device, precision)
        torch.manual_seed(seed)
        model = model_for(params, data)
        records.write_n_params(trial, count_params(model))
        settings = fit_settings(params, epochs, seed, precision)
        ckpt = checkpoint_of(trial, cfg, params, checkpoints)
        resume = resume_from(trial, ckpt, f"{precision} on {torch.device(device).type}")
        if backup is not None:
            backup.sync()

        def save_state(epoch: int, state: dict) -> None:
            ckpt.save(epoch, state)
            if backup is not None:
                backup.sync(ckpt.path)

        # The per-epoch history is stored once, when the trial ends however it ends: a write
        # per epoch cost more than the pruner's reads. The checkpoint holds it meanwhile.
        latest = {"history": resume["history"] if resume else None, "why": None}

        def report(epoch: int, history) -> None:
            latest["history"] = history.as_dict()
            trial.report(history.val_acc[-1], step=epoch)
            if on_epoch is not None:
                on_epoch(trial.number, latest["history"])
            # After the last epoch there is nothing left to save: the trial completes.
            if epoch < settings.epochs and trial.should_prune():
                why = pruned_why(cfg.study.pruner, epoch, settings.epochs, history.val_acc[-1])
                records.write_prune_reason(trial, why)  # the dashboard shows it
                latest["why"] = f"Pruned {why}."
                raise optuna.TrialPruned(why)

        try:
            interrupts.check()  # asked for while the trial was being set up
            history = trainer(model, data, settings, device, on_epoch_end=report,
                              resume=resume, save_state=save_state if ckpt else None)
        except Diverged as err:
            # Pruned, not failed: samplers learn from pruned trials and skip failed ones.
            records.write_prune_reason(trial, str(err))
            latest["why"] = f"Pruned: {err}."
            raise optuna.TrialPruned(str(err)) from None
        except optuna.TrialPruned:
            raise
        except OwnerGone as err:
            records.write_fail_reason(trial, f"{err}; retried")
            latest["why"] = f"Failed: {err}; retried."
            ckpt = None  # kept: the queued retry resumes from it
            raise
        except KeyboardInterrupt:
            records.write_fail_reason(trial, "interrupted")
            latest["why"] = "Failed: interrupted."
            ckpt = None  # kept: the queued retry resumes from it
            raise
        except Exception as err:
            if allocation_failed(err):
                # This trial's model or batch does not fit the device; the next one may.
                if not isinstance(err, OutOfMemory):  # outside an epoch: the model, optimizer
                    err = out_of_memory(err, f"training at batch size {settings.batch_size}",
                                        TRAINING_ADVICE)
                why = (f"out of memory on {device} in {err.phase} (depth {params['depth']}, "
                       f"width {params['width']}, {data.image_size} px); {err.advice}")
                records.write_fail_reason(trial, why)
                latest["why"] = f"Failed: {why}."
                raise RuntimeError(why) from None
            records.write_fail_reason(trial, f"{type(err).__name__}: {err}")
            latest["why"] = f"Failed: {type(err).__name__}: {err}"
            raise
        finally:
            if latest["history"] is not None:
                records.write_history(trial, latest["history"])
                # The dashboard's table, under why the trial stopped early, if it did.
                records.write_history_note(trial, latest["history"], latest["why"])
            if ckpt is not None:  # finished one way or another; a killed process never gets here
                ckpt.delete()
                if backup is not None:
                    backup.forget(ckpt.path)
        if artifacts is not None:
            save_weights(trial, model, artifacts)
        return history.val_acc[-1]

    return objective


# Why each pruner stops a trial, as the trial's page says it.
PRUNER_RULES = {
    "median": "below the median of the completed trials at that epoch (median pruner)",
    "sha": "not in the top share kept at that epoch (successive halving)",
    "hyperband": "not in the top share of its bracket kept at that epoch (hyperband)",
}


def pruned_why(pruner: str, epoch: int, epochs: int, val_acc: float) -> str:
    """Why the study's pruner stopped a trial: `after epoch 2 of 6: val acc 0.8123, below
    the median of the completed trials at that epoch (median pruner)`."""
    rule = PRUNER_RULES.get(pruner, f"judged too low ({pruner} pruner)")
    return f"after epoch {epoch} of {epochs}: val acc {val_acc:.4f}, {rule}"


def start_trial(trial: optuna.Trial, cfg: Config, device, precision: str) -> tuple:
    """Record the owner, its device and precision (fp32, bf16 or fp16) first, clear what a
    retry inherited of its original's outcome, and draw the parameters. Returns (params,
    seed); the seed is not stored: it follows from the study's seed and the origin (see
    records.trial_seed)."""
    if torch.device(device).type == "cuda":
        set_tf32(precision)  # recorded as fit will set it
    records.start_record(trial, owner_record(trial.number, str(device), precision,
                                             tf32_state(device)))
    return suggest_params(trial, cfg), records.trial_seed(cfg.study.seed, trial)


def checkpoint_of(trial: optuna.Trial, cfg: Config, params: dict,
                  folder: Optional[Path]) -> Optional[TrialCheckpoint]:
    if folder is None:
        return None
    return TrialCheckpoint.under(folder, cfg.study.name, records.origin_of(trial), params)


def resume_from(trial: optuna.Trial, ckpt: Optional[TrialCheckpoint],
                here: str = "") -> Optional[dict]:
    """The checkpoint to continue from, its epochs reported again under the same step numbers
    so the pruner and the dashboard see one uninterrupted curve. When it was written in
    another precision or on another kind of device than `here` ("fp16 on cuda": a new Colab
    runtime), the log says so once."""
    if ckpt is None:
        return None
    state, why = ckpt.load()
    if why:
        log.warning("warning: %s; trial %d starts from epoch 1", why, trial.number)
    if state is None:
        return None
    records.write_resumed_from(trial, state["epoch"])
    there = f"{state.get('precision')} on {state.get('device')}"
    if here and "precision" in state and there != here:  # older checkpoints do not say
        log.warning("trial %d resumes from epoch %d in %s; its checkpoint was written in %s "
                    "(the gradient scaler, if any, starts afresh)", trial.number,
                    state["epoch"] + 1, here, there)
    for epoch, value in enumerate(state["history"]["val_acc"], start=1):
        trial.report(value, step=epoch)
    return state


def save_weights(trial: optuna.Trial, model: torch.nn.Module, artifacts) -> str:
    """Upload the model's state dict as the trial's artifact (the dashboard lists it; reports
    find it by its file name). It must happen here: a finished trial is read-only."""
    with tempfile.TemporaryDirectory(prefix="hpsearch-") as tmp:
        path = os.path.join(tmp, records.WEIGHTS_FILE)
        torch.save(cpu_state_dict(model), path)
        # Named, not guessed: the guess comes from the machine's MIME table, and Debian's
        # takes .pt for an SNES page table, which a browser cannot save as a file of bytes.
        return optuna.artifacts.upload_artifact(
            artifact_store=artifacts, file_path=path, study_or_trial=trial,
            mimetype=records.WEIGHTS_MIMETYPE)
