"""What hpsearch writes into a study and its trials, and how to read it back.

Writers (the objective, the study) and readers (the report, `best`, `status`) share this
module and no other: a reader never imports a writer. A study holds its run's settings; a
trial holds its owner (the process and device that ran it), its model size, its per-epoch
history, why it was pruned or failed, the epoch it resumed from, its weights (an artifact
named WEIGHTS_FILE) and, for a retry, the chain of trials it replaces. For optuna-dashboard, a
study names its objective and a trial's note shows its per-epoch history as a table.
"""

from __future__ import annotations

import copy
import json
import warnings
from importlib import metadata
from typing import Optional

import optuna
from optuna.trial import TrialState

from hpsearch import private
from hpsearch.config import build_config
from hpsearch.params import PARAMS, default_space, later_params

SETTINGS_ATTR = "hpsearch"  # study: the settings a resumed run must share (see Config)
TESTED_ATTR = "tested"  # study: what the last report measured of its best trial on the test split
# study: seconds its runs spent running trials, for a time budget (see study.TimeBudget);
# written as each trial ends when there is a budget, and as each run ends
TIME_SPENT_ATTR = "time_spent"
OWNER_ATTR = "owner"  # trial: who runs it (see owner.py), first thing in the trial
N_PARAMS_ATTR = "n_params"  # trial: the model's parameter count
HISTORY_ATTR = "history"  # trial: per-epoch scalars (train.History), stored when it ends
PRUNE_REASON_ATTR = "prune_reason"  # trial: why it was pruned (by the pruner, or diverged)
FAIL_REASON_ATTR = "fail_reason"  # trial: why it failed, in one line
RESUMED_ATTR = "resumed_from_epoch"  # trial: the checkpoint's epoch it went on from
WEIGHTS_FILE = "weights.pt"  # trial artifact: a completed trial's state dict
WEIGHTS_MIMETYPE = "application/octet-stream"  # as the dashboard serves it
# Older stores: the weights' artifact id, a trial's seed and its device as attributes.
LEGACY_WEIGHTS_ATTR, LEGACY_SEED_ATTR, LEGACY_DEVICE_ATTR = "weights", "seed", "device"
# What a trial found out about its own run: a retry inherits these from the trial it
# replaces (Optuna copies every attribute), so a retry clears them when it starts.
OUTCOME_ATTRS = (HISTORY_ATTR, PRUNE_REASON_ATTR, FAIL_REASON_ATTR, RESUMED_ATTR,
                 LEGACY_WEIGHTS_ATTR)
ARTIFACT_KEY_PREFIX = "artifacts:"  # Optuna keeps a trial's artifact records as system attrs
RETRY_HISTORY_KEY = "retry_history"  # and a retry's chain of trial numbers, the origin first
METRIC_NAME = "validation accuracy"  # study: the objective's name, as the dashboard shows it
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
VERSIONED = ("hpsearch", "optuna", "torch", "torchvision", "numpy", "scikit-learn")


# --- the study -------------------------------------------------------------------------


def settings_record(cfg, data, max_epochs: int) -> dict:
    """What a study keeps about how it was run: never a storage URL or a password.
    `max_epochs`: what `train.epochs` came to for this data (and time budget), which every
    trial of the study keeps, also when a later hpsearch would work it out otherwise."""
    return {"config": cfg.settings(), "data": data.record(), "split_seed": cfg.study.seed,
            "max_epochs": max_epochs, "versions": installed_versions(VERSIONED)}


def stored_max_epochs(settings: dict) -> Optional[int]:
    """The most epochs the study's trials train, as stored (what `epochs = "auto"` came to),
    else its train.epochs where that is a number (a study stored before hpsearch stored the
    former); None when neither says."""
    stored = settings.get("max_epochs")
    if isinstance(stored, int) and not isinstance(stored, bool) and stored > 0:
        return stored
    epochs = ((settings.get("config") or {}).get("train") or {}).get("epochs")
    return epochs if isinstance(epochs, int) and not isinstance(epochs, bool) else None


def max_epochs_of(settings: dict, cfg) -> int:
    """The most epochs the study's trials train: as stored, else what this run's config and
    the stored data sizes come to."""
    stored = stored_max_epochs(settings)
    if stored is not None:
        return stored
    if isinstance(cfg.train.epochs, int):
        return cfg.train.epochs
    from hpsearch.build import max_epochs

    sizes = (settings.get("data") or {}).get("sizes") or {}
    return max_epochs(cfg.train.epochs, int(sizes.get("train", 0)), cfg.train.batch_size)


