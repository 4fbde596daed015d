"""`make gpu-check` on the CPU: each row's logic run small on the processor (the GPU-only
parts faked or left out), the worker facts and checkpoints it reads, the processes it runs
rows in, and the table it prints."""

from __future__ import annotations

import json
import math

import torch

from hpsearch import batches, precision, train
from hpsearch.bench import gpu_check, gpu_rows, gpu_workers
from hpsearch.bench.gpu_check import Row
from hpsearch.precision import Precision

CPU = torch.device("cpu")
TINY = 384 / 48_000  # three batches of 128 where a row trains on CIFAR's 48,000


def test_without_cuda_it_says_so_in_one_line_and_returns_0(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main([]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["gpu-check: no CUDA GPU on this machine; nothing to check (exit 0)."]


def test_the_training_row_times_each_precision_and_counts_the_cpus_ops():
    r = gpu_rows.train_row(CPU, TINY, config="small", precisions=("fp32", "bf16"))
    assert r["params"]["depth"] == 2 and r["params"]["width"] == 16  # cifar10.toml's lowest
    assert r["images"] == 384 and [run["precision"] for run in r["runs"]] == ["fp32", "bf16"]
    for run in r["runs"]:
        assert "error" not in run and run["images_per_s"] > 0 and run["host_ms"] > 0
        assert run["steps"] == 3 and run["cuda_ms"] is None and run["peak_bytes"] is None
        assert run["counted"] == "CPU ops" and run["kernels"] > 10


def test_the_configurations_span_the_studys_space():
    widest, default = gpu_rows.config_params("widest"), gpu_rows.config_params("default")
    assert (widest["depth"], widest["width"], widest["growth"]) == (4, 64, 2)
    assert (default["depth"], default["width"]) == (3, 32)


def test_a_timed_epoch_follows_a_warm_up_that_it_does_not_count():
    data = gpu_rows.synthetic(CPU, 384, 64)
    run = gpu_rows.timed_fit(gpu_rows.config_params("small"), data, CPU, "fp32", warm_steps=1)
    assert run["steps"] == 3 and len(run["train_loss"]) == 1 and run["images_per_s"] > 0


def test_the_widths_row_times_23_24_and_32_in_one_precision():
    r = gpu_rows.widths_row(CPU, TINY)
    assert [w["width"] for w in r["widths"]] == [23, 24, 32]
    assert all(w["images_per_s"] > 0 for w in r["widths"])
    assert len({w["precision"] for w in r["widths"]}) == 1


def test_the_cudnn_row_runs_on_the_cpu_repeats_exactly_and_restores_the_flags():
    r = gpu_rows.cudnn_row(CPU, TINY)
    assert set(r["images_per_s"]) == {"off", "off again", "deterministic",
                                      "deterministic again", "tf32", "on"}
    assert all(v > 0 for v in r["images_per_s"].values())
    assert r["identical"] and r["deterministic_identical"] and r["loss_gap"] == 0.0
    assert train.CUDNN_BENCHMARK is False and torch.backends.cudnn.deterministic is False
    assert precision.TF32_UNDER_AUTOCAST is False


def test_the_host_row_stages_the_cpus_batches_and_pins_nothing_there():
    r = gpu_rows.host_row(CPU, 256 / 20_000)
    assert r["placement"] == "device"  # the CPU has no device memory to leave it out of
    assert r["device_images_per_s"] > 0 and r["data_bytes"] == r["images"] * 3 * 64 * 64
    staged = [k for k in ("host", "host_overlap", "host_no_overlap") if f"{k}_staged" in r]
    assert staged and all(r[f"{k}_staged"] > 0 and r[f"{k}_images_per_s"] > 0 for k in staged)
    if hasattr(batches, "OVERLAP"):
        assert staged == ["host_overlap", "host_no_overlap"]
    assert r["pinned_bytes"] in (0, None) and train.Rows is batches.Rows


def test_the_optimizer_row_matches_torch_optim_step_for_step():
    r = gpu_workers.optim_row(CPU)
    assert r["passed"] and len(r["checks"]) == 5
    assert all(c["max_diff"] <= 1e-6 for c in r["checks"])
    assert [c["scales"] for c in r["checks"] if c["scaler"]] == [[512.0, 512.0]] * 2


def test_poisoning_without_a_scaler_is_divergence():
    r = gpu_workers.poison_row(CPU, precision="fp32")
    assert r["poisoned"] == 1 and r["outcome"] == "diverged" and r["ok"]
    assert "diverged" in r["reason"]


choose = train.choose_precision


def cpu_fp16(device, wanted="auto"):
    """fp16 autocast and an enabled scaler on the CPU: the path a T4 takes."""
    if wanted == "fp16":
        return Precision("cpu", torch.float16, torch.amp.GradScaler("cpu", enabled=True))
    return choose(device, wanted)


def test_poisoning_under_the_scaler_trains_on_with_finite_statistics(monkeypatch):
    monkeypatch.setattr(train, "choose_precision", cpu_fp16)
    r = gpu_workers.poison_row(CPU, precision="fp16")
    assert r["precision"] == "fp16" and r["poisoned"] == 1
    assert r["outcome"] == "trained on" and r["bn_finite"] and r["ok"]
    assert all(math.isfinite(v) for v in r["val_loss"]) and r["val_acc"] > 0.3


def test_the_poison_row_would_catch_a_trial_completed_with_nan_statistics(monkeypatch):
    real_fit = train.fit

    def spoilt(model, *args, **kwargs):
        history = real_fit(model, *args, **kwargs)
        next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)) \
            .running_var.fill_(float("nan"))
        return history

    monkeypatch.setattr(train, "choose_precision", cpu_fp16)
    monkeypatch.setattr(train, "fit", spoilt)
    r = gpu_workers.poison_row(CPU, precision="fp16", epochs=1)
    assert r["outcome"] == "completed with NaN statistics" and not r["ok"]


