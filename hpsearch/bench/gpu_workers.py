"""The rows of `make gpu-check` that time no training: the machine, the fused optimizer
against torch.optim's, an overflow inside the net, and studies run as processes (killed and
resumed in another precision, two workers sharing one GPU, a capped worker's out-of-memory
trial); with the memory cap and the readers (checkpoints, worker facts) they need. Run one
as `python -m hpsearch.bench.gpu_rows ROW ...` (see gpu_rows)."""

from __future__ import annotations

import json
import math
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from hpsearch import train
from hpsearch.bench.gpu_check import driver_version, gpu_processes

STUDIES = Path(__file__).resolve().parents[1] / "studies"
# What each worker of a group writes to $HPSEARCH_WORKER_FACTS (see hpsearch.sharing); the
# run's parent writes one line of its own, with PARENT_KEY.
FACT_KEYS = ("worker", "owner", "context_bytes", "reserved_bytes", "fraction", "checksum")
PARENT_KEY = "parent_cuda_initialized"
CIFAR_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                 "ship", "truck")


# --------------------------------------------------------------------------------- helpers

def error_text(err: BaseException) -> str:
    """An error as one short line: its type and its first line."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}"[:240]


def run_args(store: Path, device: torch.device, *extra) -> list:
    return [sys.executable, "-m", "hpsearch.cli", "run", "--quiet", "--device", str(device),
            "--storage", f"sqlite:///{store}", *map(str, extra)]


def folder(work: Optional[Path], name: str) -> Path:
    root = Path(work) if work else Path(tempfile.mkdtemp(prefix="hpsearch-gpu-check-"))
    path = root / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def read_checkpoint(path: Path) -> dict:
    """What a trial checkpoint says about where it goes on: its epoch, the precision and
    device it was written in, and its gradient scaler's scale (None: no scaler state, as
    bf16 and fp32 write)."""
    record = torch.load(path, map_location="cpu", weights_only=True)
    scaler = record.get("scaler") or {}
    return {"epoch": record.get("epoch"), "precision": record.get("precision"),
            "device": record.get("device"), "scale": scaler.get("scale")}


def stored_trials(store: Path) -> list:
    import optuna

    url = f"sqlite:///{store}"
    name = optuna.get_all_study_names(url)[0]
    return optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)


def val_curve(trial) -> list:
    return list((trial.user_attrs.get("history") or {}).get("val_acc") or [])


def wait_for(pattern: str, under: Path, proc: subprocess.Popen, seconds: float):
    """The first file matching `pattern` under `under` once one exists, or None when `proc`
    ends or `seconds` pass first."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        found = next(under.rglob(pattern), None)
        if found is not None:
            return found
        time.sleep(0.01)
    return None


# -------------------------------------------------------------------------------- the rows

def header(device: torch.device, scale: float = 1.0, work=None) -> dict:
    """The machine: its GPU (or CPU), driver, torch, CUDA and cuDNN, and the TF32 switches
    before and after hpsearch sets them for fp32."""
    from hpsearch.precision import cpu_vendor, set_tf32

    cuda = device.type == "cuda"
    before = [torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32]
    set_tf32("fp32")
    out = {"torch": torch.__version__, "cuda": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version() if cuda else None,
           "driver": driver_version(), "tf32_default": before,
           "tf32_hpsearch": [torch.backends.cuda.matmul.allow_tf32,
                             torch.backends.cudnn.allow_tf32]}
    if cuda:
        props = torch.cuda.get_device_properties(device)
        out.update(name=props.name, capability=f"{props.major}.{props.minor}",
                   memory_bytes=props.total_memory)
    else:
        import psutil

        out.update(name=f"CPU ({cpu_vendor() or 'unknown vendor'})",
                   capability=torch.backends.cpu.get_cpu_capability(),
                   memory_bytes=psutil.virtual_memory().total)
    return out


