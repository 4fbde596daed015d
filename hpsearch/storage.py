"""Storage URLs -> Optuna storages (SQLite, PostgreSQL, MySQL, journal files)."""

from __future__ import annotations

import copy
import functools
import logging
import os
import shutil
import sqlite3
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import optuna
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

log = logging.getLogger("hpsearch")

DEFAULT_STORAGE = "sqlite:///studies/hpsearch.db"
RDB_SCHEMES = ("sqlite", "postgresql", "mysql")
SQLITE_MAGIC = b"SQLite format 3\x00"


class StorageError(ValueError):
    """A storage URL or store hpsearch cannot use. Messages never hold a password."""


@dataclass(frozen=True)
class StorageSpec:
    url: str  # as SQLAlchemy or the journal backend takes it
    kind: str  # sqlite | postgresql | mysql | journal
    path: Optional[Path] = None  # the file of a SQLite or journal store

    @property
    def display(self) -> str:
        """How a person sees the store: an absolute file path, or the URL without password."""
        if self.path is not None:
            return str(self.path)
        return make_url(self.url).render_as_string(hide_password=True)


def parse_storage(url: str) -> StorageSpec:
    """Check a storage URL without touching any store."""
    if url.startswith("journal:"):
        path = Path(url[len("journal:"):]).expanduser()
        if not path.name:
            raise StorageError("--storage journal:PATH needs a file path, "
                               "e.g. journal:studies/s.log")
        return StorageSpec(url, "journal", path.resolve())
    try:
        parsed = make_url(url)
        parsed.port  # a port that is not a number fails only when read
    except (ArgumentError, ValueError):
        raise StorageError(_bad_url(url)) from None
    backend = parsed.get_backend_name()
    if backend not in RDB_SCHEMES:
        raise StorageError(_bad_url(url))
    if backend != "sqlite":
        if backend == "postgresql" and parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")  # the driver hpsearch installs
        return StorageSpec(parsed.render_as_string(hide_password=False), backend)
    if not parsed.database or parsed.database == ":memory:":
        raise StorageError("an in-memory SQLite store keeps nothing; use sqlite:///PATH.db")
    path = Path(parsed.database).expanduser().resolve()
    return StorageSpec(f"sqlite:///{path}", "sqlite", path)


def _bad_url(url: str) -> str:
    shown = url.split("@")[-1] if "@" in url else url  # never echo a password
    return (f"--storage {shown!r} is not a storage URL; use sqlite:///PATH.db, "
            f"postgresql://USER@HOST/DB, mysql+pymysql://USER@HOST/DB or journal:PATH")


def check_store_file(spec: StorageSpec) -> None:
    """Refuse a file that exists but is not a store hpsearch can write into."""
    if spec.path is None or not spec.path.exists():
        return
    if spec.path.is_dir():
        raise StorageError(f"store {spec.path} is a folder; --storage needs a file path")
    try:
        with open(spec.path, "rb") as f:
            head = f.read(len(SQLITE_MAGIC))
    except OSError as err:
        raise StorageError(f"store {spec.path} cannot be read: {err.strerror}") from None
    if spec.kind == "journal":
        if head and not head.startswith(b"{"):
            raise StorageError(f"store {spec.path} is not an Optuna journal file; point "
                               f"--storage at a journal hpsearch made or at a new file")
        return
    if head and head != SQLITE_MAGIC:
        raise StorageError(f"store {spec.path} is not an SQLite database; point --storage at a "
                           f"store hpsearch made or at a new file")
    if head and not _is_optuna_db(spec.path):
        raise StorageError(f"store {spec.path} is an SQLite database of another program; "
                           f"hpsearch will not add tables to it: use a new file")


def _is_optuna_db(path: Path) -> bool:
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = con.execute("SELECT name FROM sqlite_master WHERE type='table'")
            tables = {r[0] for r in rows}
        finally:
            con.close()
    except sqlite3.DatabaseError as err:
        raise StorageError(f"store {path} cannot be read as SQLite ({err}); "
                           f"point --storage at another file") from None
    return not tables or {"studies", "trials", "version_info"} <= tables


