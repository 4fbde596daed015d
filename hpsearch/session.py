"""A run assembled once: device, precision, data, store, study and objective.

`hpsearch run`, each worker process of `--workers` and the benchmarks build their runs here,
in the same order: everything that can be refused (the device, the precision, the store's
URL and file) is checked before the data is loaded, and the data before the store is opened.
A Ctrl-C between these steps stops the run there (see interrupts).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import optuna
import torch

from hpsearch import interrupts
from hpsearch.backup import Backup, refuse_network_sqlite
from hpsearch.config import Config
from hpsearch.data import Dataset, Progress, load_dataset
from hpsearch.objective import make_objective
from hpsearch.build import max_epochs, probe_seconds_per_epoch
from hpsearch.records import (as_it_ran, count_finished, max_epochs_of, settings_record,
                              stored_max_epochs, stored_settings)
from hpsearch.schedule import budget_epochs
from hpsearch.space import middle_params
from hpsearch.sqlite import sync_finished_trials, use_wal
from hpsearch.storage import (DEFAULT_STORAGE, StorageSpec, artifact_folder, beside_store,
                              check_store_file, open_artifacts, open_storage, parse_storage)
from hpsearch.study import (RunResult, TimeBudget, find_study, grid_is_exhausted, open_study,
                            recover_dead_trials, run, runs_alone)
from hpsearch.precision import choose_precision
from hpsearch.sharing import Share, cap, groups, hand_over, receive
from hpsearch.train import Diverged, configure_threads, resolve_device


@dataclass(frozen=True)
class RunOptions:
    """How this machine runs a study: what the study file does not say."""

    storage: str = DEFAULT_STORAGE  # a storage URL (see storage.parse_storage)
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    workers: int = 1  # processes on this machine sharing the study
    artifacts: Optional[str] = None  # the weights folder; default: artifacts/ beside the store
    checkpoints: Optional[str] = None  # running trials' checkpoints; default: beside the store
    timeout: Optional[float] = None  # seconds this run may take; the study can be resumed


def worker_device(name: str, worker: Optional[int]) -> torch.device:
    """The device a process trains on. `auto` and `cuda` without an index put worker i on
    GPU i modulo the visible count; an explicit device must exist."""
    device = resolve_device(name)
    if worker is not None and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", worker % torch.cuda.device_count())
    return device


def training_setup(cfg: Config, device: torch.device, workers: int = 1,
                   on_progress: Progress = None, share: Optional[Share] = None,
                   host_only: bool = False, dtype: Optional[torch.dtype] = None) -> tuple:
    """(CPU threads or None, dataset) of a process that trains on `device`: the CPU's cores
    shared among the workers, the study's data loaded onto the device once (a folder's
    decoding reported to `on_progress`), or taken from the worker that shares the device
    with this one, with its share of the device's memory (see sharing; `dtype`: what the
    trials compute in). `host_only`: into host memory, whatever the device."""
    threads = configure_threads(workers) if device.type == "cpu" else None
    interrupts.check()
    if host_only:
        device = torch.device("cpu")
    if share is None:
        return threads, load_dataset(cfg.data, cfg.study.seed, device, on_progress)
    if share.is_owner:
        try:
            data = load_dataset(cfg.data, cfg.study.seed, device, on_progress, shared=True)
        except BaseException:
            hand_over(share, None, device)  # the others try for themselves
            raise
        per_worker = hand_over(share, data, device, dtype)
    else:
        data, per_worker = receive(share, device, dtype)
        if data is None:
            if device.type == "cuda":
                torch.cuda.set_device(device)
            data = load_dataset(cfg.data, cfg.study.seed, device, on_progress)
    cap(device, per_worker)
    return threads, data


def study_length(cfg: Config, data: Dataset, device: torch.device, stored: Optional[dict],
                 probe: bool = True, precision: Optional[str] = None) -> int:
    """The most epochs a trial of a new study trains: `train.epochs` for this data (see
    build.max_epochs) and, with a time budget, few enough that a middling model of the space
    trained to the end takes at most a quarter of it (one epoch of it is timed here, on the
    CPU or the device its data sit on; `probe` False times nothing: the parent of --workers
    on GPUs holds its data in host memory). A study already stored (`stored`: its record)
    keeps its own; this is not worked out for it. A middling model that diverges is no
    measure: the length then stays. `precision`: the run's, as it resolved it."""
    epochs = max_epochs(cfg.train.epochs, len(data.y_train), cfg.train.batch_size)
    if cfg.study.time <= 0 or not probe or stored_max_epochs(stored or {}) is not None:
        return epochs
    try:
        seconds = probe_seconds_per_epoch(middle_params(cfg), data, device,
                                          precision or cfg.train.precision)
    except Diverged:
        return epochs
    return budget_epochs(epochs, seconds, cfg.study.time)


