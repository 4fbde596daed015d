"""Backups of a local SQLite store to another folder (Google Drive, say), the way back on a
fresh machine, and the check that keeps SQLite off network and FUSE drives."""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Optional

from hpsearch.errors import StorageError
from hpsearch.storage import StorageSpec

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