def open_storage(spec: StorageSpec, *, heartbeat_interval: Optional[int] = None,
                 grace_period: Optional[int] = None):
    """The Optuna storage for a checked spec; store files and their folder are made here."""
    check_store_file(spec)
    if spec.path is not None:
        try:
            spec.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StorageError(f"cannot make the folder of store {spec.path}: "
                               f"{err.strerror}") from None
    try:
        if spec.kind == "journal":
            return _journal(spec.path)
        return _rdb(spec, heartbeat_interval, grace_period)
    except Exception as err:  # SQLAlchemy, the drivers and the journal raise many kinds;
        # all of them mean "cannot open"
        raise StorageError(f"cannot open store {spec.display}: {_first_line(err)}") from None


def _journal(path: Path):
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    lock = JournalFileOpenLock(str(path))
    return optuna.storages.JournalStorage(JournalFileBackend(str(path), lock_obj=lock))


ARTIFACT_KEY_PREFIX = "artifacts:"  # Optuna keeps a trial's artifact records as system attributes
RETRY_HISTORY_KEY = "retry_history"  # and a retry's chain of trial numbers, the original first


def retry_chain(trial) -> list:
    """The numbers of the trials a retry replaces, its origin first and the trial it retried
    last; empty for a trial that retries none. A running Trial keeps its system attributes in
    its cached copy."""
    frozen = getattr(trial, "_cached_frozen_trial", trial)
    return getattr(frozen, "system_attrs", {}).get(RETRY_HISTORY_KEY) or []


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


def _rdb(spec: StorageSpec, heartbeat_interval: Optional[int], grace_period: Optional[int]):
    if spec.kind == "sqlite":
        # SQLite waits up to LOCK_WAIT seconds for another writer, then hpsearch retries and
        # counts the retry, for LOCK_PATIENCE seconds in all.
        engine_kwargs = {"connect_args": {"timeout": LOCK_WAIT, "factory": _RetryingConnection}}
    else:
        engine_kwargs = {"pool_pre_ping": True}
    retry = None
    if heartbeat_interval is not None:
        retry = RetryStaleTrial(max_retry=1)
    storage = optuna.storages.RDBStorage(
        spec.url,
        engine_kwargs=engine_kwargs,
        heartbeat_interval=heartbeat_interval,
        grace_period=grace_period,
        heartbeat_stale_trial_callback=retry,
    )
    _opened.add(storage)
    return storage


_opened: weakref.WeakSet = weakref.WeakSet()  # the database stores this process opened
_sqlite_connections: weakref.WeakSet = weakref.WeakSet()  # and their SQLite connections


def close_stores() -> None:
    """Close the connections of every database store this process opened. SQLite folds a
    store's write-ahead log back into the store file when its last connection closes; a
    process that ends without closing them leaves the log beside the file, where a copy of
    the file alone would miss the latest trials. SQLite's are closed one by one as well: a
    store refused at resume is gone by now, but its pool's connections are not."""
    for storage in list(_opened):
        storage.engine.dispose()
    for connection in list(_sqlite_connections):
        try:
            connection.close()
        except sqlite3.ProgrammingError:  # made in another thread, which still owns it
            pass


_store_calls = 0  # calls to a guarded store under way in the main thread


def guard_store_calls(storage) -> None:
    """Count the main thread's calls to every method of this storage object (a study's, with
    Optuna's cache around the database), so that an interrupt can wait for them to return
    (see study.py's handle_interrupts)."""
    main = threading.main_thread().ident

    def counted(method):
        @functools.wraps(method)
        def call(*args, **kwargs):
            global _store_calls
            if threading.get_ident() != main:
                return method(*args, **kwargs)
            _store_calls += 1
            try:
                return method(*args, **kwargs)
            finally:
                _store_calls -= 1
        return call

    if getattr(storage, "_hpsearch_guarded", False):
        return
    for name in dir(type(storage)):
        if not name.startswith("__") and callable(getattr(type(storage), name, None)):
            setattr(storage, name, counted(getattr(storage, name)))
    storage._hpsearch_guarded = True