@dataclass
class Session:
    """One process's share of a study: what it trains on and the study it runs."""

    cfg: Config
    options: RunOptions
    spec: StorageSpec
    device: torch.device
    precision: str  # fp32 | bf16 | fp16: what `train.precision` means here
    threads: Optional[int]  # CPU threads per process; None on a GPU
    data: Dataset
    study: optuna.Study
    artifacts: Path
    checkpoints: Path
    backup: Optional[Backup] = None
    restored: bool = False  # the store was copied back from the backup just now
    # The study's time budget as this run spends it (see time_left)
    budget: TimeBudget = field(default_factory=lambda: TimeBudget(0.0, 0.0))

    @classmethod
    def open(cls, cfg: Config, options: RunOptions = RunOptions(), worker: Optional[int] = None,
             on_note: Optional[Callable[[str], None]] = None,
             on_progress: Progress = None, share: Optional[Share] = None,
             budget: Optional[TimeBudget] = None) -> "Session":
        """Check, load and open everything a run needs. The run itself (worker None) also
        restores a missing store from its backup, telling `on_note` at once, and switches
        SQLite to write-ahead logging; its workers find both done. `on_progress` hears how
        far a folder's decoding is. The parent of `--workers` loads the data into host
        memory only (to check and record it): its workers train, each on its own device,
        sharing the images with the others there by `share`, and the run's clock by `budget`
        (the study's time budget as the run spends it; by default read from the study)."""
        device = worker_device(options.device, worker)
        if worker is not None and device.type == "cuda" and (share is None or share.is_owner):
            # Nothing of this process lands on another GPU. A user of an owner's images
            # creates its context only once the owner has measured the free memory.
            torch.cuda.set_device(device)
        chosen = choose_precision(device, cfg.train.precision)  # refused before any work
        if chosen.note and on_note is not None and worker is None:
            on_note(chosen.note)
        precision = chosen.name
        spec = parse_storage(options.storage)
        refuse_network_sqlite(spec)
        artifacts = artifact_folder(spec, options.artifacts)
        checkpoints = (Path(options.checkpoints).expanduser().resolve() if options.checkpoints
                       else beside_store(spec, "checkpoints"))
        backup = Backup.of(cfg.study, spec, artifacts, checkpoints)
        note = backup.restore_if_missing() if backup and worker is None else None
        if note and on_note is not None:
            on_note(note)
        check_store_file(spec)  # before any work, so that a wrong path fails fast
        interrupts.check()
        threads, data = training_setup(cfg, device, options.workers, on_progress, share,
                                       host_only=worker is None and options.workers > 1,
                                       dtype=chosen.dtype)
        interrupts.check()
        storage = open_storage(spec, heartbeat_interval=cfg.study.heartbeat_interval,
                               grace_period=cfg.study.grace_period)
        existing = find_study(storage, cfg.study.name)
        stored = stored_settings(existing) if existing is not None else None
        cfg = as_it_ran(cfg, stored)  # a study older than some parameters keeps their values
        epochs = study_length(cfg, data, device, stored, probe=device.type == "cpu" or not (
            worker is None and options.workers > 1), precision=precision)
        study = open_study(storage, cfg, settings_record(cfg, data, epochs), worker=worker or 0,
                           alone=runs_alone(spec, options.workers))
        if worker is None:
            use_wal(spec, storage)
        interrupts.check()
        return cls(cfg, options, spec, device, precision, threads, data, study, artifacts,
                   checkpoints, backup, restored=bool(note) and note.startswith("restored"),
                   budget=budget or TimeBudget.of(study, cfg.study.time))

    @property
    def shares_images(self) -> bool:
        """Whether some of this run's workers share a device, and with it one copy of the
        images (see sharing)."""
        gpus = torch.cuda.device_count() if self.device.type == "cuda" else 1
        return any(len(g) > 1 for g in groups(self.options.workers, self.device, gpus))

    @property
    def max_epochs(self) -> int:
        """The most epochs a trial of this study trains, as the study stored it."""
        return max_epochs_of(stored_settings(self.study), self.cfg)

    @property
    def alone(self) -> bool:
        """This process runs the study's only trials (see study.runs_alone)."""
        return runs_alone(self.spec, self.options.workers)

    def finished(self) -> int:
        return count_finished(self.study)

    def nothing_to_do(self, finished: int) -> bool:
        """Whether a study with `finished` trials needs no more: its target met, its time
        budget spent, or its grid tried."""
        target = self.cfg.study.trials
        return bool(target and finished >= target) or self.time_left() == 0 or \
            grid_is_exhausted(self.study)

    def time_left(self) -> Optional[float]:
        """Seconds left now of the study's time budget (`cfg.study.time`, over all its runs);
        None without a budget."""
        return self.budget.left()

    @contextmanager
    def spending(self):
        """The study's clock runs inside; the time spent is stored as it ends, however it
        ends. A run in this process needs nothing more: Session.run uses it."""
        self.budget.start()
        try:
            yield self.budget
        finally:
            self.budget.stop()
            self.budget.record(self.study)

    def recover_dead_trials(self) -> list:
        """(trial number, retry queued) of each trial a dead process left running."""
        return recover_dead_trials(self.study, restored=self.restored)

    def objective(self, trainer: Optional[Callable] = None,
                  on_epoch: Optional[Callable[[int, dict], None]] = None):
        return make_objective(self.cfg, self.data, self.device, open_artifacts(self.artifacts),
                              self.checkpoints, self.backup, trainer, self.max_epochs,
                              on_epoch, self.precision)

    def run(self, callbacks: tuple = (), objective: Optional[Callable] = None) -> RunResult:
        """Trials in this process until the study holds its target (see study.run) or its
        time budget is spent, of `objective` (default: the session's own)."""
        objective = objective or self.objective()
        # With a budget, the time spent is stored as each trial ends (before the sync that
        # makes the trial durable): a killed run loses at most its running trial's time.
        spent = (self.budget.record,) if self.budget.total else ()
        with self.spending():
            limits = [t for t in (self.options.timeout, self.time_left()) if t is not None]
            return run(self.study, objective, self.cfg.study.trials or None,
                       timeout=min(limits, default=None),
                       callbacks=(*spent, sync_finished_trials(self.spec), *callbacks),
                       alone=self.alone)

    def close(self) -> None:
        """A last backup, however the run ended."""
        if self.backup is not None:
            self.backup.sync(force=True)
