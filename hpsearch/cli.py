"""The command line: the only place that configures logging, prints and picks exit codes."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from importlib import metadata
from typing import Optional

from hpsearch.config import ConfigError

EXIT_USAGE = 2  # bad input: a flag, a config value, a store, a device
EXIT_FAILED = 1  # the study stopped because its trials kept crashing
EXIT_INTERRUPTED = 130

log = logging.getLogger("hpsearch")


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line instead of the usage block."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def whole_number(minimum: int):
    """An argparse type: an integer of at least `minimum`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


positive_int = whole_number(1)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def build_parser() -> Parser:
    from hpsearch.storage import DEFAULT_STORAGE

    parser = Parser(prog="hpsearch", allow_abbrev=False,
                    description="Hyperparameter search for image classifiers.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    run = sub.add_parser("run", allow_abbrev=False,
                         help="run or resume a study until it has its trials",
                         description="Run a study, or resume it: --trials is the study's total.")
    run.add_argument("--config", metavar="PATH",
                     help="study file (TOML); default: the packaged digits study")
    run.add_argument("--trials", type=positive_int, metavar="N",
                     help="finished trials the study should hold (default: study.trials)")
    run.add_argument("--timeout", type=positive_float, metavar="SECONDS",
                     help="stop this run after SECONDS (the study can be resumed)")
    run.add_argument("--storage", default=DEFAULT_STORAGE, metavar="URL",
                     help=f"sqlite:///PATH, postgresql://USER@HOST/DB or journal:PATH "
                          f"(default: {DEFAULT_STORAGE})")
    run.add_argument("--study-name", metavar="NAME", help="default: study.name")
    run.add_argument("--epochs", type=positive_int, metavar="N", help="default: train.epochs")
    run.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    run.add_argument("--seed", type=whole_number(0), metavar="N", help="default: study.seed")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a study-file key, e.g. --set space.depth=3 (repeatable)")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.add_argument("--verbose", action="store_true", help="show Optuna's own log lines")
    run.set_defaults(func=cmd_run)

    bench = sub.add_parser("bench", allow_abbrev=False,
                           help="time the default study against the canonical recipe",
                           description="Run the default study and the canonical Optuna + "
                                       "PyTorch recipe side by side, as separate processes.")
    bench.add_argument("--trials", type=positive_int, default=50, metavar="N")
    bench.add_argument("--repeats", type=positive_int, default=1, metavar="N",
                       help="runs of each side, alternating; medians are reported")
    bench.add_argument("--out", default="studies/bench", metavar="DIR",
                       help="where bench.json and bench.md are written (default: studies/bench)")
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv: Optional[list] = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(verbose=getattr(args, "verbose", False))
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("\nhpsearch: interrupted; run the same command to continue the study (an "
              "unfinished trial starts again)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except user_errors() as err:
        print(f"hpsearch: error: {err}", file=sys.stderr)
        return EXIT_USAGE


def user_errors() -> tuple:
    """The exceptions that mean bad input: shown as one line, never as a traceback."""
    from hpsearch.data import DataError
    from hpsearch.storage import StorageError
    from hpsearch.study import SettingsMismatch
    from hpsearch.train import DeviceError

    return ConfigError, DataError, StorageError, DeviceError, SettingsMismatch


def configure_logging(verbose: bool) -> None:
    import optuna

    logging.basicConfig(format="%(message)s", level=logging.INFO)
    optuna.logging.set_verbosity(optuna.logging.INFO if verbose else optuna.logging.WARNING)
    if not verbose:
        # Heartbeats and the GP sampler are marked experimental; the warning is noise here.
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    for handler in logging.getLogger("optuna").handlers:
        handler.addFilter(_not_ctrl_c)


def _not_ctrl_c(record: logging.LogRecord) -> bool:
    """Optuna logs the trial that Ctrl-C stopped with a traceback; hpsearch says it in one
    line instead."""
    return not (record.exc_info and record.exc_info[0] is KeyboardInterrupt)


def cmd_run(args: argparse.Namespace) -> int:
    from hpsearch.config import load_config
    from hpsearch.data import load_dataset
    from hpsearch.objective import make_objective
    from hpsearch.storage import check_store_file, open_storage, parse_storage, use_wal
    from hpsearch.study import (count_finished, grid_is_exhausted, open_study,
                                recover_dead_trials, run)
    from hpsearch.train import configure_threads, resolve_device

    flags = {"study.trials": args.trials, "study.name": args.study_name,
             "train.epochs": args.epochs, "study.seed": args.seed}
    cfg = load_config(args.config, args.set, {k: v for k, v in flags.items() if v is not None})
    device = resolve_device(args.device)
    spec = parse_storage(args.storage)
    check_store_file(spec)  # before any work, so a wrong path fails fast
    threads = configure_threads() if device.type == "cpu" else None
    data = load_dataset(cfg.data, cfg.study.seed, device)
    if data.skipped:
        log.warning("warning: skipped %d unreadable image file(s), e.g. %s",
                    len(data.skipped), data.skipped[0])
    storage = open_storage(spec, heartbeat_interval=cfg.study.heartbeat_interval,
                           grace_period=cfg.study.grace_period)
    study = open_study(storage, cfg, settings_record(cfg, data))
    use_wal(spec)
    done = count_finished(study)
    print_header(cfg, data, spec.display, device, threads, done)
    if done >= cfg.study.trials:
        print(f"Study {cfg.study.name!r} already has {done} finished trials (target "
              f"{cfg.study.trials}); pass a larger --trials to run more.")
        print_summary(study, None, spec.display, cfg)
        return 0
    if grid_is_exhausted(study):
        print(f"Study {cfg.study.name!r} has tried every point of its grid ({done} finished "
              f"trials); widen [space] under a new --study-name to search further.")
        print_summary(study, None, spec.display, cfg)
        return 0
    for number, queued in recover_dead_trials(study):
        then = "queued again" if queued else "not retried again (it died before)"
        print(f"Trial {number} was left running by a process that died: failed, {then}.")
    with progress_bar(study, cfg.study.trials, done, quiet=args.quiet) as bar:
        result = run(study, make_objective(cfg, data, device), cfg.study.trials,
                     timeout=args.timeout, callbacks=(bar,))
    print_summary(study, result, spec.display, cfg)
    if result.stopped_by_failures:
        print(f"hpsearch: error: the last 5 trials failed; stopped. Last error: "
              f"{result.last_fail_reason}", file=sys.stderr)
        return EXIT_FAILED
    done = count_finished(study)
    if done < cfg.study.trials:
        if args.timeout and result.seconds >= args.timeout:
            why = "--timeout reached"
        else:
            why = "the grid is exhausted" if cfg.study.sampler == "grid" else "stopped early"
        print(f"{done} of {cfg.study.trials} trials finished ({why}); run the same command "
              f"to continue.")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from hpsearch.bench import bench_study, markdown

    out = Path(args.out).resolve()
    print(f"Running the recipe and hpsearch {args.repeats}x each, {args.trials} trials per "
          f"study; this takes a few minutes per run.", flush=True)
    result = bench_study(args.trials, args.repeats, out)
    table = markdown(result)
    (out / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "bench.md").write_text(table + "\n")
    print(table)
    print(f"Written: {out / 'bench.json'}, {out / 'bench.md'}")
    return 0


def settings_record(cfg, data) -> dict:
    """What a study keeps about how it was run: never a storage URL or a password."""
    versions = {}
    for package in ("hpsearch", "optuna", "torch", "torchvision", "numpy", "scikit-learn"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {"config": cfg.settings(), "data": data.record(), "split_seed": cfg.study.seed,
            "versions": versions}


def print_header(cfg, data, store: str, device, threads, done: int) -> None:
    sizes = f"{len(data.y_train)} train / {len(data.y_val)} val / {len(data.y_test)} test"
    where = f"{device} ({threads} threads)" if threads else str(device)
    print(f"Store: {store}")
    print(f"Study {cfg.study.name!r}: {done} of {cfg.study.trials} trials finished; "
          f"{cfg.study.sampler} sampler, {cfg.study.pruner} pruner, {cfg.train.epochs} epochs")
    print(f"Data: {cfg.data.dataset}, {sizes} images of {data.image_size}x{data.image_size}, "
          f"{len(data.classes)} classes; training on {where}")


class progress_bar:
    """A tqdm bar over the study's finished trials, with the best value so far."""

    def __init__(self, study, target: int, done: int, quiet: bool):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=target, initial=done, unit="trial", disable=quiet,
                        dynamic_ncols=True, file=sys.stderr)
        self._show(study)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.bar.close()

    def __call__(self, study, trial) -> None:
        from hpsearch.study import FINISHED

        if trial.state in FINISHED:
            self.bar.update(1)
        self._show(study)

    def _show(self, study) -> None:
        try:
            self.bar.set_postfix_str(f"best={study.best_value:.4f}")
        except ValueError:
            pass  # no completed trial yet


def print_summary(study, result, store: str, cfg) -> None:
    """The end-of-run table: trials by state, the best trial (searched and fixed values),
    wall time, the store."""
    from hpsearch.space import fixed_params
    from hpsearch.study import FINISHED, state_counts

    counts = state_counts(study)
    finished = sum(counts.get(s.name, 0) for s in FINISHED)
    states = ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))
    rows = [("Trials", f"{finished} finished ({states})")]
    try:
        best = study.best_trial
    except ValueError:
        rows.append(("Best", "no trial has completed yet"))
    else:
        rows.append(("Best", f"validation accuracy {best.value:.4f} (trial {best.number})"))
        params = {**best.params, **fixed_params(cfg)}
        rows += [(f"  {k}", f"{v:.4g}" if isinstance(v, float) else str(v))
                 for k, v in params.items()]
    if result is not None:
        plural = "" if result.ran == 1 else "s"
        rows.append(("Wall time",
                     f"{result.seconds:.1f} s for {result.ran} trial{plural} this run"))
    rows.append(("Store", store))
    print()
    for label, value in rows:
        print(f"{label:<14} {value}")


def run_study_main() -> int:
    """`python run_study.py ...` is `hpsearch run ...`."""
    argv = sys.argv[1:]
    return main(argv if argv[:1] == ["run"] else ["run", *argv])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
