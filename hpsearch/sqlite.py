"""SQLite's tuning for Optuna's store: waits and retries on locks, write-ahead logging, one
fsync per finished trial, and closing every connection before the process ends."""

from __future__ import annotations

import logging
import os
import sqlite3
import time
import weakref

import optuna

from hpsearch.errors import StorageError

log = logging.getLogger("hpsearch")

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
        _connections.add(self)
        # In WAL mode, synchronous=NORMAL commits without an fsync (a process that is killed
        # still loses nothing; only a power cut or an OS crash can drop the last commits) and
        # never corrupts the file. `sync_finished_trials` syncs the log once a trial is told,
        # so a finished trial is as durable as under FULL, with one sync a trial instead of
        # one per commit (about 20). Rollback-journal mode keeps FULL: NORMAL can corrupt there.
        if self.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
            self.execute("PRAGMA synchronous=NORMAL")

    def cursor(self, factory=_RetryingCursor):
        return super().cursor(factory)

    def commit(self):
        return _with_lock_retries(super().commit)


def connect_args() -> dict:
    """SQLAlchemy's connect_args for a store file: SQLite waits up to LOCK_WAIT seconds for
    another writer, then hpsearch retries and counts the retry, for LOCK_PATIENCE seconds."""
    return {"timeout": LOCK_WAIT, "factory": _RetryingConnection}


_connections: weakref.WeakSet = weakref.WeakSet()  # every SQLite connection this process made


def close_connections() -> None:
    """Close every SQLite connection this process opened: SQLite folds a store's write-ahead
    log back into the store file when its last connection closes."""
    for connection in list(_connections):
        try:
            connection.close()
        except sqlite3.ProgrammingError:  # made in another thread, which still owns it
            pass


def use_wal(spec, storage=None) -> None:
    """Write-ahead logging for the store of `spec` (a storage.StorageSpec): readers (the
    dashboard, reports) work while a trial writes.
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


def sync_finished_trials(spec):
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