def optim_row(device: torch.device, scale: float = 1.0, work=None, steps: int = 6) -> dict:
    """hpsearch's FusedOptimizer against torch.optim's fused Adam, AdamW and SGD (Nesterov
    momentum) on twin CNNs on the device, step for step; and under a gradient scaler with an
    infinite gradient at the second step (skipped by both, the scale halved alike). Passes
    when every weight agrees to rtol 1e-6, atol 1e-7, as tests/test_optim.py asks."""
    import copy

    from hpsearch.model import build_cnn
    from hpsearch.optim import FusedOptimizer

    reference = {
        "adam": lambda ps, **kw: torch.optim.Adam(ps, fused=True, **kw),
        "adamw": lambda ps, **kw: torch.optim.AdamW(ps, fused=True, **kw),
        "sgd": lambda ps, **kw: torch.optim.SGD(ps, momentum=0.9, nesterov=True, fused=True,
                                                **kw)}
    gen = torch.Generator().manual_seed(1)
    data = [(torch.randn(16, 3, 16, 16, generator=gen), torch.randint(0, 10, (16,), generator=gen))
            for _ in range(steps)]
    data = [(x.to(device, memory_format=torch.channels_last), y.to(device)) for x, y in data]
    # cuDNN's default backward kernels may sum in any order: the twins' gradients would differ
    # by rounding, and the optimizers be blamed for it.
    exact, torch.backends.cudnn.deterministic = torch.backends.cudnn.deterministic, True
    out = []
    for kind, scaled_run in [(k, False) for k in reference] + [("adam", True), ("sgd", True)]:
        torch.manual_seed(0)
        ours = build_cnn(in_channels=3, num_classes=10, image_size=16, depth=2, width=16)
        ours.to(device, memory_format=torch.channels_last)
        theirs = copy.deepcopy(ours)
        optimizers = (FusedOptimizer(ours.parameters(), kind, lr=0.01, weight_decay=1e-3),
                      reference[kind](theirs.parameters(), lr=0.01, weight_decay=1e-3))
        scales = []
        for model, optimizer in zip((ours, theirs), optimizers):
            scaler = torch.amp.GradScaler(device.type, init_scale=1024.0, enabled=scaled_run)
            for i, (xb, yb) in enumerate(data):
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(nn.functional.cross_entropy(model(xb), yb)).backward()
                if scaled_run and i == 1:
                    grad = next(model.parameters()).grad
                    grad[(0,) * grad.dim()] = float("inf")
                scaler.step(optimizer)
                scaler.update()
            scales.append(scaler.get_scale() if scaled_run else None)
        pairs = [(a.detach(), b.detach()) for a, b in zip(ours.parameters(),
                                                           theirs.parameters())]
        gap = max(float((a - b).abs().max()) for a, b in pairs)
        close = all(torch.allclose(a, b, rtol=1e-6, atol=1e-7) for a, b in pairs)
        out.append({"kind": kind, "scaler": scaled_run, "max_diff": gap,
                    "passed": close and scales[0] == scales[1], "scales": scales})
    torch.backends.cudnn.deterministic = exact
    return {"steps": steps, "checks": out, "passed": all(c["passed"] for c in out)}


def poison_row(device: torch.device, scale: float = 1.0, work=None, precision: str = "fp16",
               epochs: int = 2) -> dict:
    """Digits (16 px) trained by train.fit in `precision` (fp16: autocast and the gradient
    scaler) with an inner convolution's output multiplied by infinity in the third training
    step. The trial must end as diverged or train on with finite batch-norm statistics;
    completing with NaN statistics is the failure this row looks for."""
    from hpsearch.config import DataConfig
    from hpsearch.data import load_dataset
    from hpsearch.model import build_cnn

    data = load_dataset(DataConfig(image_size=16), 0, device)
    torch.manual_seed(7)
    model = build_cnn(in_channels=1, num_classes=10, image_size=16, depth=2, width=16)
    inner = [m for m in model if isinstance(m, nn.Conv2d)][1]  # its batch norm follows
    calls = {"training": 0, "poisoned": 0}

    def hook(module, inputs, output):
        if not module.training:
            return None
        calls["training"] += 1
        if calls["training"] == 3:
            calls["poisoned"] += 1
            return output * float("inf")
        return None

    inner.register_forward_hook(hook)
    settings = train.FitSettings(epochs=epochs, batch_size=64, lr=0.01, seed=3,
                                 precision=precision)
    out = {"precision": train.choose_precision(device, precision).name, "reason": None}
    try:
        history = train.fit(model, data, settings, device)
    except train.Diverged as err:
        out.update(outcome="diverged", reason=str(err))
        history = None
    norms = [b for m in model.modules() if isinstance(m, nn.BatchNorm2d)
             for b in (m.running_mean, m.running_var)]
    out["bn_finite"] = bool(all(torch.isfinite(b).all() for b in norms))
    out["poisoned"] = calls["poisoned"]
    if history is not None:
        finite = all(math.isfinite(v) for v in history.val_loss)
        out.update(outcome="trained on" if out["bn_finite"] and finite
                   else "completed with NaN statistics",
                   val_loss=history.val_loss, val_acc=history.val_acc[-1])
    out["ok"] = out["poisoned"] == 1 and out["outcome"] != "completed with NaN statistics"
    return out


