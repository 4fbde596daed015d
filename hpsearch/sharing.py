"""Workers on one device: one copy of the images, and a fair share of the device's memory.

With `--workers N` the workers that train on the same device form a group: on CUDA, worker i
trains on GPU i modulo the GPU count (see session.worker_device); on the CPU all of them are
one group. The group's first worker, its owner, loads the images and hands them to the
others: on a GPU as handles to the same device memory (CUDA IPC), in host memory (the CPU,
or images too large for the GPU) as shared memory. Two workers on one T4 hold the images
once, not once each.

Memory handed out this way lives in the owner: it must outlive its users' work. At its end
an owner waits until the parent process sets `release`, which it does once every other
worker of the group has stopped, however they stopped. An owner that dies first (killed,
out of host memory) takes its device memory with it (shared host memory stays while a user
maps it): the parent sets `gone`, and each user of images on the GPU stops its trial at the
next batch (OwnerGone: the trial fails and is queued again), loads its own images and goes
on. Images that do not fit the shared-memory mount are not handed on: each loads its own.

On a GPU the memory is shared out from measured facts. Users create no CUDA context until
the owner has loaded the images and measured what is free; then, one user at a time, a user
creates its context and runs one small training step (cuDNN's and cuBLAS's handles), and the
owner reads how much free memory that took. Once every context exists, each worker caps its
allocator (a per-process memory fraction) at an equal share of what is left, less
CONTEXT_GROWTH each: a trial that needs more than its share runs out of memory alone (that
trial fails, the next one runs) instead of whichever worker allocates second.
"""

from __future__ import annotations

import json
import os
import queue
import time
from dataclasses import dataclass
from typing import Any, Optional

import torch

from hpsearch import interrupts
from hpsearch.data import Dataset, cap_device_memory, shm_room
from hpsearch.errors import OwnerGone

# What a worker's CUDA context may still grow by after its first step, outside its capped
# allocator: kernels loaded lazily on first use by the layer shapes and precisions of later
# trials. An estimate (the context itself is measured): a few hundred kernels at up to a
# megabyte of code each, with room to spare; `make gpu-check` prints the contexts measured.
# cuDNN's and cuBLAS's handles exist after the first step (in the measured context); their
# workspaces come from torch's allocator, inside the cap, and one that does not fit fails
# its trial alone like any allocation.
CONTEXT_GROWTH = 256 * 2**20

ACK_WAIT = 60.0  # seconds an owner waits for a user's context before going on without it

_handed = False  # this process, an owner, has handed its images on
FACTS: dict = {}  # what this worker measured of its share (see write_facts)


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
    """One worker's place in its group, and the group's channels (multiprocessing queues and
    flags): `handoff` carries the owner's images (a Handed, or None: "load your own") to
    each user once; `acks` a user's reserved bytes back once its context exists; `caps` the
    bytes each worker's trials may take (0: no cap) with the contexts measured; `release`
    lets the owner end; `gone` says the owner died before its users (both Flags)."""

    index: int
    members: tuple  # the group's workers; the first is the owner
    handoff: Any
    acks: Any
    caps: Any
    release: Any
    gone: Any

    @property
    def owner(self) -> int:
        return self.members[0]

    @property
    def is_owner(self) -> bool:
        return self.index == self.owner

    @property
    def users(self) -> int:
        return len(self.members) - 1


class Flag:
    """A flag in shared memory that any process of the run may set and read, with no lock: a
    process killed while it waited on a multiprocessing Event would leave the next set()
    waiting for it for ever, and an owner may be killed while it waits to be released."""

    def __init__(self, ctx):
        self._value = ctx.RawValue("b", 0)

    def set(self) -> None:
        self._value.value = 1

    def is_set(self) -> bool:
        return bool(self._value.value)


@dataclass(frozen=True)
class Handed:
    """What an owner hands a user: its images and its process id (watched while training)."""

    data: Dataset
    owner_pid: int
    turn: int = 0  # the users served before this one


def shares(workers: int, device: torch.device, gpu_count: int, ctx) -> dict:
    """{worker: Share} for the workers that share a device with another; `ctx` is the
    multiprocessing context the workers are spawned from."""
    out = {}
    for members in groups(workers, device, gpu_count):
        if len(members) > 1:
            handoff, acks, caps = ctx.Queue(), ctx.Queue(), ctx.Queue()
            for q in (handoff, acks, caps):
                q.cancel_join_thread()  # a last fallback nobody read must not hold a process
            release, gone = Flag(ctx), Flag(ctx)
            for i in members:
                out[i] = Share(i, tuple(members), handoff, acks, caps, release, gone)
    return out