def installed_versions(packages) -> dict:
    """{package: its installed version, or None where it is not installed}."""
    versions = {}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def write_settings(study: optuna.Study, record: dict) -> None:
    study.set_user_attr(SETTINGS_ATTR, record)


def name_the_metric(study: optuna.Study) -> None:
    """Name the objective for the dashboard, in a new study or one stored before it was named.
    One read of the study's system attributes, once per run."""
    with warnings.catch_warnings():
        # Experimental since Optuna 3.2 in name only; the notice is noise in a run's output.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if study.metric_names is None:
            study.set_metric_names([METRIC_NAME])


def study_artifacts(study: optuna.Study) -> dict:
    """The study's own artifacts (not its trials'): file name -> artifact id, the first of
    each name. Read from the system attributes, as Optuna's get_all_artifact_meta does, but
    skipping the `null` records the dashboard leaves of an artifact deleted there, which make
    get_all_artifact_meta raise TypeError (Optuna 5.1)."""
    attrs = private.storage_of(study).get_study_system_attrs(private.study_id(study))
    found: dict = {}
    for key, value in attrs.items():
        meta = json.loads(value) if key.startswith(ARTIFACT_KEY_PREFIX) else None
        if isinstance(meta, dict):
            found.setdefault(meta["filename"], meta["artifact_id"])
    return found


TESTED_FIELDS = ("test_accuracy", "test_size", "confusion_matrix")  # of best_config.json


def write_tested(study: optuna.Study, best: Optional[dict]) -> None:
    """After a report: what it measured of the best trial on the test split (best_config.json's
    TESTED_FIELDS), so that `hpsearch best` can show it. Nothing when it measured none."""
    if best is not None and best.get("test_accuracy") is not None:
        study.set_user_attr(TESTED_ATTR, {k: best.get(k) for k in ("trial", *TESTED_FIELDS)})


def tested_of(study: optuna.Study, number: int) -> Optional[dict]:
    """What a report measured of trial `number` on the test split ("test_accuracy",
    "test_size"), or None when no report tested that trial (a later one may have become the
    best)."""
    tested = study.user_attrs.get(TESTED_ATTR)
    ok = isinstance(tested, dict) and tested.get("trial") == number
    return tested if ok and isinstance(tested.get("test_accuracy"), float) else None


def stored_settings(study: optuna.Study) -> Optional[dict]:
    """The settings hpsearch stored on the study, or None for a study it did not make."""
    settings = study.user_attrs.get(SETTINGS_ATTR)
    return settings if isinstance(settings, dict) and "config" in settings else None


# Settings of [train] added after studies were already stored, with the value those studies
# ran with; the parameters' are the table's (params.Spec.before).
LATER_TRAIN_SETTINGS = {("train", "precision"): "auto", ("train", "augment"): "auto"}


def later_settings() -> dict:
    """{(section, key): the value studies stored before the setting existed ran with}."""
    return {**LATER_TRAIN_SETTINGS,
            **{("space", name): value for name, value in later_params().items()}}


def with_later_defaults(stored: dict) -> dict:
    """A stored record completed by the settings it predates, so that a study made by an
    earlier hpsearch resumes as long as this run keeps their defaults."""
    config = stored.get("config")
    if not isinstance(config, dict):
        return stored
    config = {k: dict(v) if isinstance(v, dict) else v for k, v in config.items()}
    space = config.get("space")
    # Stored before the default space: what its [space] left out was fixed at its default.
    before_default_space = isinstance(space, dict) and "head" not in space
    for (section, key), value in later_settings().items():
        if isinstance(config.get(section), dict):
            config[section].setdefault(key, value)
    if before_default_space:
        for p in default_space():
            space.setdefault(p.name, PARAMS[p.name].default)
    return {**stored, "config": config}


def config_of(settings: dict, data_dir: Optional[str] = None):
    """The study's Config as it was run, rebuilt from the settings stored on the study."""
    raw = {k: dict(v) for k, v in with_later_defaults(settings)["config"].items()}
    if data_dir is not None:
        raw["data"]["data_dir"] = data_dir
    return build_config(raw)


def count_states(trials: list) -> dict:
    """Trials by state name."""
    counts: dict = {}
    for t in trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts


def state_counts(study: optuna.Study) -> dict:
    """The study's trials by state name."""
    return count_states(study.get_trials(deepcopy=False))


def count_finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def status_row(study: optuna.Study) -> tuple:
    """`hpsearch status`'s values of a study: its name, its trials by state name, the best
    value (or None) and the last start or completion (Optuna's naive local datetime, or
    None)."""
    trials = study.get_trials(deepcopy=False)
    times = [t.datetime_complete or t.datetime_start for t in trials]
    times = [t for t in times if t is not None]
    try:
        best = study.best_value
    except ValueError:
        best = None
    return study.study_name, count_states(trials), best, max(times) if times else None