def in_store_call() -> bool:
    """Whether the main thread is inside a call to a guarded store: an exception raised there
    can leave a write transaction open, or Optuna's cache half updated."""
    return _store_calls > 0


LOCK_WAIT = 1.0  # seconds SQLite itself waits for a lock before reporting it
LOCK_PATIENCE = 120.0  # seconds of retries before "database is locked" reaches the user
_lock_retries = 0


def lock_retries() -> int:
    """How many times this process retried a statement because the SQLite store was locked."""
    return _lock_retries


def _with_lock_retries(call):
    global _lock_retries
    deadline, delay = time.monotonic() + LOCK_PATIENCE, 0.02
    while True:
        try:
            return call()
        except sqlite3.OperationalError as err:
            text = str(err).lower()
            if ("locked" not in text and "busy" not in text) or time.monotonic() > deadline:
                raise
            _lock_retries += 1
            log.info("SQLite store locked by another process for over %.0f s; retry %d",
                     LOCK_WAIT, _lock_retries)
            time.sleep(delay)
            delay = min(delay * 2, 0.5)


class _RetryingCursor(sqlite3.Cursor):
    """A DB-API cursor (under SQLAlchemy, under Optuna's storage) that retries a statement
    the SQLite store refused as locked, and counts it."""

    def execute(self, sql, parameters=()):
        return _with_lock_retries(lambda: super(_RetryingCursor, self).execute(sql, parameters))

    def executemany(self, sql, seq):
        seq = list(seq)
        return _with_lock_retries(lambda: super(_RetryingCursor, self).executemany(sql, seq))


class _RetryingConnection(sqlite3.Connection):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _sqlite_connections.add(self)
        # In WAL mode, synchronous=NORMAL commits without an fsync (a process that is killed
        # still loses nothing; only a power cut or an OS crash can drop the last commits) and
        # never corrupts the file. `sync_finished_trials` syncs the log once a trial is told,
        # so a finished trial is as durable as under FULL, with one sync a trial instead of
        # one per commit (about 20): hpsearch.overhead on SQLite, 4 runs side by side, median
        # 69 -> 56 ms per trial. Rollback-journal mode keeps FULL: NORMAL can corrupt there.
        if self.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
            self.execute("PRAGMA synchronous=NORMAL")

    def cursor(self, factory=_RetryingCursor):
        return super().cursor(factory)

    def commit(self):
        return _with_lock_retries(super().commit)


def use_wal(spec: StorageSpec, storage=None) -> None:
    """Write-ahead logging lets readers (the dashboard, reports) work while a trial writes.
    The mode is stored in the file, so setting it once is enough; it is set only after the
    study's settings were accepted, so a refused resume leaves the file as it was. The
    connections `storage` opened before are closed, so that the next ones write as WAL allows
    (see _RetryingConnection)."""
    if spec.kind != "sqlite":
        return
    try:
        con = sqlite3.connect(spec.path, timeout=60)
        try:
            switched = con.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal"
            con.execute("PRAGMA journal_mode=WAL")
        finally:
            con.close()
    except sqlite3.Error as err:
        raise StorageError(f"store {spec.path} cannot be opened as SQLite ({err})") from None
    if switched and isinstance(storage, optuna.storages.RDBStorage):
        storage.engine.dispose()