def hand_over(share: Share, data: Optional[Dataset], device: torch.device,
              dtype: Optional[torch.dtype] = None) -> int:
    """The owner's side: give each user `data` (None: load your own) and, on a GPU, share
    out its memory (see the module's docstring; `dtype`: what the trials compute in, for the
    first step). Returns the bytes each worker's trials may take (0: no cap). Images that
    cannot be shared (too large for the shared-memory mount) are not handed on; a handshake
    that fails tells the users not yet served to load their own, and those served to take
    no cap, before the error goes on."""
    global _handed
    if data is None or not shareable(data):
        for _ in range(share.users):
            share.handoff.put(None)
        return 0
    for t in (data.x_train, data.y_train, data.x_val, data.y_val, data.x_test, data.y_test):
        if t.device.type == "cpu":
            t.share_memory_()  # a no-op for what was loaded shared; here, not in a queue thread
    if facts_file():
        FACTS.update(owner=True, checksum=checksum(data))
    if device.type != "cuda":
        for _ in range(share.users):
            share.handoff.put(Handed(data, os.getpid()))
        _handed = True
        return 0
    served = 0
    try:
        first_step(device, dtype)
        free, total = torch.cuda.mem_get_info(device)
        # Its own context, as an upper bound: other processes' memory on the GPU counts too.
        FACTS["context_bytes"] = max(0, total - free - torch.cuda.memory_reserved(device))
        contexts: list = []
        for turn in range(share.users):
            before = torch.cuda.mem_get_info(device)[0]
            share.handoff.put(Handed(data, os.getpid(), turn))
            served, _handed = served + 1, True
            reserved = wait_for_ack(share, turn)
            contexts.append(None if reserved is None else  # a user that never answered
                            max(0, before - torch.cuda.mem_get_info(device)[0] - reserved))
        FACTS["contexts"] = contexts
        per_worker = worker_bytes(torch.cuda.mem_get_info(device)[0], len(share.members))
    except BaseException:
        for _ in range(share.users - served):
            share.handoff.put(None)
        for _ in range(served):
            share.caps.put((0, []))
        raise
    for _ in range(share.users):
        share.caps.put((per_worker, contexts))
    return per_worker


def shareable(data: Dataset) -> bool:
    """Whether the images that live in host memory are in shared memory, or fit the
    shared-memory mount (see data.shm_room)."""
    host = [t for t in (data.x_train, data.x_val, data.x_test)
            if t.device.type == "cpu" and not t.is_shared()]
    return shm_room(sum(t.numel() * t.element_size() for t in host))


def worker_bytes(free: int, members: int) -> int:
    """Device memory each of `members` workers' trials may take, `free` bytes being free once
    every worker's context exists: an equal share, less CONTEXT_GROWTH each. 0: too little
    to share out (nothing is capped)."""
    return max(0, (free - members * CONTEXT_GROWTH) // members)


def wait_for_ack(share: Share, turn: int) -> Optional[int]:
    """The reserved bytes of the user served at `turn` once its context exists, or None if
    none came in ACK_WAIT (an answer to an earlier turn, come late, is dropped)."""
    deadline = time.monotonic() + ACK_WAIT
    while time.monotonic() < deadline:
        interrupts.check()
        try:
            answered, reserved = share.acks.get(timeout=0.5)
        except queue.Empty:
            continue
        if answered == turn:
            return reserved
    return None


def receive(share: Share, device: torch.device, dtype: Optional[torch.dtype] = None) -> tuple:
    """A user's side: (the owner's Dataset or None, bytes its trials may take), once the owner
    has loaded it. On a GPU the user's context is created here, after the owner measured the
    free memory, and its first step run before it answers. A stop asked for meanwhile is
    acted on here. Images on the owner's GPU die with it: from now on they are watched (see
    watch_owner), and an owner that died before the caps came means "load your own"."""
    try:
        handed = _get(share.handoff)
    except KeyboardInterrupt:
        raise
    except Exception:  # handles of an owner that died as they were sent: none to open
        handed = None
    if handed is None:
        return None, 0
    if device.type == "cuda":
        torch.cuda.set_device(device)
        first_step(device, dtype)
        share.acks.put((handed.turn, int(torch.cuda.memory_reserved(device))))
        per_worker, contexts = _get(share.caps)
        if share.gone.is_set():
            return None, 0
        FACTS["context_bytes"] = contexts[handed.turn] if handed.turn < len(contexts) else None
    else:
        per_worker = 0
    if facts_file():
        FACTS.update(owner=False, checksum=checksum(handed.data))
    if dies_with_owner(handed.data):
        interrupts.watch(watch_owner(share, handed.owner_pid))
    return handed.data, per_worker


def dies_with_owner(data: Dataset) -> bool:
    """Whether handed images end with their owner: device memory does (CUDA IPC), shared host
    memory stays while any process maps it."""
    return data.x_train.is_cuda


def _get(q) -> Any:
    while True:
        interrupts.check()
        try:
            return q.get(timeout=0.5)
        except queue.Empty:
            continue


def watch_owner(share: Share, pid: int):
    """A check for every safe point of a user (see interrupts.watch): OwnerGone once the
    parent says the owner died, or its process is gone (the parent too)."""

    def check() -> None:
        if share.gone.is_set() or not _alive(pid):
            raise OwnerGone(f"worker {share.owner}, which held the images this worker trained "
                            f"from, ended")

    return check


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, another user's
    return True


def first_step(device: torch.device, dtype: Optional[torch.dtype]) -> None:
    """One training step of a small network on `device`: the context, cuDNN's and cuBLAS's
    handles and the common kernels exist afterwards, as after a trial's first step."""
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8),
                              torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 64, 10))
    net = net.to(device).to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 8, 8, device=device).contiguous(memory_format=torch.channels_last)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)
    with autocast:
        loss = net(x).float().square().mean()
    loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    del net, x, loss