def local_time(when) -> str:
    """A time Optuna read back from a store, with its offset from UTC:
    `2026-12-07 06:31:12 UTC+01:00`. Optuna 5 stores UTC and returns naive datetimes in the
    local time of the process reading them (RDB and journal storages alike), so the offset is
    this machine's at that time."""
    local = when.astimezone()  # naive: taken as local time, as Optuna made it
    minutes = round(local.utcoffset().total_seconds() / 60)
    zone = "UTC" if minutes == 0 else \
        f"UTC{'+' if minutes > 0 else '-'}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
    return f"{local:%Y-%m-%d %H:%M:%S} {zone}"


# --- a trial: writing ------------------------------------------------------------------


def start_record(trial: optuna.Trial, owner: dict) -> None:
    """The owner first (so that a later start can prove this process dead), then a clean
    slate: what a retry inherited of its original's outcome is cleared."""
    trial.set_user_attr(OWNER_ATTR, owner)
    for key in OUTCOME_ATTRS:
        if trial.user_attrs.get(key) is not None:
            trial.set_user_attr(key, None)


def write_n_params(trial: optuna.Trial, n: int) -> None:
    trial.set_user_attr(N_PARAMS_ATTR, n)


def write_history(trial: optuna.Trial, history: dict) -> None:
    trial.set_user_attr(HISTORY_ATTR, history)


HISTORY_COLUMNS = (("train loss", "train_loss", "{:.4f}"), ("train acc", "train_acc", "{:.4f}"),
                   ("val loss", "val_loss", "{:.4f}"), ("val acc", "val_acc", "{:.4f}"),
                   ("seconds", "epoch_seconds", "{:.2f}"))


def write_history_note(trial: optuna.Trial, history: dict, why: Optional[str] = None) -> None:
    """The per-epoch history as the trial's note (see history_markdown), which the dashboard
    shows on the trial's page. Written once, as the trial ends, over whatever note the user
    wrote on the running trial (reading it first would cost a read of every note)."""
    if not isinstance(trial, optuna.Trial):  # a FixedTrial: no study, no dashboard
        return
    private.write_dashboard_note(trial.storage, private.study_id(trial.study),
                                 private.trial_id(trial), history_markdown(history, why))