def test_evaluation_halves_its_batch_on_out_of_memory_and_keeps_its_accuracy():
    r = gpu_rows.eval_row(CPU, fake_limit=100, start=256)
    assert r["tries"] == [256, 128, 64] and r["settled"] == 64 and r["images"] == 1024
    assert r["accuracy"] == r["uncapped_accuracy"] and r["loss_gap"] < 1e-4 and r["ok"]


def facts_file(tmp_path, lines) -> object:
    path = tmp_path / "facts.jsonl"
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines))
    return path


def test_worker_facts_are_read_per_worker_with_the_parents_line(tmp_path):
    one = {"worker": 1, "owner": False, "context_bytes": 3 << 28, "reserved_bytes": 1 << 30,
           "fraction": 0.4, "checksum": 123}
    path = facts_file(tmp_path, [one, {**one, "worker": 0, "owner": True},
                                 {"parent_cuda_initialized": False}])
    facts = gpu_workers.parse_facts(path)
    assert [w["worker"] for w in facts["workers"]] == [0, 1] and facts["workers"][0]["owner"]
    assert facts["one_copy"] is True and facts["parent_cuda_initialized"] is False
    assert facts["problems"] == []
    cells = gpu_check.workers_cells({**facts, "returncode": 0, "smi_others": []}, None)
    assert "reserved 1,024 MiB, context 768 MiB, fraction 0.400" in cells[0][1]
    assert "one shared copy: yes" in cells[0][1]


def test_worker_facts_that_are_missing_or_broken_are_said(tmp_path):
    facts = gpu_workers.parse_facts(tmp_path / "none.jsonl")
    assert facts["workers"] == [] and "no facts file" in facts["problems"][0]
    path = facts_file(tmp_path, [{"worker": 0, "checksum": 1}, "not json",
                                 {"worker": 1, "checksum": 2, "owner": False}])
    facts = gpu_workers.parse_facts(path)
    assert facts["one_copy"] is False and facts["parent_cuda_initialized"] is None
    said = " / ".join(facts["problems"])
    assert "worker 0 lacks owner" in said and "line 2 is not a JSON object" in said
    assert "parent wrote no line" in said and facts["workers"][0]["reserved_bytes"] is None


def test_a_cifar_folder_reads_as_cifar10(tmp_path):
    from hpsearch.images import cifar10_images

    gpu_workers.make_cifar_folder(tmp_path, per_file=4)
    images = cifar10_images(tmp_path, 32)
    assert images.x.shape == (24, 3, 32, 32) and images.classes == gpu_workers.CIFAR_CLASSES


def test_a_checkpoints_scale_is_read_before_the_rerun(tmp_path):
    from hpsearch.checkpoint import TrialCheckpoint

    ckpt = TrialCheckpoint.under(tmp_path, "s", 0, {"lr": 0.1})
    ckpt.save(2, {"scaler": {"scale": 1024.0}, "precision": "fp16", "device": "cuda"})
    assert gpu_workers.read_checkpoint(ckpt.path) == {"epoch": 2, "precision": "fp16",
                                                      "device": "cuda", "scale": 1024.0}
    ckpt.save(3, {"scaler": {}, "precision": "bf16", "device": "cuda"})
    assert gpu_workers.read_checkpoint(ckpt.path)["scale"] is None


def test_the_plan_follows_what_the_gpu_computes():
    t4, h100, cpu = (gpu_check.plan("cuda", c) for c in ((7, 5), (9, 0), None))
    assert [r.kw["precisions"] for r in t4 if r.key == "train"][0] == ["fp32", "fp16"]
    assert [r.kw["precisions"] for r in h100 if r.key == "train"][0] == ["fp32", "fp16", "bf16"]
    assert [r.kw for r in t4 if r.key == "resume"] == [{"first": "fp16", "then": "fp16"}]
    assert [r.kw["first"] for r in h100 if r.key == "resume"] == ["fp16", "bf16"]
    assert [r.kw for r in cpu if r.key == "eval"] == [{"fake_limit": 256}]
    assert set(r.key for r in h100) == set(gpu_rows.rows())  # every row is planned


