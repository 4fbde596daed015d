"""Several worker processes on one study and one store.

Workers are spawned, never forked: a fork after torch is imported can deadlock in its thread
pools. Each worker rebuilds what it needs from a small picklable plan, takes an equal share of
the CPU threads (or its own GPU) and its own sampler seed, and runs until the study holds its
target; the trial target (study.TrialTarget) reads the store after every trial and stops every
worker, so the study overshoots by at most the number of workers minus one.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import queue
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

from hpsearch.study import RunResult

log = logging.getLogger("hpsearch")


@dataclass(frozen=True)
class Plan:
    """What a worker needs to rebuild the run: the study file and overrides, not objects."""

    config: Optional[str]
    overrides: tuple
    flags: dict  # typed values of dedicated flags, as load_config takes them
    storage: str
    device: str
    artifacts: str
    checkpoints: str
    timeout: Optional[float]
    workers: int


def worker_device(name: str, index: int):
    """`cuda` without an index puts worker i on GPU i modulo the visible count."""
    import torch

    from hpsearch.train import resolve_device

    device = resolve_device(name)
    if device.type == "cuda" and device.index is None and name in ("auto", "cuda"):
        device = torch.device("cuda", index % torch.cuda.device_count())
    return device


def worker_main(plan: Plan, index: int, results) -> None:
    """One worker process: build config, data, storage, study and objective, then run."""
    import optuna

    from hpsearch.config import load_config
    from hpsearch.data import load_dataset
    from hpsearch.objective import make_objective
    from hpsearch.storage import (Backup, open_artifacts, open_storage, parse_storage,
                                  sync_finished_trials)
    from hpsearch.study import (handle_interrupts, hide_ctrl_c_tracebacks, open_study, run,
                                settings_record)
    from hpsearch.train import configure_threads

    handle_interrupts()  # the parent's SIGTERM and a terminal's Ctrl-C
    logging.basicConfig(format=f"[worker {index}] %(message)s", level=logging.INFO)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    hide_ctrl_c_tracebacks()
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    try:
        cfg = load_config(plan.config, list(plan.overrides), plan.flags)
        device = worker_device(plan.device, index)
        if device.type == "cpu":
            configure_threads(plan.workers)
        data = load_dataset(cfg.data, cfg.study.seed, device)
        spec = parse_storage(plan.storage)
        storage = open_storage(spec, heartbeat_interval=cfg.study.heartbeat_interval,
                               grace_period=cfg.study.grace_period)
        study = open_study(storage, cfg, settings_record(cfg, data), worker=index)
        artifacts, checkpoints = Path(plan.artifacts), Path(plan.checkpoints)
        backup = Backup.of(cfg.study, spec, artifacts, checkpoints)
        objective = make_objective(cfg, data, device, open_artifacts(artifacts), checkpoints,
                                   backup)
        result = run(study, objective, cfg.study.trials, timeout=plan.timeout,
                     callbacks=(sync_finished_trials(spec),))
    except KeyboardInterrupt:
        results.put((index, None))
        return
    results.put((index, asdict(result)))


def run_workers(plan: Plan, poll: Callable[[], None]) -> RunResult:
    """Spawn `plan.workers` processes, call `poll()` about twice a second while they run, and
    combine their results. Ctrl-C or SIGTERM reaches every worker, which queues its
    interrupted trial again before it exits; then KeyboardInterrupt is raised here."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=worker_main, args=(plan, i, results), name=f"hpsearch-{i}")
             for i in range(plan.workers)]
    start = time.perf_counter()
    for p in procs:
        p.start()
    try:
        while any(p.is_alive() for p in procs):
            poll()
            time.sleep(0.5)
    except KeyboardInterrupt:
        _stop(procs)
        raise
    poll()
    return _combine(_drain(results, len(procs)), time.perf_counter() - start,
                    [p.exitcode for p in procs])


def _stop(procs: list) -> None:
    """Interrupt the workers still running (a terminal's Ctrl-C reached them already; a
    SIGTERM sent to this process did not) and wait for them to queue their trials again."""
    for p in procs:
        if p.is_alive():
            p.terminate()  # SIGTERM: the worker turns it into KeyboardInterrupt
    for p in procs:
        p.join(timeout=120)


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
