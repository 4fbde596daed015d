"""Who runs a trial, recorded first thing in the trial, so a later start can prove it dead."""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from typing import Optional

import psutil

@lru_cache(maxsize=1)
def boot_id() -> str:
    """Changes at every reboot: Linux says so directly; elsewhere the boot time stands in."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return f"boot-{psutil.boot_time():.0f}"


def process_start(pid: int) -> Optional[float]:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def owner_record(trial_number: int, device: Optional[str] = None,
                 precision: Optional[str] = None, tf32: Optional[str] = None) -> dict:
    """The process running a trial, the device it trains on and in which precision (`auto`
    differs by device and processor), with TF32 on CUDA (see precision.tf32_state)."""
    pid = os.getpid()
    record = {"host": socket.gethostname(), "boot_id": boot_id(), "pid_ns": pid_namespace(),
              "pid": pid, "started": own_start(pid), "trial": trial_number, "device": device,
              "precision": precision}
    if tf32 is not None:
        record["tf32"] = tf32
    return record


@lru_cache(maxsize=4)
def own_start(pid: int) -> Optional[float]:
    """This process's start time, read once: reading it with psutil was a visible part of
    every trial's bookkeeping. Keyed by pid, so a forked worker reads its own."""
    return process_start(pid)


@lru_cache(maxsize=1)
def pid_namespace() -> Optional[str]:
    """Containers on one host share its name and boot id but not its process ids: a pid is
    only evidence inside the namespace it was recorded in."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def is_mine(owner: object) -> bool:
    """True when the record names this very process."""
    if not isinstance(owner, dict):
        return False
    me = owner_record(owner.get("trial"))
    return all(owner.get(k) == me[k] for k in ("host", "boot_id", "pid_ns", "pid", "started"))


def is_provably_dead(owner: object, trial_number: int) -> bool:
    """True only when the owner ran on this host and is gone: the machine rebooted, or its pid
    is absent or now belongs to a process started at another time. Anything else (another
    host, a record of another trial copied into a retry, no record) proves nothing."""
    if not isinstance(owner, dict) or owner.get("trial") != trial_number:
        return False
    if owner.get("host") != socket.gethostname():
        return False
    if owner.get("boot_id") != boot_id():
        return True
    if owner.get("pid_ns") != pid_namespace():
        return False  # another container of this host: its pids mean nothing here
    pid, started = owner.get("pid"), owner.get("started")
    if not isinstance(pid, int):
        return False
    now = process_start(pid)
    if now is None:
        return not psutil.pid_exists(pid)  # AccessDenied means it exists
    return started is not None and abs(now - started) > 1.0