def sync_finished_trials(spec: StorageSpec):
    """A study callback that makes every finished trial durable: an fsync of a WAL store's
    log once the trial is told (its writes commit without one, see _RetryingConnection).
    Other stores sync each commit themselves: nothing to do."""

    def sync(study, trial) -> None:
        wal = spec.path.with_name(spec.path.name + "-wal")
        try:
            fd = os.open(wal, os.O_RDONLY)
        except FileNotFoundError:
            return  # no log: every commit is in the database file, synced by SQLite
        try:
            getattr(os, "fdatasync", os.fsync)(fd)  # as SQLite syncs it; macOS has fsync only
        finally:
            os.close(fd)

    return sync if spec.kind == "sqlite" else (lambda study, trial: None)


def _first_line(err: Exception) -> str:
    text = str(getattr(err, "orig", None) or err).strip().splitlines()
    return text[0] if text else type(err).__name__


def beside_store(spec: StorageSpec, name: str) -> Path:
    """A folder beside a store file (`studies/artifacts`, `studies/checkpoints`), or under the
    working folder's `studies/` for a database server."""
    base = spec.path.parent if spec.path is not None else Path("studies").resolve()
    return base / name


def open_artifacts(folder: Path):
    """Optuna's file-system artifact store; the folder is made on first upload."""
    from optuna.artifacts import FileSystemArtifactStore

    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise StorageError(f"cannot make the artifact folder {folder}: {err.strerror}") from None
    return FileSystemArtifactStore(str(folder))


def open_existing_storage(spec: StorageSpec):
    """The storage of a store that must already exist (reports, status, the dashboard): a
    mistyped path is an error, never a new empty store."""
    check_store_file(spec)
    if spec.path is not None and not spec.path.exists():
        raise StorageError(f"store {spec.path} does not exist; pass --storage URL of a store "
                           f"made by `hpsearch run`")
    if spec.kind not in ("sqlite", "journal"):
        _require_optuna_tables(spec)
    elif spec.kind == "sqlite" and spec.path.stat().st_size == 0:
        raise StorageError(f"store {spec.path} is empty; pass --storage URL of a store made by "
                           f"`hpsearch run`")
    return open_storage(spec)  # no heartbeat: readers never fail a writer's trials


def _require_optuna_tables(spec: StorageSpec) -> None:
    from sqlalchemy import create_engine, inspect

    try:
        engine = create_engine(spec.url)
        try:
            found = inspect(engine).has_table("studies")
        finally:
            engine.dispose()
    except Exception as err:  # drivers raise many kinds; all mean "cannot open"
        raise StorageError(f"cannot open store {spec.display}: {_first_line(err)}") from None
    if not found:
        raise StorageError(f"{spec.display} holds no Optuna studies; pass --storage URL of a "
                           f"store made by `hpsearch run`")


# ------------------------------------------------------------------ network drives and backups

NETWORK_FILESYSTEMS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "afs", "sshfs")


def filesystem_type(path: Path) -> Optional[str]:
    """The type of the mount holding `path` (Linux), e.g. ext4, nfs4, fuse.drive."""
    try:
        with open("/proc/mounts", encoding="utf-8") as f:
            mounts = [line.split()[1:3] for line in f if len(line.split()) > 2]
    except OSError:
        return None
    path = path.resolve()
    best, kind = "", None
    for point, fstype in mounts:
        point = point.replace("\\040", " ")
        if (path == Path(point) or Path(point) in path.parents) and len(point) > len(best):
            best, kind = point, fstype
    return kind


def is_network_drive(path: Path) -> bool:
    kind = filesystem_type(path.parent if not path.exists() else path) or ""
    return kind in NETWORK_FILESYSTEMS or kind.startswith("fuse")


def refuse_network_sqlite(spec: StorageSpec) -> None:
    """SQLite's locks do not hold on NFS or a FUSE mount such as Google Drive: a store there
    ends up 'database disk image is malformed'."""
    if spec.kind == "sqlite" and is_network_drive(spec.path):
        raise StorageError(
            f"store {spec.path} is on a network or FUSE drive ({filesystem_type(spec.path)}), "
            f"where SQLite can corrupt; keep the store on local disk and pass --backup DIR to "
            f"copy it to the drive")


