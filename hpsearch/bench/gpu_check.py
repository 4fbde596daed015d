"""`make gpu-check`: the GPU path checked on a machine that has one, in a few minutes, as one
table. Without a CUDA GPU it says so and exits 0.

Rows, each measured on the first GPU (every check catches its own failure and reports it in
its row, so one broken check does not hide the others):

- the fixed photo trial (depth 3, width 32, 64 pixels, 3 epochs, on a small drawn folder) in
  each precision the GPU computes: images per second and peak device memory;
- the same trial with cuDNN's benchmark search on, against off (hpsearch's default);
- a study killed mid-trial (SIGKILL) in one precision and run again in another: the epoch the
  interrupted trial resumed from, and whether the study reached its target with no other
  failed trial;
- an injected out-of-memory trial (a batch far beyond the GPU) in a study of two: whether it
  failed alone, with its reason, while the other completed;
- two worker processes on one GPU against one: trials per minute of a small digits study, the
  GPU's peak memory in use and each process's (nvidia-smi, polled): the run's own process
  should hold none, its workers one copy of the images between them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EPOCHS = 3
DEVICE = "cuda"  # every check runs here (the checks' own code can be tried on "cpu")
FIXED = {"lr": 3e-3, "depth": 3, "width": 32, "dropout": 0.0, "optimizer": "adam"}


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        print("gpu-check: no CUDA GPU on this machine; nothing to check (exit 0).")
        return 0
    from hpsearch.bench.photo_folder import make_photo_folder

    name, (major, minor) = torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0)
    precisions = ["fp32", "fp16"] + (["bf16"] if major >= 8 else [])
    rows = []
    with tempfile.TemporaryDirectory(prefix="hpsearch-gpu-check-") as tmp:
        work = Path(tmp)
        os.environ["HPSEARCH_CACHE_DIR"] = str(work / "cache")
        folder = make_photo_folder(work / "photos", per_class=150)
        for precision in precisions:
            rows.append(checked(f"fixed trial, {precision}", fixed_trial, folder, precision))
        rows.append(checked("fixed trial, cudnn.benchmark on", fixed_trial, folder,
                            precisions[-1], True))
        other = "fp32" if precisions[-1] != "fp32" else "fp16"
        rows.append(checked(f"killed in {precisions[-1]}, resumed in {other}", kill_and_resume,
                            work / "resume", precisions[-1], other))
        rows.append(checked("injected out-of-memory trial", out_of_memory, work / "oom"))
        for workers in (1, 2):
            rows.append(checked(f"digits study, {workers} worker(s) on one GPU", workers_run,
                                work / f"workers-{workers}", workers))
    print(f"gpu-check on {name} (compute capability {major}.{minor}), torch {torch.__version__}")
    print()
    print("| check | result |")
    print("|---|---|")
    for label, result in rows:
        print(f"| {label} | {result} |")
    return 0


def checked(label: str, check, *args) -> tuple:
    try:
        return label, check(*args)
    except subprocess.CalledProcessError as err:  # its stderr says why, not its command
        return label, f"check failed: {str(err.stderr)[-200:]}"
    except Exception as err:  # one failed check must not hide the others' rows
        return label, f"check failed: {type(err).__name__}: {str(err)[:200]}"


def fixed_trial(folder: Path, precision: str, benchmark: bool = False) -> str:
    """In a process of its own, so that peak memory and cuDNN's state start from nothing."""
    code = (
        "import json, sys, time, optuna, torch; from hpsearch import train; "
        f"train.CUDNN_BENCHMARK = {benchmark}; "
        "from hpsearch.bench.fixed_trial import time_fixed_trial; "
        "optuna.logging.set_verbosity(optuna.logging.WARNING); "
        "cuda = torch.cuda.is_available(); cuda and torch.cuda.reset_peak_memory_stats(); "
        f"r = time_fixed_trial({EPOCHS}, {precision!r}, 0, {str(studies('photos.toml'))!r}, "
        f"(\"data.dataset='folder:{folder}'\", 'data.image_size=64'), {FIXED!r}, {DEVICE!r}); "
        "r['peak'] = torch.cuda.max_memory_allocated() if cuda else 0; print(json.dumps(r))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return (f"{r['images'] / r['seconds']:.0f} images/s, peak {r['peak'] / 2**20:.0f} MiB, "
            f"val acc {r['val_acc']:.3f}")


def studies(name: str) -> Path:
    return Path(__file__).resolve().parents[1] / "studies" / name


