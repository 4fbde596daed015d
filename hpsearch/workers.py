"""Several worker processes on one study and one store.

Workers are spawned, never forked: a fork after torch is imported can deadlock in its thread
pools. Each worker opens its own session from the run's config and options (see
session.Session.open): an equal share of the CPU threads (or its own GPU) and its own sampler
seed, and runs until the study holds its target; the trial target (study.TrialTarget) reads
the store after every trial and stops every worker, so the study overshoots by at most the
number of workers minus one. A time budget runs on one clock, the parent's, so that no
trial starts after it in any worker. Workers on one device share its images and memory (see
sharing); the parent itself holds nothing on a GPU.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import queue
import signal
import time
from dataclasses import asdict
from typing import Callable, Optional

import torch

from hpsearch import interrupts
from hpsearch.config import Config
from hpsearch.errors import OwnerGone
from hpsearch.session import RunOptions, Session, worker_device
from hpsearch.sharing import (Share, append_facts, facts_file, release_finished, shares,
                              stay_for_users, uncap, write_facts)
from hpsearch.study import RunResult, TimeBudget

log = logging.getLogger("hpsearch")

STOP_WAIT = 120.0  # seconds stopping workers may take to queue their trials again


def worker_main(cfg: Config, options: RunOptions, index: int, results,
                share: Optional[Share] = None, budget: Optional[TimeBudget] = None) -> None:
    """One worker process: its session, then its trials, on the run's clock (`budget`);
    an owner of shared images then waits for the workers that use them (see sharing)."""
    from hpsearch.console import configure_logging

    interrupts.install()  # the parent's SIGTERM and a terminal's Ctrl-C
    configure_logging(verbose=False, prefix=f"[worker {index}] ")
    try:
        try:
            session = Session.open(cfg, options, worker=index, share=share, budget=budget)
            result = session.run()
        except OwnerGone as gone:
            # Its trial, if one ran, is queued again; the images it read died with their
            # owner, and with them the reason for its share of the GPU.
            log.warning("warning: %s; this worker goes on with images of its own", gone)
            interrupts.unwatch()
            uncap(worker_device(options.device, index))
            session = Session.open(cfg, options, worker=index, budget=budget)
            result = session.run()
        write_facts(index, session.device)
    except KeyboardInterrupt:
        results.put((index, None))
        return
    finally:
        stay_for_users(share)
    results.put((index, asdict(result)))


def run_workers(cfg: Config, options: RunOptions, poll: Callable[[], None],
                budget: Optional[TimeBudget] = None) -> RunResult:
    """Spawn `options.workers` processes, call `poll()` about twice a second while they run,
    and combine their results. `budget`: the study's time budget, its clock running (see
    Session.spending); without it, each worker reads the budget from the study. Ctrl-C or
    SIGTERM reaches every worker, which queues its interrupted trial again before it exits;
    then KeyboardInterrupt is raised here."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    device = worker_device(options.device, None)
    gpus = torch.cuda.device_count() if device.type == "cuda" else 1
    sharing = shares(options.workers, device, gpus, ctx)
    procs = [ctx.Process(target=worker_main,
                         args=(cfg, options, i, results, sharing.get(i), budget),
                         name=f"hpsearch-{i}") for i in range(options.workers)]
    start = time.perf_counter()
    # Started with Ctrl-C ignored, until each has installed its own handler: a worker still
    # importing torch would otherwise die of it with a traceback. The parent stops them.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        for p in procs:
            p.start()
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        while any(p.is_alive() for p in procs):
            poll()
            release_finished(sharing, _alive(procs))
            interrupts.check()
            time.sleep(0.5)
        interrupts.check()  # asked for while the last workers were stopping
    except KeyboardInterrupt:
        _stop(procs, sharing)
        raise
    poll()
    write_parent_facts()
    return _combine(_drain(results, len(procs)), time.perf_counter() - start,
                    [p.exitcode for p in procs])


def _stop(procs: list, sharing: dict) -> None:
    """Interrupt the workers still running (a terminal's Ctrl-C reached them already; a
    SIGTERM sent to this process did not) and wait for them to queue their trials again,
    at most STOP_WAIT seconds; owners of shared images end after their users."""
    for p in procs:
        if p.is_alive():
            p.terminate()  # SIGTERM: the worker turns it into KeyboardInterrupt
    deadline = time.monotonic() + STOP_WAIT
    while any(p.is_alive() for p in procs) and time.monotonic() < deadline:
        release_finished(sharing, _alive(procs))
        time.sleep(0.1)


def write_parent_facts() -> None:
    """Whether this process, which holds nothing on a GPU, initialised CUDA and on which GPUs
    it holds a context (none, if all is well): one line in the file HPSEARCH_WORKER_FACTS
    names, if set (`make gpu-check`)."""
    if facts_file():
        append_facts({"parent_cuda_initialized": torch.cuda.is_initialized(),
                      "parent_cuda_contexts": cuda_contexts()})


def cuda_contexts() -> Optional[list]:
    """The GPUs on which this process holds a CUDA context (torch's own check, which creates
    none); None where this torch cannot tell. Initialising CUDA, as reading a GPU's compute
    capability does, creates no context."""
    has = getattr(torch._C, "_cuda_hasPrimaryContext", None)
    if has is None or not torch.cuda.is_available():
        return None if has is None else []
    return [i for i in range(torch.cuda.device_count()) if has(i)]


def _alive(procs: list) -> dict:
    return {i: p.is_alive() for i, p in enumerate(procs)}


def _drain(results, n: int) -> list:
    out = []
    for _ in range(n):
        try:
            out.append(results.get(timeout=5))
        except queue.Empty:
            break
    return out


def _combine(items: list, seconds: float, exitcodes: list) -> RunResult:
    done = [r for _, r in items if r is not None]
    crashed = [code for code in exitcodes if code not in (0, None)]
    if crashed:
        log.warning("warning: %d worker(s) ended abnormally (exit codes %s)", len(crashed),
                    crashed)
    reasons = [r["last_fail_reason"] for r in done if r["last_fail_reason"]]
    return RunResult(ran=sum(r["ran"] for r in done), seconds=seconds,
                     states=done[-1]["states"] if done else {},
                     stopped_by_failures=any(r["stopped_by_failures"] for r in done),
                     last_fail_reason=reasons[-1] if reasons else None,
                     lock_retries=sum(r["lock_retries"] for r in done))