class Backup:
    """A consistent copy of a local SQLite store, its running trial's checkpoint and new
    artifacts in another folder, and the way back on a fresh machine."""

    def __init__(self, spec: StorageSpec, folder: Path, artifacts: Path, checkpoints: Path,
                 interval: float = 30.0):
        if spec.kind != "sqlite":
            raise StorageError("--backup copies a SQLite store; a database server or a journal "
                               "file keeps its own copies")
        if folder.exists() and not folder.is_dir():
            raise StorageError(f"--backup {folder} is a file; pass a folder, e.g. "
                               f"/content/drive/MyDrive/hpsearch")
        if folder == spec.path.parent:
            raise StorageError(f"--backup {folder} is the store's own folder; pass another, "
                               f"e.g. a folder on Google Drive")
        self.spec, self.folder, self.interval = spec, folder, interval
        self.artifacts, self.checkpoints = artifacts, checkpoints
        self.store = folder / spec.path.name
        self._last = -float("inf")

    @classmethod
    def of(cls, study_cfg, spec: StorageSpec, artifacts: Path,
           checkpoints: Path) -> Optional["Backup"]:
        """The backup a study's [study] backup and backup_interval ask for, if any."""
        if not study_cfg.backup:
            return None
        return cls(spec, Path(study_cfg.backup).expanduser().resolve(), artifacts, checkpoints,
                   study_cfg.backup_interval)

    def restore_if_missing(self) -> Optional[str]:
        """Copy the store, checkpoints and artifacts back when the local store is missing.
        Returns what was done or what looks wrong, for the user to read."""
        if not self.store.exists():
            return None
        if not self.spec.path.exists():
            self.spec.path.parent.mkdir(parents=True, exist_ok=True)
            _copy_file(self.store, self.spec.path)
            _copy_tree(self.folder / "checkpoints", self.checkpoints)
            _copy_tree(self.folder / "artifacts", self.artifacts)
            return f"restored the store from the backup {self.store}"
        if self.store.stat().st_mtime > self.spec.path.stat().st_mtime + 1:
            return (f"warning: the backup {self.store} is newer than the local store "
                    f"{self.spec.path}; the local store is used (delete it to restore)")
        return None

    def sync(self, checkpoint: Optional[Path] = None, force: bool = False) -> bool:
        """Back up now if forced or if `interval` seconds have passed: the store first (SQLite's
        online backup into a temporary file, then a rename), then the checkpoint and any new
        artifacts. Returns whether it ran."""
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return False
        self._last = now
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.store.with_name(f".{self.store.name}.{os.getpid()}.tmp")
        try:
            src = sqlite3.connect(self.spec.path, timeout=60)
            dst = sqlite3.connect(tmp)
            try:
                src.backup(dst)
            finally:
                dst.close()
                src.close()
            os.replace(tmp, self.store)
        finally:
            tmp.unlink(missing_ok=True)
        if checkpoint is not None and checkpoint.exists():
            target = self.folder / "checkpoints" / checkpoint.relative_to(self.checkpoints)
            _copy_file(checkpoint, target)
        _copy_tree(self.artifacts, self.folder / "artifacts")
        return True

    def forget(self, checkpoint: Path) -> None:
        """A finished trial's backed-up checkpoint goes too."""
        (self.folder / "checkpoints" / checkpoint.relative_to(self.checkpoints)).unlink(
            missing_ok=True)


def _copy_file(src: Path, dst: Path) -> None:
    """Through a temporary name, so that a reader never sees half a file."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def _copy_tree(src: Path, dst: Path) -> None:
    """Files of src that dst lacks (artifacts never change once written; checkpoints are
    copied whole on restore)."""
    if not src.is_dir():
        return
    for path in src.rglob("*"):
        if path.is_file() and not path.name.startswith("."):
            target = dst / path.relative_to(src)
            if not target.exists() or target.stat().st_size != path.stat().st_size:
                _copy_file(path, target)
