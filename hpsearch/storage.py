"""Storage URLs -> Optuna storages (SQLite, PostgreSQL, MySQL, journal files), the artifact
folder beside them, and the studies they hold."""

from __future__ import annotations

import sqlite3
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import optuna
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from hpsearch import sqlite
from hpsearch.errors import ReportError, StorageError, first_line
from hpsearch.records import RetryStaleTrial

DEFAULT_STORAGE = "sqlite:///studies/hpsearch.db"
RDB_SCHEMES = ("sqlite", "postgresql", "mysql")
SQLITE_MAGIC = b"SQLite format 3\x00"


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


    @property
    def as_option(self) -> str:
        """The store as `--storage` takes it from any folder: a file's path absolute, a
        server's URL without its password (in the URL or its query), which then comes from
        where the server's client looks for one (PGPASSWORD, ~/.pgpass)."""
        if self.kind == "journal":
            return f"journal:{self.path}"
        if self.path is not None:
            return f"sqlite:///{self.path}"
        # URL.set(password=None) keeps the password; the URL is a named tuple.
        url = make_url(self.url).difference_update_query(["password"])._replace(password=None)
        return url.render_as_string(hide_password=False)


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
        raise StorageError(f"cannot open store {spec.display}: {first_line(err)}") from None


def _journal(path: Path):
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    lock = JournalFileOpenLock(str(path))
    return optuna.storages.JournalStorage(JournalFileBackend(str(path), lock_obj=lock))


def _rdb(spec: StorageSpec, heartbeat_interval: Optional[int], grace_period: Optional[int]):
    if spec.kind == "sqlite":
        engine_kwargs = {"connect_args": sqlite.connect_args()}
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


def close_stores() -> None:
    """Close the connections of every database store this process opened. SQLite folds a
    store's write-ahead log back into the store file when its last connection closes; a
    process that ends without closing them leaves the log beside the file, where a copy of
    the file alone would miss the latest trials. SQLite's are closed one by one as well: a
    store refused at resume is gone by now, but its pool's connections are not."""
    for storage in list(_opened):
        storage.engine.dispose()
    sqlite.close_connections()


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
        raise StorageError(f"cannot open store {spec.display}: {first_line(err)}") from None
    if not found:
        raise StorageError(f"{spec.display} holds no Optuna studies; pass --storage URL of a "
                           f"store made by `hpsearch run`")


def load_named_study(storage, name: str) -> optuna.Study:
    """The study `name` of a store, or an error that lists the studies the store holds."""
    names = optuna.get_all_study_names(storage=storage)
    if name not in names:
        held = ", ".join(sorted(names)) if names else "none"
        raise ReportError(f"no study {name!r} in this store; its studies: {held} "
                          f"(pass --study-name NAME)")
    return optuna.load_study(study_name=name, storage=storage)


def artifact_folder(spec: StorageSpec, folder: Optional[str]) -> Path:
    """The weights folder: the one named, else `artifacts/` beside the store."""
    return Path(folder).expanduser().resolve() if folder else beside_store(spec, "artifacts")


def existing_artifacts(spec: StorageSpec, folder: Optional[str]):
    """The artifact store of the weights a study saved, for reading: None when the default
    folder does not exist (a study run without weights); a folder named with --artifacts
    that does not exist is a mistake, not a study without weights."""
    path = artifact_folder(spec, folder)
    if path.is_dir():
        return open_artifacts(path)
    if folder:
        raise StorageError(f"--artifacts {folder}: no such folder; pass the folder the study "
                           f"saved its weights in (default: artifacts/ beside the store)")
    return None
