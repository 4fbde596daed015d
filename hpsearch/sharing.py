"""Workers on one device: one copy of the images, and a fair share of the device's memory.

With `--workers N` the workers that train on the same device form a group: on CUDA, worker i
trains on GPU i modulo the GPU count (see session.worker_device); on the CPU all of them are
one group. The group's first worker, its owner, loads the images and hands them to the
others: on a GPU as handles to the same device memory (CUDA IPC), on the CPU as shared
memory. Two workers on one T4 hold the images once, not once each. Images that do not fit
the device's share and stay in pinned host memory (data.placement) are not handed on: each
worker keeps its own, since shared memory cannot stay page-locked.

Memory handed out this way lives in the owner: it must outlive its users' work. At its end
an owner waits until the parent process sets `release`, which it does once every other
worker of the group has stopped, however they stopped.

On a GPU each worker of a group also caps its memory allocator (a per-process memory
fraction) at an equal share of what the images and the workers' CUDA contexts leave: a trial
that needs more than its share runs out of memory alone (that trial fails, the next one
runs) instead of whichever worker allocates second.
"""

from __future__ import annotations

import queue
from dataclasses import dataclass
from typing import Any, Optional

import torch

from hpsearch import interrupts
from hpsearch.data import Dataset, cap_device_memory

# A CUDA context with the kernels a trial loads: the memory each further worker on a GPU
# takes before it allocates anything (an estimate; `make gpu-check` prints the real one).
CONTEXT_BYTES = 512 * 2**20

_handed = False  # this process, an owner, has handed its images on


def groups(workers: int, device: torch.device, gpu_count: int = 1) -> list:
    """The workers (by index) that train on one device, a list per device. `device` is the
    run's: cuda without an index spreads the workers over `gpu_count` GPUs; mps memory
    cannot be handed between processes, so there every worker is a group of its own."""
    if device.type == "mps":
        return [[i] for i in range(workers)]
    if device.type == "cuda" and device.index is None:
        count = max(1, min(gpu_count, workers))
        return [list(range(g, workers, count)) for g in range(count)]
    return [list(range(workers))]


@dataclass(frozen=True)
class Share:
    """One worker's place in its group. `handoff` (a multiprocessing queue) carries the
    owner's (Dataset or None, bytes per worker) to each other member once; None means "load
    your own". `release` (a multiprocessing event) lets the owner end."""

    index: int
    members: tuple  # the group's workers; the first is the owner
    handoff: Any
    release: Any

    @property
    def owner(self) -> int:
        return self.members[0]

    @property
    def is_owner(self) -> bool:
        return self.index == self.owner

    @property
    def users(self) -> int:
        return len(self.members) - 1


def shares(workers: int, device: torch.device, gpu_count: int, ctx) -> dict:
    """{worker: Share} for the workers that share a device with another; `ctx` is the
    multiprocessing context the workers are spawned from."""
    out = {}
    for members in groups(workers, device, gpu_count):
        if len(members) > 1:
            handoff, release = ctx.Queue(), ctx.Event()
            handoff.cancel_join_thread()  # a last fallback nobody read must not hold the parent
            for i in members:
                out[i] = Share(i, tuple(members), handoff, release)
    return out


def hand_over(share: Share, data: Optional[Dataset], device: torch.device) -> int:
    """The owner's side: give each user `data` (None: load your own) and the bytes of device
    memory each worker's trials may take (0: no cap). Returns those bytes."""
    global _handed
    per_worker = worker_bytes(device, len(share.members)) if data is not None else 0
    shared = data if data is not None and not data.on_host else None
    if shared is not None:
        for t in (shared.x_train, shared.y_train, shared.x_val, shared.y_val, shared.x_test,
                  shared.y_test):
            if t.device.type == "cpu":
                t.share_memory_()  # here, not in the queue's thread while training reads it
    for _ in range(share.users):
        share.handoff.put((shared, per_worker))
    _handed = shared is not None
    return per_worker


def receive(share: Share) -> tuple:
    """A user's side: (the owner's Dataset or None, bytes per worker), once the owner has
    loaded it. A stop asked for meanwhile is acted on here."""
    while True:
        interrupts.check()
        try:
            return share.handoff.get(timeout=0.5)
        except queue.Empty:
            continue


def worker_bytes(device: torch.device, members: int) -> int:
    """Device memory each of `members` workers' trials may take: what is free now (the
    owner's context and images already taken) less the other workers' contexts, split
    equally. 0 off CUDA: nothing to cap."""
    if device.type != "cuda":
        return 0
    free = torch.cuda.mem_get_info(device)[0]
    return max(0, (free - (members - 1) * CONTEXT_BYTES) // members)


def cap(device: torch.device, per_worker: int) -> Optional[float]:
    """Cap this process's allocator on `device` at what it holds now (an owner's images)
    plus `per_worker` bytes. Returns the fraction set, or None (off CUDA, or no cap)."""
    if device.type != "cuda" or per_worker <= 0:
        return None
    total = torch.cuda.mem_get_info(device)[1]
    fraction = min(1.0, (torch.cuda.memory_reserved(device) + per_worker) / total)
    torch.cuda.set_per_process_memory_fraction(fraction, device)
    cap_device_memory(device, int(fraction * total))
    return fraction


def stay_for_users(share: Optional[Share]) -> None:
    """An owner's last step. One that handed its images on waits until the parent says its
    users have stopped (they may still be reading that memory, however long their last
    trial), or until the parent is gone; one that never got as far as handing anything on
    (its session failed first) tells its users to load their own, and ends."""
    import multiprocessing

    if share is None or not share.is_owner:
        return
    if not _handed:
        for _ in range(share.users):
            share.handoff.put((None, 0))
        return
    parent = multiprocessing.parent_process()
    while not share.release.wait(timeout=0.5):
        if parent is not None and not parent.is_alive():
            return


def release_finished(all_shares: dict, alive: dict) -> None:
    """The parent's side, called while the workers run and while they stop (`alive`:
    {worker: bool}): let an owner end once its users have all stopped; and when an owner
    died before them, tell its users still waiting to load their own images."""
    for members, share in {s.members: s for s in all_shares.values()}.items():
        owner, users = members[0], members[1:]
        if share.release.is_set():
            continue
        if not any(alive[i] for i in users):
            share.release.set()
        elif not alive[owner]:
            for _ in users:  # a user that already has the images never reads these
                share.handoff.put((None, 0))
            share.release.set()  # marks the fallback as sent