def run_args(store: Path, *extra) -> list:
    return [sys.executable, "-m", "hpsearch.cli", "run", "--quiet", "--device", DEVICE,
            "--storage", f"sqlite:///{store}", *map(str, extra)]


def kill_and_resume(work: Path, first: str, then: str) -> str:
    work.mkdir(parents=True)
    store = work / "s.db"
    base = ["--trials", 4, "--epochs", 20, "--set", "data.image_size=32"]
    proc = subprocess.Popen(run_args(store, *base, "--set", f"train.precision='{first}'"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    # Killed once a checkpoint exists: an epoch is reported before it is written.
    while time.monotonic() < deadline and next(work.rglob("trial-*.pt"), None) is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    out = subprocess.run(run_args(store, *base, "--set", f"train.precision='{then}'"),
                         capture_output=True, text=True, timeout=600)
    import optuna

    study = optuna.load_study(study_name="digits-cnn", storage=f"sqlite:///{store}")
    retried = [t for t in study.trials if "failed_trial" in t.system_attrs]
    failed = [t for t in study.trials if t.state.name == "FAIL"]
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    epoch = retried[0].user_attrs.get("resumed_from_epoch") if retried else None
    ok = out.returncode == 0 and len(failed) == 1 and len(finished) >= 4
    return (f"resumed after epoch {epoch}; {len(finished)} finished, {len(failed)} failed "
            f"(the killed one): {'ok' if ok and epoch else 'NOT OK'}")


def out_of_memory(work: Path) -> str:
    """Trial 0 asks for a batch no GPU holds (every training image at 256 pixels through
    1,024 channels at once); trial 1 is an ordinary one. Failed trials do not count towards
    the target of one finished trial, so the study stops after trial 1."""
    import optuna

    from hpsearch.config import load_config
    from hpsearch.session import RunOptions, Session

    work.mkdir(parents=True)
    cfg = load_config(None, ["study.trials=1", "data.image_size=256", "train.epochs=1",
                             "space.batch_size=[64, 65536]", "space.width=[16, 1024]",
                             "space.depth=1", "study.sampler='random'"])
    session = Session.open(cfg, RunOptions(storage=f"sqlite:///{work / 's.db'}", device=DEVICE))
    ordinary = {"lr": 3e-3, "optimizer": "adam", "dropout": 0.0}
    session.study.enqueue_trial({**ordinary, "batch_size": 65536, "width": 1024})
    session.study.enqueue_trial({**ordinary, "batch_size": 64, "width": 16})
    session.run()
    trials = session.study.get_trials(deepcopy=False)
    reason = str(trials[0].user_attrs.get("fail_reason", ""))
    contained = trials[0].state == optuna.trial.TrialState.FAIL and "out of memory" in reason \
        and trials[1].state == optuna.trial.TrialState.COMPLETE
    return f"{'contained' if contained else 'NOT contained'}: {reason[:120]}"


def workers_run(work: Path, workers: int) -> str:
    work.mkdir(parents=True)
    cmd = run_args(work / "s.db", "--trials", 20, "--workers", workers)
    peak, per_process, start = 0, {}, time.perf_counter()
    with open(work / "stderr.txt", "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        while proc.poll() is None and time.perf_counter() - start < 300:
            peak = max(peak, gpu_memory_used())
            for pid, used in gpu_processes().items():
                per_process[pid] = max(per_process.get(pid, 0), used)
            time.sleep(0.2)
    if proc.poll() is None:
        proc.kill()
        proc.wait()
        raise RuntimeError("did not finish in 300 s")
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError((work / "stderr.txt").read_text()[-300:])
    rate = f"{60 * 20 / seconds:.1f} trials/min, GPU memory in use at most {peak} MiB"
    if not per_process:
        return f"{rate}; nvidia-smi shows no processes here"
    parent = per_process.pop(proc.pid, 0)
    others = ", ".join(f"{used}" for used in sorted(per_process.values())) or "none"
    return f"{rate}; per process at most: run {parent} MiB, workers {others} MiB"


def gpu_memory_used() -> int:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,"
                              "nounits", "--id=0"], capture_output=True, text=True, timeout=5)
        return int(out.stdout.strip().splitlines()[0])
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return 0


def gpu_processes() -> dict:
    """{pid: MiB} of the processes using the GPU now (nvidia-smi; empty where it cannot
    tell, as in some containers)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True,
                             timeout=5)
        rows = (line.split(",") for line in out.stdout.strip().splitlines() if line.strip())
        return {int(pid): int(used) for pid, used in rows}
    except (OSError, ValueError, subprocess.SubprocessError):
        return {}


if __name__ == "__main__":
    raise SystemExit(main())