def test_the_plan_takes_the_capability_the_machines_row_read():
    assert gpu_check.capability({"ok": True, "result": {"capability": "7.5"}}) == (7, 5)
    # Without it, nvidia-smi's (none here): fp32 alone, the safe plan.
    assert gpu_check.capability({"ok": False, "error": "timed out"}) == (0, 0)


def test_rows_run_apart_and_a_failure_or_a_hang_stays_in_its_row(tmp_path):
    rows = [Row("header", "the machine", 60), Row("no-such-row", "a broken row", 60),
            Row("header", "a slow row", 0.05)]
    answers = gpu_check.run_rows(rows, "cpu", 1.0, tmp_path)
    assert answers[0]["ok"] and answers[0]["result"]["capability"] and \
        answers[0]["seconds"] > 0
    assert not answers[1]["ok"] and "exit code 2" in answers[1]["error"] and \
        "invalid choice" in answers[1]["error"]
    assert "invalid choice" in (tmp_path / "2-no-such-row.stderr").read_text()
    assert answers[2] == {"ok": False, "error": "timed out after 0 s",
                          "seconds": answers[2]["seconds"]}
    spent = gpu_check.run_rows(rows[:1], "cpu", 1.0, tmp_path, budget=0)
    assert spent[0]["error"] == "not run: the check's time was spent"


def test_the_table_has_a_row_per_answer_and_keeps_failures_in_theirs():
    rows = gpu_check.plan("cuda", (8, 0))
    run = {"precision": "bf16", "images_per_s": 41234.5, "host_ms": 2.5, "cuda_ms": 2.4,
           "kernel_ms": 1.2, "kernels": 96.0, "counted": "CUDA kernels", "peak_bytes": 3 << 28}
    answers = {
        "header": {"name": "NVIDIA A100", "capability": "8.0", "memory_bytes": 40 << 30,
                   "driver": "unknown", "torch": "2.4", "cuda": "12.4", "cudnn": 90100,
                   "tf32_default": [False, True], "tf32_hpsearch": [False, False]},
        "train": {"config": "small", "images": 48000, "runs": [run, {"precision": "fp16",
                                                                   "error": "OutOfMemory: x"}],
                  "params": {"depth": 2, "width": 16, "growth": 1, "head": "flatten"}},
        "optim": {"steps": 6, "passed": True, "checks": [
            {"kind": "adam", "scaler": False, "max_diff": 0.0, "passed": True}]},
        "eval": {"cap_bytes": 1 << 30, "start": 1024, "settled": 256, "tries": [1024, 512, 256],
                 "accuracy": 0.1, "uncapped_accuracy": 0.1, "ok": True}}
    given = [{"ok": True, "result": answers[r.key], "seconds": 3.0} if r.key in answers
             else {"ok": False, "error": "timed out | after 80 s", "seconds": 80.0}
             for r in rows]
    lines = gpu_check.table(rows, given)
    assert lines[0].startswith("gpu-check on NVIDIA A100: compute capability 8.0, 40.0 GiB")
    assert "TF32 as hpsearch leaves it: matmul off, cuDNN off" in lines[1]
    body = lines[lines.index("| check | result | s |"):]
    trained = [x for x in body if x.startswith("| training small")]
    assert len(trained) == 3 * 2  # each config's answer stands in for all three here
    assert "41,234 img/s" in trained[0] and "96.0 CUDA kernels/step" in trained[0] and \
        "(50% busy)" in trained[0] and "peak 768 MiB" in trained[0]
    assert "failed: OutOfMemory: x" in trained[1]
    assert any("settled at 256" in x and ": ok |" in x for x in body)
    failed = [x for x in body if "timed out \\| after 80 s" in x]
    assert len(failed) == len([r for r in rows if r.key not in answers])
    assert len(body) == 2 + 6 + 1 + 1 + len(failed)


def test_a_study_killed_in_one_precision_resumes_in_another(tmp_path):
    """The real thing, small: `hpsearch run` killed with SIGKILL once a checkpoint exists,
    run again in bf16, beside an uninterrupted run of the same trial."""
    r = gpu_workers.resume_row(CPU, work=tmp_path, first="fp32", then="bf16", size=8,
                               epochs=30)
    saved = r["checkpoint"]
    assert saved["precision"] == "fp32" and saved["device"] == "cpu"
    assert saved["scale"] is None and r["carried_scale"] is None  # fp32 has no scaler
    assert r["resumed_from"] == saved["epoch"] >= 1 and r["retry_state"] == "COMPLETE"
    assert r["same_params"] and r["said_so"] and r["rerun_rc"] == 0 and r["ok"]
    assert len(r["resumed_curve"]) == len(r["reference_curve"]) == 30
    # The epochs before the kill come from the checkpoint: as the uninterrupted run's.
    done = saved["epoch"]
    assert r["resumed_curve"][:done] == r["reference_curve"][:done]
    assert r["max_gap"] < 0.2 and min(r["resumed_curve"][-3:]) > 0.5
