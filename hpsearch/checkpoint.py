"""Per-trial checkpoints: a trial that dies resumes from its last finished epoch.

A checkpoint is a plain dict of tensors, numbers and strings, so that
`torch.load(weights_only=True)` reads it; it is written to a temporary file and renamed, so a
kill during the write leaves the previous one. It names the study, the original trial number
and the parameters, and is ignored when any of them differs. Knows nothing of Optuna.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

FORMAT = 1


@dataclass(frozen=True)
class TrialCheckpoint:
    """Where one trial's checkpoint lives and whom it belongs to."""

    path: Path
    study: str
    trial: int  # the original trial's number: its retries share the file
    params: dict

    @classmethod
    def under(cls, folder: Path, study: str, trial: int, params: dict) -> "TrialCheckpoint":
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", study)[:80]
        return cls(folder / safe / f"trial-{trial}.pt", study, trial, dict(params))

    def save(self, epoch: int, state: dict) -> None:
        """Write `state` (model, optimizer, RNG, history...) as the state after `epoch`."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = {"format": FORMAT, "study": self.study, "trial": self.trial,
                  "params": self.params, "epoch": epoch, **state}
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            torch.save(record, tmp)
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)

    def load(self) -> tuple:
        """(state, None) for a checkpoint of this very trial, (None, why) when there is a
        file that cannot be used, (None, None) when there is none."""
        if not self.path.exists():
            return None, None
        try:
            record = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as err:  # truncated, corrupt, unreadable: all mean "start over"
            return None, f"checkpoint {self.path} cannot be read ({type(err).__name__})"
        mine = (isinstance(record, dict) and record.get("format") == FORMAT
                and record.get("study") == self.study and record.get("trial") == self.trial
                and record.get("params") == self.params)
        if not mine:
            return None, f"checkpoint {self.path} belongs to another study, trial or parameters"
        return record, None

    def delete(self) -> None:
        """The checkpoint and any temporary file a killed process left half written."""
        self.path.unlink(missing_ok=True)
        for stray in self.path.parent.glob(f".{self.path.name}.*.tmp"):
            stray.unlink(missing_ok=True)


def rng_state(gen: torch.Generator, device: torch.device) -> dict:
    """The random streams a trial's epoch draws from, as tensors: the CPU's, its shuffle and
    augmentation generator's, and those of the trial's own device (one CUDA GPU or mps), named
    by its kind so that a retry elsewhere knows whether they apply."""
    state = {"torch": torch.get_rng_state(), "shuffle": gen.get_state()}
    if device.type == "cuda" and torch.cuda.is_initialized():
        state["device"], state["device_type"] = torch.cuda.get_rng_state(device), "cuda"
    elif device.type == "mps":
        state["device"], state["device_type"] = torch.mps.get_rng_state(), "mps"
    return state


def set_rng_state(state: dict, gen: torch.Generator, device: torch.device) -> None:
    """The streams of `rng_state`, the device's restored onto `device` when it is of the same
    kind (a trial checkpointed on the CPU and retried on a GPU, or the reverse, draws its
    device's numbers afresh). Checkpoints of earlier versions keep every GPU's state: the one
    of the same index is taken, when there is one."""
    torch.set_rng_state(state["torch"])
    gen.set_state(state["shuffle"])
    own = state.get("device")
    if own is None and device.type == "cuda" and "cuda" in state:
        states, index = state["cuda"], device.index or 0
        own = states[index] if index < len(states) else None
        kind = "cuda"
    else:
        kind = state.get("device_type")
    if own is None or kind != device.type:
        return
    if device.type == "cuda":
        torch.cuda.set_rng_state(own, device)
    elif device.type == "mps":
        torch.mps.set_rng_state(own)