def cap_below(net, data, x, y, precision, start: int, device: torch.device) -> int:
    """Caps this process's allocator so that a batch of `start` images cannot fit, nor half
    of it: what it holds now, plus what any batch needs (cuDNN's workspace), plus a third of
    what `start` images need, measured from batches of 64 and 128. Returns the cap."""
    peaks = []
    for n in (64, 128):
        train.release_device_memory()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        train.evaluate(net, data, x[:n], y[:n], precision, n)
        peaks.append(torch.cuda.max_memory_allocated(device) - base)
    per_image = max(1, (peaks[1] - peaks[0]) // 64)
    fixed = max(0, peaks[0] - 64 * per_image)
    train.release_device_memory()
    total = torch.cuda.mem_get_info(device)[1]
    limit = torch.cuda.memory_reserved(device) + fixed + per_image * start // 3
    torch.cuda.set_per_process_memory_fraction(min(1.0, limit / total), device)
    return int(limit)


def resume_row(device: torch.device, scale: float = 1.0, work=None, first: str = "fp16",
               then: str = "fp16", epochs: int = 8, size: int = 32) -> dict:
    """One trial of the default study (digits at `size` pixels) run by `hpsearch run` in
    `first`, killed with SIGKILL once its checkpoint exists, then run again in `then`; beside
    it the same trial (same study seed: same parameters and trial seed) uninterrupted in
    `first`. Reports the epoch the retry went on from, the scaler's scale in the checkpoint
    and both validation-accuracy curves."""
    killed_dir, reference_dir = folder(work, "killed"), folder(work, "reference")
    base = ["--trials", 1, "--epochs", epochs, "--set", f"data.image_size={size}"]

    def command(where: Path, precision: str) -> list:
        return run_args(where / "s.db", device, *base, "--set", f"train.precision='{precision}'")

    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    reference = subprocess.Popen(command(reference_dir, first), **quiet)
    killed = subprocess.Popen(command(killed_dir, first), **quiet)
    try:
        seen = wait_for("trial-*.pt", killed_dir, killed, 120)
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        left = next(killed_dir.rglob("trial-*.pt"), None)
        if seen is None or left is None:
            raise RuntimeError(f"no checkpoint left when the run was killed (exit code "
                               f"{killed.returncode}): nothing to resume")
        saved = read_checkpoint(left)
        rerun = subprocess.run(command(killed_dir, then), capture_output=True, text=True,
                               timeout=150)
        reference.wait(timeout=150)
    finally:
        for proc in (reference, killed):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    retries = [t for t in stored_trials(killed_dir / "s.db") if "resumed_from_epoch" in
               t.user_attrs]
    uninterrupted = stored_trials(reference_dir / "s.db")[0]
    retry = retries[0] if retries else None
    resumed, whole = (val_curve(retry) if retry else []), val_curve(uninterrupted)
    gap = max((abs(a - b) for a, b in zip(resumed, whole)), default=None)
    out = {"first": first, "then": then, "checkpoint": saved,
           "carried_scale": saved["scale"] if then == "fp16" else None,
           "resumed_from": retry.user_attrs["resumed_from_epoch"] if retry else None,
           "retry_state": retry.state.name if retry else None,
           "same_params": bool(retry) and retry.params == uninterrupted.params,
           "resumed_curve": resumed, "reference_curve": whole, "max_gap": gap,
           "said_so": "resumes from epoch" in rerun.stderr, "rerun_rc": rerun.returncode,
           "rerun_tail": rerun.stderr.strip().splitlines()[-1:] if rerun.returncode else []}
    out["ok"] = (rerun.returncode == 0 and out["retry_state"] == "COMPLETE"
                 and out["resumed_from"] == saved["epoch"] and out["same_params"]
                 and len(resumed) == len(whole) == epochs)
    return out


def make_cifar_folder(root: Path, per_file: int = 10_000) -> Path:
    """A CIFAR-10 python folder (root/cifar-10-batches-py: five training batches, the test
    batch and batches.meta) of random 32-pixel images, as hpsearch.images.cifar10_images
    reads the real one: `per_file` images a file, 60,000 at the default."""
    import numpy as np

    target = Path(root) / "cifar-10-batches-py"
    target.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in CIFAR_FILES:
        batch = {b"data": rng.integers(0, 256, (per_file, 3072), dtype=np.uint8),
                 b"labels": rng.integers(0, 10, per_file).tolist()}
        with open(target / name, "wb") as f:
            pickle.dump(batch, f)
    with open(target / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in CIFAR_CLASSES]}, f)
    return target


