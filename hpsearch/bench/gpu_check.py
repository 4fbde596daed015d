"""`make gpu-check`: the GPU path's open questions, decided on a machine that has a CUDA GPU
in one run of at most five minutes, printed as one markdown table under two lines about the
machine. Without a CUDA GPU it says so and exits 0.

Each row runs in a process of its own (`python -m hpsearch.bench.gpu_rows ROW`, see there)
with a time limit, so that peak memory and cuDNN's state start from nothing, and a row that
fails, crashes or runs out of time says so in its own cells without hiding the others. The
quick rows and those that check behaviour run first: a slow GPU runs out of time on speed.

The rows, and the product default each informs:

1. the machine (above the table): GPU, compute capability, memory, driver, torch, CUDA and
   cuDNN, and the TF32 switches before and after precision.set_tf32 (fp32 is float32);
2. training at a steady pace (a short warm-up trial stands in for epoch 1) for three
   configurations of cifar10.toml's space (its smallest, its middle, its widest) on 48,000
   CIFAR-shaped images made on the GPU, in each precision the GPU offers: images/s, time
   per step on the host and on the GPU, kernels per step and their time, peak memory; are
   small trials bound by kernel launches, and which precision should `auto` pick?
3. widths 23, 24 and 32 (12,000 images): should CUDA widths be padded to multiples of 8 as
   the CPU's are (train.channel_padding, model.PaddedNet)?
4. cuDNN's benchmark search on and off (train.CUDNN_BENCHMARK), whether two runs of one
   seed end with the same weights with it off, what cudnn.deterministic costs, TF32 under
   autocast (precision.TF32_UNDER_AUTOCAST);
5. 64-pixel images kept in host memory (data.placement with DEVICE_SHARE 0), each batch
   staged through page-locked buffers, against on the GPU, with side-stream copies on and
   off (batches.OVERLAP), and the bytes page-locked for staging against the images';
6. hpsearch's fused optimizer against torch.optim's on the GPU, step for step;
7. an fp16 overflow inside the net: the trial diverges or trains on with finite batch-norm
   statistics, never completes with NaN ones (precision.NormStats);
8. a study killed (SIGKILL) in fp16, and in bf16 where the GPU has it, and resumed in fp16:
   the epoch it went on from, the scale carried, its curve against an uninterrupted run's;
9. two workers on one GPU: each one's reserved memory, measured CUDA context, fraction and
   checksum of the shared images; the parent's CUDA state (sharing.CONTEXT_GROWTH);
10. a worker's memory cap: its out-of-memory trial fails alone and the next one completes;
11. evaluation under a memory cap: the batch train.evaluate halves to, at the same accuracy.

`--device cpu --scale 0.01` rehearses the rows on the CPU (the GPU-only ones say so).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from hpsearch.bench.__main__ import Parser, device_name, positive

ROOT = Path(__file__).resolve().parents[2]
BUDGET = 285.0  # seconds for the whole check: under five minutes with start-up
LEAST = 15.0  # a row is not started with less time left than this


@dataclass(frozen=True)
class Row:
    """One process of the check: gpu_rows' `key` with its arguments `kw`, at most
    `timeout` seconds; `label` names it in the table; `rank`: lower runs earlier."""

    key: str
    label: str
    timeout: float
    rank: int = 0
    kw: dict = field(default_factory=dict)


def plan(device: str, capability: Optional[tuple]) -> list:
    """The rows in the table's order for this device (capability: the GPU's, None on the
    CPU): precisions and resume pairs follow what the GPU computes."""
    cuda = capability is not None
    major = capability[0] if cuda else 0
    # fp16 from compute capability 7.0 (tensor cores), bf16 from 8.0; on the CPU, bf16.
    precisions = ["fp32"] + (["fp16"] if major >= 7 else []) + \
        (["bf16"] if major >= 8 or not cuda else [])
    rows = [Row("header", "the machine", 60, 0)]
    for config in ("small", "default", "widest"):
        rows.append(Row("train", f"training, {config}", 120 if config == "widest" else 80,
                        5 + 3 * (config == "widest"),
                        {"config": config, "precisions": precisions}))
    rows += [Row("widths", "widths 23 / 24 / 32", 80, 6), Row("cudnn", "cuDNN", 100, 7),
             Row("host", "images in host memory", 100, 7), Row("optim", "fused optimizer", 80, 1),
             Row("poison", "batch-norm poisoning", 60, 2,
                 {"precision": "fp16" if cuda else "fp32"})]
    pairs = ([("fp16", "fp16")] + ([("bf16", "fp16")] if major >= 8 else [])) if cuda \
        else [("fp32", "bf16")]
    # Behaviour (resume, workers) before speed, which a slow GPU may leave unfinished.
    rows += [Row("resume", f"killed in {a}, resumed in {b}", 120, 4 + 5 * i, {"first": a,
                 "then": b}) for i, (a, b) in enumerate(pairs)]
    rows += [Row("workers", "two workers on one GPU", 150, 4),
             Row("oom", "out of memory in a capped worker", 80, 3),
             Row("eval", "evaluation batch halving", 60, 2,
                 {} if cuda else {"fake_limit": 256})]
    return rows


def run_row(row: Row, device: str, scale: float, work: Path, timeout: float,
            env: Optional[dict] = None) -> dict:
    """The row's JSON answer ({"ok", "result"} or {"ok": False, "error"}) plus "seconds";
    a row that crashed, printed no answer or ran out of time is answered for here. The row
    runs in a process group of its own, ended with it: nothing it started outlives it. Its
    stderr (a traceback, say) is kept beside `work`, as WORK.stderr."""
    cmd = [sys.executable, "-m", "hpsearch.bench.gpu_rows", row.key, "--device", device,
           "--scale", str(scale), "--work", str(work), "--kw", json.dumps(row.kw)]
    start, err = time.perf_counter(), ""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, env=env, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        answer = last_json(out) or {"ok": False, "error": f"exit code {proc.returncode}"
                                    f"{': ' + last_line(err) if last_line(err) else ''}"}
    except subprocess.TimeoutExpired:
        answer = {"ok": False, "error": f"timed out after {timeout:.0f} s"}
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the row, and what it started
        except (ProcessLookupError, PermissionError):
            pass
        if proc.returncode is None:
            err = proc.communicate()[1]  # what it said before it was stopped
    work.parent.mkdir(parents=True, exist_ok=True)
    work.with_name(f"{work.name}.stderr").write_text(err or "")
    answer["seconds"] = time.perf_counter() - start
    return answer


def last_json(text: str) -> Optional[dict]:
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                return None
    return None


def last_line(text: str) -> str:
    return next((line.strip()[:200] for line in reversed(text.splitlines()) if line.strip()), "")


def run_rows(rows: list, device: str, scale: float, work: Path, budget: float = BUDGET,
             env: Optional[dict] = None) -> list:
    """Every row's answer, in `rows`' order, the rows run by rank within `budget` seconds: a
    row is given what is left of it, and skipped with less than LEAST left."""
    deadline = time.monotonic() + budget
    answers: list = [None] * len(rows)
    for i in sorted(range(len(rows)), key=lambda i: rows[i].rank):
        left = deadline - time.monotonic()
        if left < LEAST:
            answers[i] = {"ok": False, "error": "not run: the check's time was spent",
                          "seconds": 0.0}
            continue
        answers[i] = run_row(rows[i], device, scale, work / f"{i + 1}-{rows[i].key}",
                             min(rows[i].timeout, left), env)
    return answers


# ------------------------------------------------------------------------------ nvidia-smi

def nvidia_smi(*query: str) -> list:
    """nvidia-smi's CSV rows for `query` (no header, no units), [] where it cannot answer."""
    try:
        out = subprocess.run(["nvidia-smi", *query, "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return []
    if out.returncode != 0:
        return []
    return [[cell.strip() for cell in line.split(",")] for line in out.stdout.splitlines()
            if line.strip()]


def driver_version() -> str:
    rows = nvidia_smi("--query-gpu=driver_version")
    return rows[0][0] if rows and rows[0] and rows[0][0] else "unknown"


def gpu_processes() -> dict:
    """{pid: MiB} of the processes using a GPU now (empty where nvidia-smi cannot tell, as in
    some containers)."""
    out = {}
    for row in nvidia_smi("--query-compute-apps=pid,used_memory"):
        try:
            out[int(row[0])] = int(row[1])
        except (ValueError, IndexError):
            continue
    return out


def capability(machine: dict) -> tuple:
    """The GPU's compute capability, (major, minor): as the machine's row read it, else as
    nvidia-smi says, else (0, 0) (fp32 only)."""
    said = (machine.get("result") or {}).get("capability") if machine.get("ok") else None
    for text in (said, *(row[0] for row in nvidia_smi("--query-gpu=compute_cap")[:1])):
        try:
            major, minor = str(text).split(".")
            return int(major), int(minor)
        except ValueError:
            continue
    return 0, 0


# ------------------------------------------------------------------------------ the table

def mib(n) -> str:
    return "n/a" if n is None else f"{n / 2**20:,.0f} MiB"


def gib(n) -> str:
    return "n/a" if n is None else f"{n / 2**30:.1f} GiB"


def num(x, form: str = ",.0f") -> str:
    return "n/a" if x is None else format(x, form)


def header_lines(answer: dict) -> list:
    if not answer.get("ok"):
        return [f"gpu-check: the machine's row failed: {answer.get('error')}"]
    r, on_off = answer["result"], {True: "on", False: "off"}.get
    (m0, c0), (m1, c1) = r["tf32_default"], r["tf32_hpsearch"]
    return [f"gpu-check on {r['name']}: compute capability {r['capability']}, "
            f"{gib(r['memory_bytes'])}, driver {r['driver']}",
            f"torch {r['torch']}, CUDA {r['cuda'] or 'n/a'}, cuDNN {r['cudnn'] or 'n/a'}; TF32 "
            f"as hpsearch leaves it: matmul {on_off(m1)}, cuDNN {on_off(c1)} (torch's defaults "
            f"here: matmul {on_off(m0)}, cuDNN {on_off(c0)})"]


def train_cells(r: dict, row: Row) -> list:
    p = r["params"]
    shape = f"depth {p['depth']}, width {p['width']}, growth {p['growth']}, {p['head']}"
    cells = []
    for run in r["runs"]:
        label = f"training {r['config']} ({shape}), {run['precision']}"
        if "error" in run:
            cells.append((label, f"failed: {run['error']}"))
            continue
        busy = run.get("kernel_ms")
        share = f" ({busy / run['cuda_ms']:.0%} busy)" if busy and run.get("cuda_ms") else ""
        kernels = (f"{num(run.get('kernels'), ',.1f')} {run.get('counted', 'kernels')}/step"
                   if "kernels" in run else f"kernels n/a ({run.get('kernels_error', '')})")
        cells.append((label, f"{num(run['images_per_s'])} img/s (a steady epoch of "
                             f"{r['images']:,}); host {num(run['host_ms'], '.2f')} ms/step, "
                             f"CUDA {num(run['cuda_ms'], '.2f')} ms/step, kernels "
                             f"{num(busy, '.2f')} ms/step{share}; {kernels}; peak "
                             f"{mib(run['peak_bytes'])}"))
    return cells


def widths_cells(r: dict, row: Row) -> list:
    speed = {w["width"]: w["images_per_s"] for w in r["widths"]}
    parts = [f"{w}: {num(s)} img/s" for w, s in speed.items()]
    if 23 in speed and 24 in speed:
        parts.append(f"24 against 23: {speed[24] / speed[23] - 1:+.1%}")
    return [(f"widths 23 / 24 / 32 (default, {r['widths'][0]['precision']})", "; ".join(parts))]


def cudnn_cells(r: dict, row: Row) -> list:
    s = r["images_per_s"]
    return [(f"cudnn.benchmark on / off (default, {r['precision']})",
             f"on {num(s['on'])} img/s, off {num(s['off'])} (on/off {s['on'] / s['off']:.2f})"),
            ("determinism, benchmark off",
             f"two runs of one seed: weights {'identical' if r['identical'] else 'differ'} "
             f"(largest loss gap {r['loss_gap']:.2g}); cudnn.deterministic: "
             f"{num(s['deterministic'])} img/s ({s['deterministic'] / s['off']:.2f} of off), "
             f"its two runs {'identical' if r['deterministic_identical'] else 'differ'}"),
            (f"TF32 under autocast ({r['precision']})", f"on {num(s['tf32'])} img/s, off "
             f"{num(s['off'])} (on/off {s['tf32'] / s['off']:.2f})")]


def host_cells(r: dict, row: Row) -> list:
    base = r["device_images_per_s"]
    runs = [(k, r.get(f"{k}_images_per_s")) for k in ("host", "host_overlap", "host_no_overlap")]
    names = {"host": "from host memory", "host_overlap": "side-stream copies on",
             "host_no_overlap": "off"}
    said = [f"{names[k]} {num(v)} ({v / base:.2f})" for k, v in runs if v is not None]
    if r.get("host_images_per_s") is not None:
        said.append("side-stream copies n/a (no batches.OVERLAP)")
    pinned = (f"pinned for staging {mib(r['pinned_bytes'])} against {mib(r['data_bytes'])} "
              f"of training images" if r["pinned_bytes"] is not None
              else "bytes pinned for staging n/a (no batches.pinned_total)")
    return [(f"images in host memory (64 px, {r['images']:,} training images)",
             f"placement with DEVICE_SHARE 0: {r['placement']}; on the device {num(base)} "
             f"img/s; " + ", ".join(said)
             + f"; {pinned}")]


def optim_cells(r: dict, row: Row) -> list:
    parts = [f"{c['kind']}{' + scaler' if c['scaler'] else ''} {c['max_diff']:.1g}"
             + ("" if c["passed"] else " FAIL") for c in r["checks"]]
    return [(f"fused optimizer against torch.optim, {r['steps']} steps",
             f"largest weight difference: {', '.join(parts)}: "
             f"{'pass' if r['passed'] else 'FAIL'}")]


def poison_cells(r: dict, row: Row) -> list:
    if r["outcome"] == "diverged":
        said = f"diverged ({r['reason']})"
    else:
        said = (f"{r['outcome']}: batch-norm statistics "
                f"{'finite' if r['bn_finite'] else 'NOT finite'}, val acc {r['val_acc']:.3f}")
    poisoned = "" if r["poisoned"] == 1 else f"; the poison ran {r['poisoned']} times"
    return [(f"batch-norm poisoning, {r['precision']} (inner conv x inf, step 3)",
             f"{said}{poisoned}: {'ok' if r['ok'] else 'NOT OK'}")]


def curve(values: list) -> str:
    return " ".join(f"{v:.3f}" for v in values) or "none"


def resume_cells(r: dict, row: Row) -> list:
    c = r["checkpoint"]
    scale = (f"scale {c['scale']:g}, carried over" if r["carried_scale"] else
             f"scale {c['scale']:g}, not carried ({r['then']} has no scaler)" if c["scale"]
             else f"no scaler state: {r['then']} starts its own")
    gap = "n/a" if r["max_gap"] is None else f"{r['max_gap']:.3f}"
    tail = f"; rerun failed: {' '.join(r['rerun_tail'])}" if r["rerun_rc"] else ""
    said = "" if r["first"] == r["then"] else f"; the log said so: {r['said_so']}"
    return [(f"killed in {r['first']}, resumed in {r['then']}",
             f"retry {r['retry_state']}, resumed after epoch {r['resumed_from']} "
             f"(checkpoint: epoch {c['epoch']}, "
             f"{c['precision']}, {scale}{said}); val acc "
             f"resumed [{curve(r['resumed_curve'])}] against uninterrupted "
             f"[{curve(r['reference_curve'])}], largest gap {gap}{tail}: "
             f"{'ok' if r['ok'] else 'NOT OK'}")]


def workers_cells(r: dict, row: Row) -> list:
    parts = [f"worker {w['worker']}{' (owner)' if w['owner'] else ''}: reserved "
             f"{mib(w['reserved_bytes'])}, context {mib(w['context_bytes'])}, fraction "
             f"{num(w['fraction'], '.3f')}, checksum {str(w['checksum'])[:12]}"
             for w in r["workers"]]
    copy = {True: "yes", False: "NO", None: "cannot tell"}[r["one_copy"]]
    parent, held = r["parent_cuda_initialized"], r.get("parent_cuda_contexts")
    parts += [f"one shared copy: {copy}",
              f"parent's CUDA initialized: {'n/a' if parent is None else parent}, contexts on "
              f"GPUs: {'n/a' if held is None else held or 'none'}"]
    if r.get("smi_others"):
        parts.append(f"nvidia-smi at most: parent {r['smi_parent'] or 0} MiB, workers "
                     f"{', '.join(map(str, r['smi_others']))} MiB")
    parts += [f"missing: {p}" for p in r["problems"]]
    if r["returncode"]:
        parts.append(f"run failed ({r['returncode']}): {' '.join(r.get('stderr_tail', []))}")
    return [("two workers on one GPU (CIFAR-10-sized)", "; ".join(parts))]


def oom_cells(r: dict, row: Row) -> list:
    return [("out of memory in a capped worker",
             f"cap {num(r['fraction'], '.2f')} of the GPU ({gib(r['cap_bytes'])}); trials "
             f"{', '.join(r['states'])}: {'contained' if r['contained'] else 'NOT contained'}"
             f" ({r['reason'][:120]})")]


def eval_cells(r: dict, row: Row) -> list:
    cap = f"capped at {mib(r['cap_bytes'])}" if r["cap_bytes"] else "out of memory faked"
    same = "=" if r["accuracy"] == r["uncapped_accuracy"] else "differs from"
    return [("evaluation batch halving",
             f"{cap}: first batch {r['start']}, settled at {r['settled']} (tried "
             f"{', '.join(map(str, r['tries']))}); accuracy {r['accuracy']:.4f} {same} uncapped "
             f"{r['uncapped_accuracy']:.4f}: {'ok' if r['ok'] else 'NOT OK'}")]


CELLS = {"train": train_cells, "widths": widths_cells, "cudnn": cudnn_cells,
         "host": host_cells, "optim": optim_cells, "poison": poison_cells,
         "resume": resume_cells, "workers": workers_cells, "oom": oom_cells,
         "eval": eval_cells}


def table(rows: list, answers: list) -> list:
    """The markdown lines: the machine, then one table with a row (or a few) per process."""
    lines: list = []
    body = ["| check | result | s |", "|---|---|---:|"]
    for row, answer in zip(rows, answers):
        if row.key == "header":
            lines += header_lines(answer)
            continue
        try:
            cells = CELLS[row.key](answer["result"], row) if answer.get("ok") else \
                [(row.label, f"failed: {answer.get('error')}")]
        except Exception as err:  # an answer of another shape: say so, keep the table
            cells = [(row.label, f"unreadable answer ({type(err).__name__}: {err})")]
        for i, (label, result) in enumerate(cells):
            seconds = f"{answer.get('seconds', 0):.0f}" if i == 0 else ""
            body.append(f"| {escape(label)} | {escape(result)} | {seconds} |")
    return lines + [""] + body


def escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def main(argv: Optional[list] = None) -> int:
    parser = Parser(prog="python -m hpsearch.bench.gpu_check",
                    description=__doc__.splitlines()[0])
    parser.add_argument("--device", type=device_name, default="cuda", help="or cpu: rehearse")
    parser.add_argument("--scale", type=positive, default=1.0, help="multiplies image counts")
    parser.add_argument("--budget", type=positive, default=BUDGET, help="seconds for all rows")
    parser.add_argument("--work", type=Path, help="a new folder to keep the rows' files "
                                                  "and stderr in (default: a temporary one)")
    args = parser.parse_args(argv)
    import torch

    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        print("gpu-check: no CUDA GPU on this machine; nothing to check (exit 0).")
        return 0
    if args.work and args.work.exists() and any(args.work.iterdir()):
        parser.error(f"--work {args.work} must be a new or empty folder")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hpsearch-gpu-check-") as tmp:
        tmp = Path(args.work or tmp)
        env = {**os.environ, "HPSEARCH_CACHE_DIR": str(tmp / "cache"), "PYTHONUNBUFFERED": "1"}
        # The machine's row first: the plan follows its GPU's compute capability, learnt
        # there so that this process never initialises CUDA on the GPU the rows measure.
        machine = run_row(plan(args.device, None)[0], args.device, args.scale,
                          tmp / "header", 60, env)
        rows = plan(args.device, capability(machine) if cuda else None)
        answers = [machine] + run_rows(rows[1:], args.device, args.scale, tmp,
                                       args.budget - machine["seconds"], env)
    print("\n".join(table(rows, answers)))
    print(f"\n{len(rows)} processes in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
