"""The private APIs of Optuna, optuna-dashboard, torch and Python that hpsearch calls, one
function each.

Each may change with a minor release of its library, so each is called from here alone, with
the reason the public API does not serve and the versions it was checked against. Checked:
Optuna 5.0.0 and 5.1.0, torch 2.4 to 2.14, CPython 3.10 to 3.13. torch is imported by the
calls that need it, so that the commands that never train (`--help`, `status`) load none.
"""

from __future__ import annotations

import atexit
import threading

# --- Optuna -------------------------------------------------------------------------------


def storage_of(study):
    """The storage object under a study. Optuna's public API reads trials through the study,
    but failing a dead process's trial by its id, reading a trial's artifact records and
    Optuna's own stale-trial retry all take the storage (`Study._storage`)."""
    return study._storage


def study_id(study) -> int:
    """The study's id in its storage (`Study._study_id`): the storage's trial lookups by
    number take it, and it tells two studies of one name in two stores apart."""
    return study._study_id


def trial_id(trial) -> int:
    """A trial's id in its storage (`FrozenTrial._trial_id`, `Trial._trial_id`): the
    storage's writes take ids, not trial numbers."""
    return trial._trial_id


# optuna-dashboard 0.21 keeps a trial's note (Markdown) in its study's system attributes: a
# version number and the text in pieces of at most 2045 characters (optuna_dashboard/_note.py).
NOTE_VERSION_KEY, NOTE_TEXT_KEY = "dashboard:{}:note_ver", "dashboard:{}:note_str:"
NOTE_PIECE = 2045  # characters per system attribute


def write_dashboard_note(storage, study_id: int, trial_id: int, text: str) -> None:
    """A trial's note in optuna-dashboard's stored layout. Its public save_note reads every
    system attribute of the study twice per call, which grows with the notes (tens of ms per
    trial on SQLite at 1,000 trials), and importing optuna_dashboard in a run costs about a
    second (it imports scikit-learn). Checked against optuna-dashboard 0.21;
    tests/test_dashboard.py reads the note back through its get_note and its HTTP API."""
    storage.set_study_system_attr(study_id, NOTE_VERSION_KEY.format(trial_id), 1)
    for i in range(0, len(text), NOTE_PIECE):
        storage.set_study_system_attr(study_id, NOTE_TEXT_KEY.format(trial_id) +
                                      str(i // NOTE_PIECE), text[i:i + NOTE_PIECE])


def running_frozen_trial(trial):
    """The FrozenTrial behind a running `Trial` (`Trial._cached_frozen_trial`), whose system
    attributes hold the retry lineage: a running Trial exposes its user attributes only.
    A FrozenTrial is returned as it is."""
    return getattr(trial, "_cached_frozen_trial", trial)


def completed_trials_cached(study, states) -> list:
    """The study's trials of `states` from Optuna's per-trial cache
    (`Study._get_trials(use_cache=True)`), which the sampler filled when the trial was asked
    for: Optuna's own samplers read it so; the public `get_trials` reads the store again."""
    return study._get_trials(deepcopy=False, states=states, use_cache=True)


def optimize_tell() -> tuple:
    """(module, name) of the function Optuna's optimize loop stores a trial's outcome with
    (`optuna.study._optimize._tell_with_warning`): the overhead benchmark times it there, as
    the public `Study.tell` is not what the loop calls."""
    from optuna.study import _optimize

    return _optimize, "_tell_with_warning"


# --- torch --------------------------------------------------------------------------------


def fused_adam_(*args, adamw: bool = False, **kwargs) -> None:
    """torch.optim's fused Adam or AdamW kernel (`torch._fused_adam_`, `_fused_adamw_`): the
    kernel `torch.optim.Adam(fused=True)` runs, without torch.optim's per-step regrouping of
    the tensors and its import of torch's compiler (see hpsearch.optim)."""
    import torch

    (torch._fused_adamw_ if adamw else torch._fused_adam_)(*args, **kwargs)


def fused_sgd_(*args, **kwargs) -> None:
    """torch.optim's fused SGD kernel (`torch._fused_sgd_`), for the same reason."""
    import torch

    torch._fused_sgd_(*args, **kwargs)


def foreach_add_(tensors: list, other) -> None:
    """One kernel adding to a list of tensors (`torch._foreach_add_`), as torch.optim counts
    its Adam steps."""
    import torch

    torch._foreach_add_(tensors, other)


def foreach_sub_(tensors: list, others: list) -> None:
    """One kernel subtracting from a list of tensors (`torch._foreach_sub_`)."""
    import torch

    torch._foreach_sub_(tensors, others)


def cpu_has_native_bf16() -> bool:
    """Whether the processor computes bfloat16 natively: AVX512-BF16 or AMX tiles
    (`torch.cpu._is_avx512_bf16_supported`, `_is_amx_tile_supported`). The public check,
    `torch.backends.mkldnn`'s, also says yes where oneDNN emulates bf16, slower than fp32."""
    import torch

    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):
        return False


# --- Python -------------------------------------------------------------------------------


def finish_threads() -> None:
    """What the interpreter's exit does first (`threading._shutdown`): stop idle thread
    pools, then wait for every non-daemon thread. No public call waits for all of them."""
    threading._shutdown()


def run_exit_handlers() -> None:
    """The `atexit` handlers, as the interpreter's exit runs them (`atexit._run_exitfuncs`):
    `os._exit` skips them, and they flush logging among other things."""
    atexit._run_exitfuncs()