def cap(device: torch.device, per_worker: int) -> Optional[float]:
    """Cap this process's allocator on `device` at what it holds now (an owner's images)
    plus `per_worker` bytes. Returns the fraction set, or None (off CUDA, or no cap)."""
    if device.type != "cuda" or per_worker <= 0:
        return None
    total = torch.cuda.mem_get_info(device)[1]
    fraction = min(1.0, (torch.cuda.memory_reserved(device) + per_worker) / total)
    torch.cuda.set_per_process_memory_fraction(fraction, device)
    cap_device_memory(device, int(fraction * total))
    FACTS["fraction"] = fraction
    return fraction


def uncap(device: torch.device) -> None:
    """Lift this process's cap on `device` (see cap): the owner whose images it was sized
    around is gone."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(1.0, device)
        cap_device_memory(device, None)
        FACTS["fraction"] = None


def checksum(data: Dataset) -> int:
    """A sum over the training images' bytes: equal in workers that see the same copy."""
    return int(data.x_train.sum(dtype=torch.int64))


def facts_file() -> Optional[str]:
    """The file HPSEARCH_WORKER_FACTS names, where the run's processes say what they measured
    of their shares (`make gpu-check` sets it); None: nothing is measured or written."""
    return os.environ.get("HPSEARCH_WORKER_FACTS") or None


def append_facts(facts: dict) -> None:
    """`facts` as one JSON line of the facts file, if there is one."""
    path = facts_file()
    if path is None:
        return
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(facts) + "\n")
    except OSError:  # a diagnostic: the run it describes has finished either way
        pass


def write_facts(index: int, device: torch.device) -> None:
    """What this worker measured of its share, into the facts file (see facts_file)."""
    if FACTS:
        reserved = torch.cuda.max_memory_reserved(device) if device.type == "cuda" else 0
        append_facts({"worker": index, "reserved_bytes": reserved, "fraction": None,
                      "context_bytes": None, **FACTS})


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
            share.handoff.put(None)
        return
    parent = multiprocessing.parent_process()
    while not share.release.is_set():
        if parent is not None and not parent.is_alive():
            return
        time.sleep(0.5)


def release_finished(all_shares: dict, alive: dict) -> None:
    """The parent's side, called while the workers run and while they stop (`alive`:
    {worker: bool}): let an owner end once its users have all stopped; and when an owner
    died before them, say so to the users training from its images, and tell those still
    waiting to load their own."""
    for members, share in {s.members: s for s in all_shares.values()}.items():
        owner, users = members[0], members[1:]
        if share.release.is_set():
            continue
        if not any(alive[i] for i in users):
            share.release.set()
        elif not alive[owner]:
            share.gone.set()
            for _ in users:  # a user that already has what it waits for never reads these
                share.handoff.put(None)
                share.caps.put((0, []))
            share.release.set()  # marks the fallback as sent
