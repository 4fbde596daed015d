"""The benchmark's results as the markdown tables of BENCHMARKS.md."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Callable, Optional

from hpsearch.bench.suite import PARTS


def markdown(result: dict) -> str:
    mc = result["machine"]
    parts = [f"Measured at commit {result['commit']} on {mc['cores']} cores ({mc['cpu']}, "
             f"{mc['cpu_capability']}), Python {mc['python']}, torch {mc['torch']}, optuna "
             f"{mc['optuna']}."]
    for name in PARTS:
        if name in result:
            parts.append(TABLES[name](result[name]))
    share = overhead_share(result)
    if share:
        parts.append(share)
    return "\n\n".join(parts)


def _throughput(r: dict) -> str:
    m = r["median"]
    rows = [f"**Training throughput**, fixed configuration (depth 3, width 32, batch 64, "
            f"{r['epochs']} epochs, 16-pixel digits), median of {r['repeats']}:", "",
            "| trainer | images/s | final val acc |", "|---|---|---|"]
    for side, v in m.items():
        rows.append(f"| {side} | {v['images_per_second']:.0f} | {v['val_acc']:.4f} |")
    rows.append("")
    rows.append(f"hpsearch / recipe: **{r['speedup']:.2f}x** in {r['default_precision']}, the "
                f"precision `auto` takes on this CPU; bf16 autocast runs at "
                f"{r['bf16_speed']:.2f}x hpsearch's float32 speed here.")
    return "\n".join(rows)


def _compute(r: dict) -> str:
    g = 1e9
    share = ", ".join(f"{k} {v:.0%}" for k, v in r["profile"]["share"].items())
    conv = r["convolution_flops_while_convolving"]
    fp32 = r["peak_by_library"]["fp32"]
    return (f"**Achieved compute** of that trial: {r['achieved_flops'] / g:.1f} GFLOP/s "
            f"(convolutions and matrix products, forward and backward) against a "
            f"{r['peak_fp32_flops'] / g:.1f} GFLOP/s float32 matrix-product peak (the faster "
            f"of torch.mm, MKL: {fp32['mm'] / g:.1f}, and a 1x1 convolution, oneDNN: "
            f"{fp32['conv1x1'] / g:.1f}): "
            f"**{r['share_of_fp32_peak']:.0%}**; bfloat16 peak "
            f"{r['peak_bf16_flops'] / g:.1f} GFLOP/s. While convolving, the convolutions run "
            f"at {conv / g:.1f} GFLOP/s ({conv / r['peak_fp32_flops']:.0%} of the peak). "
            f"Profiler, share of the trainer's time: {share}."
            + _compute_bf16(r))


def _compute_bf16(r: dict) -> str:
    bf16 = r.get("bf16")
    if not bf16:
        return ""
    return (f" In bf16 autocast the same trial computes {bf16['achieved_flops'] / 1e9:.1f} "
            f"GFLOP/s, {bf16['share_of_bf16_peak']:.0%} of the bf16 peak.")


def _study(r: dict) -> str:
    rows = [f"**Whole study**: the default {r['trials']}-trial study against the recipe "
            f"(Optuna's PyTorch example: 10 epochs, MedianPruner) on the same search space:", "",
            "| run | seed | wall s | epochs run | best val acc | trials by state |",
            "|---|---|---|---|---|---|"]
    for run in r["runs"]:
        for side in ("recipe", "hpsearch"):
            s = run[side]
            states = ", ".join(f"{n} {k.lower()}" for k, n in sorted(s["states"].items()))
            rows.append(f"| {side} | {run['seed']} | {s['wall_seconds']:.1f} | "
                        f"{s['epochs_run']} | {s['best_value']:.4f} | {states} |")
    m = r["median"]
    rows += ["", f"Median wall time: recipe {m['recipe']['wall_seconds']:.1f} s, hpsearch "
                 f"{m['hpsearch']['wall_seconds']:.1f} s: **{r['speedup']:.2f}x**; median "
                 f"best validation accuracy recipe {m['recipe']['best_value']:.4f}, hpsearch "
                 f"{m['hpsearch']['best_value']:.4f}."]
    return "\n".join(rows)


def _pruning(r: dict) -> str:
    rows = [f"**Pruning**, the default study under each pruner (median of {r['repeats']}):",
            "", "| pruner | epochs run | of trials x epochs | best val acc | wall s |",
            "|---|---|---|---|---|"]
    for name, p in r["pruners"].items():
        rows.append(f"| {name} | {p['epochs_run']:.0f} | {p['budget']} "
                    f"({p['epochs_run'] / p['budget']:.0%}) | {p['best_value']:.4f} | "
                    f"{p['wall_seconds']:.1f} |")
    return "\n".join(rows)


def _workers(r: dict) -> str:
    rows = [f"**Workers**, the default study (median of {r['repeats']}):", "",
            "| workers | trials/min | wall s | epochs run | best val acc |",
            "|---|---|---|---|---|"]
    for w, v in r["workers"].items():
        rows.append(f"| {w} | {v['trials_per_minute']:.1f} | {v['wall_seconds']:.1f} | "
                    f"{v['epochs_run']:.0f} | {v['best_value']:.4f} |")
    rows += ["", f"2 workers / 1: **{r['ratio']:.2f}x** trials per minute."]
    return "\n".join(rows)


def _overhead(r: dict) -> str:
    from hpsearch.bench.overhead import PARTS as STEPS

    first = min(r["at"])
    rows = ["**Framework overhead**, ms per trial outside training (mean over the 50 trials "
            f"up to each count; at {first}, the median of {r.get('repeats', 1)} studies per "
            "side); *Optuna alone* is the same study on the same store with a bare objective "
            "(parameters, reports, pruner) under Optuna's own loop:", "",
            "| storage | run | trials | " + " | ".join(STEPS)
            + " | total | of which checkpoints |",
            "|---|---|---|" + "---|" * (len(STEPS) + 2)]
    sides = [(kind, name, found) for kind, s in r["storages"].items()
             for name, found in (("hpsearch", s),
                                 ("Optuna alone", r.get("optuna_alone", {}).get(kind)))
             if found]
    for kind, name, found in sides:
        for count, ms in found.get("ms_per_trial", {}).items():
            rows.append(f"| {kind} | {name} | {count} | "
                        + " | ".join(f"{ms[p]:.1f}" for p in STEPS)
                        + f" | {ms['total']:.1f} | {ms['of which checkpoints']:.1f} |")
    totals = [f"{kind} {name} " + "/".join(f"{t:.1f}" for t in found["totals_at_first"])
              for kind, name, found in sides if "totals_at_first" in found]
    if totals:
        rows += ["", f"Totals at {first} trials, study by study (ms): " + "; ".join(totals) + "."]
    if r["skipped"]:
        rows += ["", "Not measured: " + ", ".join(r["skipped"]) + "."]
    return "\n".join(rows)


def _photos(r: dict) -> str:
    params = _params(next(iter(r["fixed"].values()))["params"])
    rows = [f"**Photos**: `{r['folder']}`, {r['images']} images in {len(r['classes'])} "
            f"classes ({', '.join(r['classes'])}), through the canonical photo recipe "
            f"(ImageFolder, per-sample transforms, 2 loader workers) and through `hpsearch run "
            f"--config {Path(r['config']).name}`; the fixed trial is {params}, batch 64, "
            f"{r['epochs']} epochs; median of {r['repeats']}:", "",
            "| measure | recipe | hpsearch | hpsearch speed-up | target |",
            "|---|---|---|---|---|"]
    targets = r["targets"]

    def row(label: str, recipe: str, hpsearch: str, ratio: str = "", target: str = "") -> None:
        goal = targets.get(target)
        mark = f"{goal['target']}: **{'met' if goal['met'] else 'missed'}**" if goal else ""
        rows.append(f"| {label} | {recipe} | {hpsearch} | {ratio} | {mark} |")

    for size, v in r["fixed"].items():
        m = v["median"]
        row(f"fixed trial {size} px, images/s", f"{m['recipe']['images_per_second']:.0f}",
            f"{m['hpsearch']['images_per_second']:.0f}", f"{v['speedup']:.2f}x",
            f"fixed trial {size} px")
        row(f"fixed trial {size} px, final val acc", f"{m['recipe']['val_acc']:.4f}",
            f"{m['hpsearch']['val_acc']:.4f}")
    st, m = r["study"], r["study"]["median"]
    study = f"{r['trials']}-trial study {st['size']} px"
    row(f"{study}, wall s", f"{m['recipe']['wall_seconds']:.1f}",
        f"{m['hpsearch']['wall_seconds']:.1f}", f"{st['speedup']:.2f}x", "study")
    row(f"{study}, best val acc", f"{m['recipe']['best_value']:.4f}",
        f"{m['hpsearch']['best_value']:.4f}", "", "study best val acc")
    row(f"{study}, trials by state", *("; ".join(
        ", ".join(f"{n} {k.lower()}" for k, n in sorted(run[side]["states"].items()))
        for run in st["runs"]) for side in ("recipe", "hpsearch")))
    met = sum(t["met"] for t in targets.values())
    rows += ["", f"Targets met: **{met} of {len(targets)}**."]
    return "\n".join(rows)


def _params(params: dict) -> str:
    return ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"
                     for k, v in params.items())


def _report(r: dict) -> str:
    runs = ", ".join(f"{s:.1f}" for s in r["seconds"])
    return (f"**Report** of a drawn {r['trials']:,}-trial study (make_report: md, html, pdf, "
            f"charts): median **{r['median_seconds']:.1f} s** ({runs}); target under "
            f"{r['target_seconds']:.0f} s: {'met' if r['met'] else '**missed**'}.")


def _panel(r: dict) -> str:
    ref, sets = r["reference"], "".join(f" `--set {s}`" for s in r["sets"])
    rows = [f"**Panel**: each data set through its canonical recipe ({r['trials']} trials of "
            f"{r['recipe_epochs']} epochs, median pruner) and through `hpsearch run` "
            f"({_budget(r)}; the default study on digits, `{Path(r['config']).name}` on "
            f"folders{sets}), each its own process; the reference is "
            f"{_params(ref['params'])} trained {ref['epochs']} epochs by hpsearch's trainer in "
            f"the study file's settings. Best validation accuracy; *at N%*: each side's best "
            f"within that share of the recipe's wall time, recipe / hpsearch; median of "
            f"{r['repeats']}:"]
    if r["rows"]:
        shares = list(r["rows"][0]["at_recipe_time"])
        rows += ["", "| data | images (classes) | recipe s | recipe best | hpsearch s | "
                     "hpsearch best | " + " | ".join(f"at {s}" for s in shares)
                 + " | hpsearch reaches the recipe's best | reference |"
                 + (f" hpsearch on {r['short']:.2g} of the budget |" if r.get("short") else ""),
                 "|---|---|---|---|---|---|" + "---|" * len(shares) + "---|---|"
                 + ("---|" if r.get("short") else "")]
        rows += [_panel_row(row) for row in r["rows"]]
    if r["time_unused"]:
        rows += ["", "This checkout's `hpsearch run` has no `--time`: hpsearch ran its "
                     "trials without a time budget."]
    if r["skipped"]:
        rows += ["", "Not run: " + ", ".join(r["skipped"]) + "."]
    return "\n".join(rows)


def _panel_row(row: dict) -> str:
    at = " | ".join(f"{_acc(v['recipe'])} / {_acc(v['hpsearch'])}"
                    for v in row["at_recipe_time"].values())
    reach = row["hpsearch_reaches_recipe_best_seconds"]
    return (f"| {row['data']} | {row['images']} ({row['classes']}) | "
            f"{row['recipe_seconds']:.1f} | {row['recipe_best']:.4f} | "
            f"{row['hpsearch_seconds']:.1f} | {row['hpsearch_best']:.4f} | {at} | "
            f"{'not reached' if reach is None else f'{reach:.1f} s'} | "
            f"{row['reference_acc']:.4f} in {row['reference_seconds']:.1f} s |"
            + (f" {row['short_best']:.4f} in {row['short_seconds']:.1f} s |"
               if row.get("short_best") is not None else ""))


def _budget(r: dict) -> str:
    if r["time"] == "recipe":
        return "a time budget of the recipe's wall time, `--time`"
    if r["time"]:
        return f"a time budget of {r['time']}, `--time`"
    return f"{r['trials']} trials"


def _acc(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.3f}"


TABLES = {"throughput": _throughput, "compute": _compute, "study": _study,
          "pruning": _pruning, "workers": _workers, "overhead": _overhead, "photos": _photos,
          "report": _report, "panel": _panel}


def overhead_share(result: dict) -> Optional[str]:
    """Overhead at the smallest count as a share of the default study's mean trial time, per
    storage: hpsearch's, Optuna's alone, and the difference, hpsearch's own share (the target:
    at most 3% on SQLite)."""
    if "overhead" not in result or "study" not in result:
        return None
    over = result["overhead"]
    first = str(min(over["at"]))
    trial_ms = 1000 * statistics.median(r["hpsearch"]["trial_seconds_mean"]
                                        for r in result["study"]["runs"])
    parts = []
    for kind, s in over["storages"].items():
        ms = s["ms_per_trial"][first]["total"]
        text = f"{kind} {ms:.1f} ms = **{ms / trial_ms:.1%}**"
        alone = over.get("optuna_alone", {}).get(kind)
        if alone:
            floor = alone["ms_per_trial"][first]["total"]
            own = ms - floor
            text += (f" (Optuna alone {floor:.1f} ms = {floor / trial_ms:.1%}; hpsearch's own "
                     f"{own:.1f} ms = **{own / trial_ms:.1%}**)")
        parts.append(text)
    return (f"Share of the default study's {trial_ms:.0f} ms mean trial at {first} trials: "
            + "; ".join(parts) + ".")


def writer(out: Path, name: str, table: Callable[[dict], str], echo: bool = False):
    """done(result) for a long benchmark: writes out/NAME.json and out/NAME.md (the table) so
    that what it measured so far is kept, and with `echo` prints the table too."""
    def done(result: dict) -> None:
        (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
        (out / f"{name}.md").write_text(table(result) + "\n")
        if echo:
            print(table(result), flush=True)

    return done