def history_markdown(history: dict, why: Optional[str] = None) -> str:
    """epoch | train loss | train acc | val loss | val acc | seconds, a row per epoch, under
    `why` the trial stopped early (in bold), if given."""
    n = max((len(history.get(key) or []) for _, key, _ in HISTORY_COLUMNS), default=0)
    lines = ([f"**{why}**", ""] if why else []) + [
             "Per-epoch history: the intermediate values are its val acc (step = epoch), the "
             "objective the last one.", "",
             "| epoch | " + " | ".join(name for name, _, _ in HISTORY_COLUMNS) + " |",
             "|" + "---:|" * (len(HISTORY_COLUMNS) + 1)]
    for epoch in range(n):
        cells = [_cell(history.get(key), epoch, form) for _, key, form in HISTORY_COLUMNS]
        lines.append(f"| {epoch + 1} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(values, i: int, form: str) -> str:
    value = values[i] if values and i < len(values) else None
    return "-" if value is None else form.format(value)


def write_prune_reason(trial: optuna.Trial, why: str) -> None:
    trial.set_user_attr(PRUNE_REASON_ATTR, why)


def write_fail_reason(trial: optuna.Trial, why: str) -> None:
    trial.set_user_attr(FAIL_REASON_ATTR, why)


def write_resumed_from(trial: optuna.Trial, epoch: int) -> None:
    trial.set_user_attr(RESUMED_ATTR, epoch)


def fail_dead_trial(study: optuna.Study, trial) -> Optional[optuna.trial.FrozenTrial]:
    """Mark a RUNNING trial whose process died as failed, saying so. Returns the failed
    trial, or None when another process finished or failed it first."""
    storage, tid = private.storage_of(study), private.trial_id(trial)
    try:
        storage.set_trial_user_attr(tid, FAIL_REASON_ATTR, "its process died")
        if not storage.set_trial_state_values(tid, state=TrialState.FAIL):
            return None
    except optuna.exceptions.UpdateFinishedTrialError:
        return None
    return storage.get_trial(tid)


class RetryStaleTrial(optuna.storages.RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a failed trial (same parameters and attributes, the chain of numbers
    in `retry_history`), without the failed trial's artifact records: the retry uploads its
    own weights, and an inherited record (of a dead trial's file, or of one never written when
    the upload was cut short) would be taken for them."""

    def __call__(self, study: optuna.Study, trial) -> None:
        kept = {key: list(value) if key == RETRY_HISTORY_KEY else value
                for key, value in trial.system_attrs.items()
                if not key.startswith(ARTIFACT_KEY_PREFIX)}
        trial = copy.copy(trial)
        trial.system_attrs = kept
        super().__call__(study, trial)


# --- a trial: reading ------------------------------------------------------------------


def owner_of(trial) -> dict:
    owner = trial.user_attrs.get(OWNER_ATTR)
    return owner if isinstance(owner, dict) else {}


def device_of(trial) -> Optional[str]:
    """Where the trial trained, and in what (`cpu (bf16)`, `cuda:0 (fp16, TF32 off)`)."""
    owner = owner_of(trial)
    found = owner.get("device") or trial.user_attrs.get(LEGACY_DEVICE_ATTR)
    precision = ", ".join(filter(None, (owner.get("precision"), owner.get("tf32") and
                                        f"TF32 {owner['tf32']}")))
    return f"{found} ({precision})" if found and precision else found


def history_of(trial) -> dict:
    return trial.user_attrs.get(HISTORY_ATTR) or {}


def n_params_of(trial) -> Optional[int]:
    return trial.user_attrs.get(N_PARAMS_ATTR)


def fail_reason_of(trial) -> Optional[str]:
    return trial.user_attrs.get(FAIL_REASON_ATTR)


def retry_chain(trial) -> list:
    """The numbers of the trials a retry replaces, its origin first and the trial it retried
    last; empty for a trial that retries none."""
    frozen = private.running_frozen_trial(trial)
    return getattr(frozen, "system_attrs", {}).get(RETRY_HISTORY_KEY) or []


def origin_of(trial) -> int:
    """The number of the first trial of a retry chain, whose checkpoint and seed every retry
    shares."""
    chain = retry_chain(trial)
    return chain[0] if chain else trial.number


def trial_seed(study_seed: int, trial) -> int:
    """The seed of a trial's initialisation and shuffling: its origin's, so that a retry
    trains as the trial it replaces. Older stores hold it as an attribute."""
    seed = trial.user_attrs.get(LEGACY_SEED_ATTR)
    return seed if isinstance(seed, int) else study_seed * 100_003 + origin_of(trial)


def weights_artifact(trial, study) -> Optional[str]:
    """The id of the trial's own weights artifact, if it uploaded one. Older stores name it in
    an attribute; otherwise it is the trial's WEIGHTS_FILE record that the trial it retried
    does not also hold (retries queued by earlier versions inherited their original's)."""
    from optuna.artifacts import get_all_artifact_meta

    named = trial.user_attrs.get(LEGACY_WEIGHTS_ATTR)
    if isinstance(named, str) and named:
        return named
    storage = private.storage_of(study)
    own = {m.artifact_id for m in get_all_artifact_meta(trial, storage=storage)
           if m.filename == WEIGHTS_FILE}
    chain = retry_chain(trial)
    if own and chain:
        retried = storage.get_trial(storage.get_trial_id_from_study_id_trial_number(
            private.study_id(study), chain[-1]))
        own -= {m.artifact_id for m in get_all_artifact_meta(retried, storage=storage)}
    return min(own) if own else None


# --- the study's time ------------------------------------------------------------------


def time_spent(study: optuna.Study) -> float:
    """Seconds the study's runs spent running trials; 0 for one stored before they were
    counted."""
    spent = study.user_attrs.get(TIME_SPENT_ATTR)
    ok = isinstance(spent, (int, float)) and not isinstance(spent, bool) and spent > 0
    return float(spent) if ok else 0.0


def write_time_spent(study: optuna.Study, seconds: float) -> None:
    study.set_user_attr(TIME_SPENT_ATTR, round(seconds, 3))


def as_it_ran(cfg, stored: Optional[dict]):
    """This run's Config for a study stored before some parameters existed: each such
    parameter its record lacks, which this run fixes at today's default (its study file did
    not name it), takes the value the study ran with (e.g. schedule "constant"), so that the
    study resumes and its new trials train as its first did. Anything else is left to the
    settings check."""
    from dataclasses import replace

    from hpsearch.params import Fixed, default_of, later_params

    space = ((stored or {}).get("config") or {}).get("space")
    if not isinstance(space, dict):
        return cfg
    before = {name: value for name, value in later_params().items() if name not in space}
    kept = tuple(Fixed(p.name, before[p.name])
                 if p.name in before and p == Fixed(p.name, default_of(p.name, cfg.data))
                 else p for p in cfg.space)
    return cfg if kept == cfg.space else replace(cfg, space=kept)
