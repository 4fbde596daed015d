"""Bad input: each of these is shown to the user as one line, with exit status 2, never as a
traceback. Messages say what is wrong and how to fix it, and never hold a password. In a
notebook (hpsearch.api) each is raised as it is, a HpsearchError, with no frames of hpsearch."""


class HpsearchError(ValueError):
    """Bad input to hpsearch: the message is the one line the command line prints."""


class ConfigError(HpsearchError):
    """A study file or an override holds a value hpsearch cannot use."""


class DataError(HpsearchError):
    """A dataset cannot be found, read or split."""


class StorageError(HpsearchError):
    """A storage URL or store hpsearch cannot use."""


class DeviceError(HpsearchError):
    """The requested device or precision does not exist on this machine."""


class SettingsMismatch(HpsearchError):
    """A resumed study was created with other settings than this run's."""


class ReportError(HpsearchError):
    """A study the results cannot be read from (no such study, not made by hpsearch)."""


class OutOfMemory(RuntimeError):
    """The device ran out of memory in one phase of training: `phase` says where and at what
    size ("training at batch size 64"), `advice` what to lower. In a study it fails that trial
    alone; elsewhere (`train --best`, `report --retrain`) it is one line, exit status 1."""

    def __init__(self, phase: str, advice: str):
        super().__init__(f"out of memory in {phase}; {advice}")
        self.phase, self.advice = phase, advice


# What torch's device errors say when an allocation failed, whatever type they come as: CUDA
# and mps's out-of-memory errors, and cuBLAS's and cuDNN's handles and workspaces, which
# fail as plain RuntimeErrors (cuDNN's "internal error" is mostly a workspace it could not get).
ALLOCATION_FAILED = ("out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED",
                     "CUDNN_STATUS_INTERNAL_ERROR", "CUDNN_STATUS_NOT_INITIALIZED")


def first_line(err: BaseException) -> str:
    """An error's first line (a database driver's own, where SQLAlchemy wraps one), or its
    type's name where it says nothing."""
    text = str(getattr(err, "orig", None) or err).strip().splitlines()
    return text[0] if text else type(err).__name__


def allocation_failed(err: BaseException) -> bool:
    """Whether `err` is the device failing to allocate memory (see ALLOCATION_FAILED)."""
    return isinstance(err, RuntimeError) and any(s in str(err) for s in ALLOCATION_FAILED)


def out_of_memory(err: BaseException, phase: str, advice: str) -> OutOfMemory:
    """An allocation failure (see allocation_failed) as OutOfMemory in `phase`: one that torch
    did not type as out of memory keeps its own first line in the phase, which says what
    failed ("training at batch size 64 (CUBLAS_STATUS_ALLOC_FAILED ...)")."""
    import torch

    said = "" if isinstance(err, torch.OutOfMemoryError) else f" ({first_line(err)})"
    return OutOfMemory(f"{phase}{said}", advice)


USER_ERRORS = (ConfigError, DataError, StorageError, DeviceError, SettingsMismatch, ReportError)


class OwnerGone(KeyboardInterrupt):
    """The worker whose images this worker trained from ended first (see sharing): its
    trial stops at the next batch as an interrupted one does (failed, queued again), and the
    worker goes on with images of its own. A KeyboardInterrupt for that path, never a
    failure of the trial's configuration."""