def parse_facts(path: Path) -> dict:
    """The facts file of a run with workers, read defensively: {"workers": [{FACT_KEYS}],
    "parent_cuda_initialized": bool or None, "one_copy": whether every worker saw the same
    checksum (None: cannot tell), "problems": what was missing or unreadable}."""
    out = {"workers": [], PARENT_KEY: None, "parent_cuda_contexts": None, "one_copy": None,
           "problems": []}
    problems = out["problems"]
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        problems.append("no facts file: no process wrote to HPSEARCH_WORKER_FACTS")
        return out
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError:
            item = None
        if not isinstance(item, dict):
            problems.append(f"line {number} is not a JSON object")
        elif PARENT_KEY in item:
            out[PARENT_KEY] = bool(item[PARENT_KEY])
            out["parent_cuda_contexts"] = item.get("parent_cuda_contexts")
        else:
            missing = [k for k in FACT_KEYS if k not in item]
            if missing:
                problems.append(f"worker {item.get('worker', '?')} lacks {', '.join(missing)}")
            out["workers"].append({k: item.get(k) for k in FACT_KEYS})
    out["workers"].sort(key=lambda w: (not isinstance(w["worker"], int), str(w["worker"])))
    if out[PARENT_KEY] is None:
        problems.append("the run's parent wrote no line")
    sums = [w["checksum"] for w in out["workers"]]
    if len(sums) > 1 and None not in sums:
        out["one_copy"] = len(set(map(str, sums))) == 1
    return out


def workers_row(device: torch.device, scale: float = 1.0, work=None, workers: int = 2,
                seconds: float = 140) -> dict:
    """`hpsearch run --workers 2` on cifar10.toml over a CIFAR-10 folder of random images
    (60,000 at 32 px, one epoch a trial, the middle of the space), each process writing its
    facts to $HPSEARCH_WORKER_FACTS; nvidia-smi polled for each process's memory."""
    root = folder(work, "workers")
    make_cifar_folder(root, max(100, int(10_000 * scale)))
    facts = root / "facts.jsonl"
    facts.unlink(missing_ok=True)
    # One GPU named: `cuda` alone would spread two workers over two GPUs, sharing nothing.
    gpu = torch.device("cuda", 0) if device.type == "cuda" else device
    cmd = run_args(root / "s.db", gpu, "--config", STUDIES / "cifar10.toml", "--set",
                   f"data.data_dir='{root}'", "--workers", workers, "--trials", workers,
                   "--epochs", 1, "--set", "space.depth=3", "--set", "space.width=32")
    env = {**os.environ, "HPSEARCH_WORKER_FACTS": str(facts)}
    start, most = time.perf_counter(), {}
    with open(root / "stderr.txt", "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
        while proc.poll() is None and time.perf_counter() - start < seconds:
            for pid, used in gpu_processes().items():
                most[pid] = max(most.get(pid, 0), used)
            time.sleep(0.25)
    if proc.poll() is None:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"the run did not finish in {seconds:.0f} s")
    out = parse_facts(facts)
    out.update(returncode=proc.returncode, seconds=time.perf_counter() - start,
               smi_parent=most.pop(proc.pid, None) if most else None,
               smi_others=sorted(most.values()))
    if proc.returncode != 0:
        out["stderr_tail"] = (root / "stderr.txt").read_text().strip().splitlines()[-1:]
    return out


def oom_row(device: torch.device, scale: float = 1.0, work=None) -> dict:
    """A worker's memory cap (sharing.cap at half the GPU's free memory), then a study of two
    enqueued trials: the first asks for a batch no GPU holds (every training image at 256
    pixels through 1,024 channels at once), the second is ordinary. A capped worker's
    out-of-memory trial must fail alone, with its reason, and the next one complete."""
    import optuna

    from hpsearch.config import load_config
    from hpsearch.session import RunOptions, Session
    from hpsearch.sharing import cap

    if device.type != "cuda":
        raise RuntimeError("needs a CUDA device: on the CPU the batch would take the host")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = load_config(None, ["study.trials=1", "data.image_size=256", "train.epochs=1",
                             "space.batch_size=[64, 65536]", "space.width=[16, 1024]",
                             "space.depth=1", "study.sampler='random'"])
    store = folder(work, "oom") / "s.db"
    session = Session.open(cfg, RunOptions(storage=f"sqlite:///{store}", device=str(device)))
    free, total = torch.cuda.mem_get_info(session.device)
    fraction = cap(session.device, free // 2)
    ordinary = {"lr": 3e-3, "optimizer": "adam", "dropout": 0.0}
    session.study.enqueue_trial({**ordinary, "batch_size": 65536, "width": 1024})
    session.study.enqueue_trial({**ordinary, "batch_size": 64, "width": 16})
    session.run()
    trials = session.study.get_trials(deepcopy=False)
    reason = str(trials[0].user_attrs.get("fail_reason", ""))
    states = [t.state.name for t in trials]
    contained = (len(trials) >= 2 and trials[0].state == optuna.trial.TrialState.FAIL
                 and "out of memory" in reason
                 and trials[1].state == optuna.trial.TrialState.COMPLETE)
    return {"fraction": fraction, "cap_bytes": int((fraction or 0) * total), "states": states,
            "reason": reason[:200], "contained": contained}
