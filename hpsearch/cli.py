"""The command line: the only place that configures logging, prints and picks exit codes."""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import sys
import threading
import warnings
from typing import Optional

from hpsearch.config import ConfigError

EXIT_USAGE = 2  # bad input: a flag, a config value, a store, a device
EXIT_FAILED = 1  # the study stopped because its trials kept crashing
EXIT_INTERRUPTED = 130
EXIT_UNWRITABLE = 120  # the output could not be written, as Python's own exit reports it

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


def counts(text: str) -> tuple:
    """An argparse type: whole numbers of at least 1, separated by commas."""
    return tuple(positive_int(part.strip()) for part in text.split(","))


# The parts of `hpsearch bench` (hpsearch.bench.PARTS, named here so --help needs no torch).
BENCH_PARTS = ("throughput", "compute", "study", "pruning", "workers", "overhead")


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
    run.add_argument("--artifacts", metavar="DIR",
                     help="where completed trials' weights go (default: artifacts/ beside a "
                          "store file, else studies/artifacts)")
    run.add_argument("--epochs", type=positive_int, metavar="N", help="default: train.epochs")
    run.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    run.add_argument("--seed", type=whole_number(0), metavar="N", help="default: study.seed")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a study-file key, e.g. --set space.depth=3 (repeatable)")
    run.add_argument("--backup", metavar="DIR",
                     help="copy the store, the running trial's checkpoint and new weights to "
                          "DIR (Google Drive, say) and restore from it on a fresh machine; "
                          "also [study] backup")
    run.add_argument("--workers", type=positive_int, default=1, metavar="N",
                     help="worker processes on this machine, sharing the CPU threads (on "
                          "CUDA, worker i takes GPU i modulo the count); default 1")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.add_argument("--verbose", action="store_true", help="show Optuna's own log lines")
    run.set_defaults(func=cmd_run)

    add_result_commands(sub)

    bench = sub.add_parser("bench", allow_abbrev=False,
                           help="measure hpsearch against the canonical recipe and the machine",
                           description="Training throughput, achieved compute, the whole "
                                       "study against the canonical Optuna + PyTorch recipe, "
                                       "pruners, workers and framework overhead, each run as "
                                       "its own process (about 30 minutes on 2 cores).")
    bench.add_argument("--trials", type=positive_int, default=50, metavar="N",
                       help="trials per study (default 50)")
    bench.add_argument("--repeats", type=positive_int, default=3, metavar="N",
                       help="runs of each side, alternating; medians are reported (default 3)")
    bench.add_argument("--what", nargs="+", choices=("all",) + BENCH_PARTS, default=["all"],
                       metavar="PART", help="all (default) or some of: " + ", ".join(BENCH_PARTS))
    bench.add_argument("--epochs", type=positive_int, default=10, metavar="N",
                       help="epochs of the fixed trial of throughput and compute (default 10)")
    bench.add_argument("--overhead-at", type=counts, default=(50, 1000), metavar="N,N",
                       help="study sizes at which overhead is measured (default 50,1000)")
    bench.add_argument("--out", default="studies/bench", metavar="DIR",
                       help="where bench.json and bench.md are written (default: studies/bench)")
    bench.set_defaults(func=cmd_bench)
    return parser


def store_flags(p: argparse.ArgumentParser, name: bool = True, artifacts: bool = True) -> None:
    """The flags that find a study, as `run` takes them."""
    from hpsearch.storage import DEFAULT_STORAGE

    p.add_argument("--config", metavar="PATH",
                   help="study file (TOML): its study.name and data_dir; default: digits")
    if name:
        p.add_argument("--study-name", metavar="NAME", help="default: study.name")
    p.add_argument("--storage", default=DEFAULT_STORAGE, metavar="URL",
                   help=f"the store (default: {DEFAULT_STORAGE})")
    if artifacts:
        p.add_argument("--artifacts", metavar="DIR",
                       help="the weights folder (default: artifacts/ beside a store file)")


def add_result_commands(sub) -> None:
    def command(name: str, func, help: str, description: str = None):
        p = sub.add_parser(name, allow_abbrev=False, help=help, description=description or help)
        p.set_defaults(func=func)
        return p

    report = command("report", cmd_report, "write the best-config report of a study",
                     "Write best_config.json, report.md, report.html and the charts.")
    store_flags(report)
    report.add_argument("--out", metavar="DIR",
                        help="default: studies/reports/<study>/ beside the store")
    report.add_argument("--retrain", action="store_true",
                        help="retrain the best trial when its weights are missing")
    report.add_argument("--device", default="auto", help="for --retrain: auto | cpu | cuda | mps")

    compare = command("compare", cmd_compare, "overlay several studies of one store")
    compare.add_argument("studies", nargs="+", metavar="STUDY")
    store_flags(compare, name=False, artifacts=False)
    compare.add_argument("--out", metavar="DIR",
                         help="default: studies/reports/compare-<studies>/ beside the store")

    best = command("best", cmd_best, "print the best configuration as JSON")
    store_flags(best, artifacts=False)

    status = command("status", cmd_status, "list the studies of a store")
    store_flags(status, name=False, artifacts=False)

    train = command("train", cmd_train, "retrain a best_config.json on train + validation",
                    "Retrain a best_config.json from scratch on train + validation, evaluate "
                    "it on the test split, save weights.pt and config.json side by side.")
    train.add_argument("--best", required=True, metavar="PATH", help="a best_config.json")
    train.add_argument("--out", metavar="DIR", help="default: model/ beside the JSON file")
    train.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    train.add_argument("--data-dir", metavar="DIR", help="where mnist/cifar10 files are")

    dash = command("dashboard", cmd_dashboard, "run optuna-dashboard on a store",
                   "Run optuna-dashboard on the store and its weights folder.")
    store_flags(dash, name=False)
    dash.add_argument("--host", default="127.0.0.1",
                      help="default 127.0.0.1; the dashboard has no login, so keep it local")
    dash.add_argument("--port", type=whole_number(1), default=8080, metavar="N")


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
    except OSError as err:
        if not _from_a_print_here(err):  # a file's, a socket's, a worker's pipe: not the output
            raise
        _silence_stdout()
        if isinstance(err, BrokenPipeError):  # `| head` stopped reading: it has what it wanted
            return 0
        try:
            print(f"hpsearch: error: cannot write the output: {err.strerror}", file=sys.stderr)
        except OSError:
            pass  # stderr cannot be written either; the exit status still says it
        return EXIT_UNWRITABLE


def _from_a_print_here(err: OSError) -> bool:
    """Whether writing the output failed: only this module prints, so an error raised by a
    line of it, with no file named, is the output's (a full disk, a closed terminal)."""
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return err.filename is None and tb is not None and tb.tb_frame.f_code.co_filename == __file__


def _silence_stdout() -> None:
    """Point stdout at the null device, so that the last flush of what could not be written
    raises nothing more."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def program() -> None:
    """The `hpsearch` command."""
    exit_fast(main())


def exit_fast(code: int) -> None:
    """End the process as Python's exit would, without the interpreter's teardown.

    The teardown frees every module, torch's libraries last, one by one: 0.4 s after a bare
    `import torch` and 0.7 s after the default study on a 2-core Zen 5 EPYC, longer than
    two of its trials, and nothing of it reaches the disk. What an exit must do is done
    here: threads that are not daemons finish, the stores' connections close (SQLite folds
    its write-ahead log back into the store file then), the exit handlers run (logging's
    flush among them), and the output is flushed. The two private calls are the ones the
    interpreter's own exit makes. Not done: a garbage collection (0.12 s here), which only
    matters for files left open, and hpsearch closes every file it writes."""
    from hpsearch.storage import close_stores

    threading._shutdown()  # stops idle thread pools, then waits for every non-daemon thread
    # Explicitly, not left to the collector: a study can outlive its command, held by a
    # traceback that Optuna keeps of an optional import that failed (boto3's, for artifacts).
    close_stores()
    atexit._run_exitfuncs()
    code = code if isinstance(code, int) else 0
    for stream in (sys.stdout, sys.stderr):
        if stream is None:  # started with the stream closed
            continue
        try:
            stream.flush()
        except BrokenPipeError:  # a reader that stopped reading (`| head`): nothing is lost
            pass
        except (OSError, ValueError):  # a full disk, say: the output is lost, so say so
            code = code or EXIT_UNWRITABLE  # as Python's own exit does when it cannot flush
    os._exit(code)


def user_errors() -> tuple:
    """The exceptions that mean bad input: shown as one line, never as a traceback."""
    from hpsearch.data import DataError
    from hpsearch.report.collect import ReportError
    from hpsearch.storage import StorageError
    from hpsearch.study import SettingsMismatch
    from hpsearch.train import DeviceError

    return ConfigError, DataError, StorageError, DeviceError, SettingsMismatch, ReportError


def configure_logging(verbose: bool) -> None:
    import optuna

    logging.basicConfig(format="%(message)s", level=logging.INFO)
    optuna.logging.set_verbosity(optuna.logging.INFO if verbose else optuna.logging.WARNING)
    if not verbose:
        # Heartbeats and the GP sampler are marked experimental; the warning is noise here.
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    from hpsearch.study import hide_ctrl_c_tracebacks

    hide_ctrl_c_tracebacks()


def cmd_run(args: argparse.Namespace) -> int:
    from hpsearch.config import load_config
    from hpsearch.data import load_dataset
    from hpsearch.storage import (Backup, beside_store, check_store_file, open_storage,
                                  parse_storage, refuse_network_sqlite, use_wal)
    from hpsearch.study import (count_finished, grid_is_exhausted, handle_interrupts,
                                open_study, recover_dead_trials, runs_alone, settings_record)
    from hpsearch.train import choose_precision, configure_threads, resolve_device

    flags = {"study.trials": args.trials, "study.name": args.study_name,
             "train.epochs": args.epochs, "study.seed": args.seed, "study.backup": args.backup}
    flags = {k: v for k, v in flags.items() if v is not None}
    cfg = load_config(args.config, args.set, flags)
    device = resolve_device(args.device)
    choose_precision(device, cfg.train.precision)  # fp16 without CUDA: refused before any work
    spec = parse_storage(args.storage)
    refuse_network_sqlite(spec)
    folders = {"artifacts": artifact_dir(args, spec),
               "checkpoints": beside_store(spec, "checkpoints")}
    backup = Backup.of(cfg.study, spec, folders["artifacts"], folders["checkpoints"])
    restored = backup.restore_if_missing() if backup else None
    if restored:
        print(restored)
    check_store_file(spec)  # before any work, so a wrong path fails fast
    threads = configure_threads(args.workers) if device.type == "cpu" else None
    data = load_dataset(cfg.data, cfg.study.seed, device)
    if data.skipped:
        log.warning("warning: skipped %d unreadable image file(s), e.g. %s",
                    len(data.skipped), data.skipped[0])
    storage = open_storage(spec, heartbeat_interval=cfg.study.heartbeat_interval,
                           grace_period=cfg.study.grace_period)
    study = open_study(storage, cfg, settings_record(cfg, data),
                       alone=runs_alone(spec, args.workers))
    use_wal(spec, storage)
    done = count_finished(study)
    print_header(cfg, data, spec.display, device, threads, done, args.workers)
    if done >= cfg.study.trials or grid_is_exhausted(study):
        print_nothing_to_do(study, cfg, done, spec.display)
        return 0
    from_backup = bool(restored) and restored.startswith("restored")
    for number, queued in recover_dead_trials(study, restored=from_backup):
        then = "queued again" if queued else "not retried again (it died before)"
        print(f"Trial {number} was left running by a process that died: failed, {then}.")
    handle_interrupts()  # Ctrl-C, and SIGTERM from a stopped VM or notebook
    try:
        result = run_trials(args, cfg, flags, spec, study, data, device, folders, backup, done)
    finally:
        if backup:
            backup.sync(force=True)
    return finish(study, cfg, result, spec.display, args.timeout)


def run_trials(args, cfg, flags, spec, study, data, device, folders, backup, done: int):
    """The trials themselves: in this process, or in --workers spawned ones."""
    from hpsearch.objective import make_objective
    from hpsearch.storage import open_artifacts, sync_finished_trials

    with progress_bar(study, cfg.study.trials, done, quiet=args.quiet) as bar:
        if args.workers == 1:
            from hpsearch.study import run, runs_alone

            objective = make_objective(cfg, data, device, open_artifacts(folders["artifacts"]),
                                       folders["checkpoints"], backup)
            return run(study, objective, cfg.study.trials, timeout=args.timeout,
                       callbacks=(sync_finished_trials(spec), bar), alone=runs_alone(spec, 1))
        from hpsearch.workers import Plan, run_workers

        plan = Plan(args.config, tuple(args.set), flags, spec.url, args.device,
                    str(folders["artifacts"]), str(folders["checkpoints"]), args.timeout,
                    args.workers)
        return run_workers(plan, poll=lambda: bar.poll(study))


def print_nothing_to_do(study, cfg, done: int, store: str) -> None:
    if done >= cfg.study.trials:
        print(f"Study {cfg.study.name!r} already has {done} finished trials (target "
              f"{cfg.study.trials}); pass a larger --trials to run more.")
    else:
        print(f"Study {cfg.study.name!r} has tried every point of its grid ({done} finished "
              f"trials); widen [space] under a new --study-name to search further.")
    print_summary(study, None, store, cfg)


def finish(study, cfg, result, store: str, timeout) -> int:
    from hpsearch.study import count_finished

    print_summary(study, result, store, cfg)
    if result.stopped_by_failures:
        print(f"hpsearch: error: the last 5 trials failed; stopped. Last error: "
              f"{result.last_fail_reason}", file=sys.stderr)
        return EXIT_FAILED
    done = count_finished(study)
    if done < cfg.study.trials:
        if timeout and result.seconds >= timeout:
            why = "--timeout reached"
        else:
            why = "the grid is exhausted" if cfg.study.sampler == "grid" else "stopped early"
        print(f"{done} of {cfg.study.trials} trials finished ({why}); run the same command "
              f"to continue.")
    return 0


def open_store(args: argparse.Namespace):
    """(spec, storage) of a store that must exist."""
    from hpsearch.storage import open_existing_storage, parse_storage

    spec = parse_storage(args.storage)
    return spec, open_existing_storage(spec)


def load_named_study(args: argparse.Namespace, storage, name: Optional[str] = None):
    """The study `name` (default: --study-name, else the study file's name), or an error that
    lists the studies the store holds."""
    import optuna

    from hpsearch.config import load_config
    from hpsearch.report.collect import ReportError

    if name is None:
        name = getattr(args, "study_name", None) or load_config(args.config).study.name
    names = optuna.get_all_study_names(storage=storage)
    if name not in names:
        held = ", ".join(sorted(names)) if names else "none"
        raise ReportError(f"no study {name!r} in this store; its studies: {held} "
                          f"(pass --study-name NAME)")
    return optuna.load_study(study_name=name, storage=storage)


def study_data(study_cfg, split_seed: int, fingerprint: Optional[str], device="cpu"):
    """The dataset a study ran on, checked against the fingerprint it stored."""
    from hpsearch.data import DataError, load_dataset

    data = load_dataset(study_cfg.data, split_seed, device)
    if fingerprint and data.fingerprint != fingerprint:
        raise DataError(f"the images of {study_cfg.data.dataset} differ from those the study "
                        f"ran on; point data_dir (--config) at the original files")
    return data


def data_dir_of(args: argparse.Namespace) -> Optional[str]:
    from hpsearch.config import load_config

    return load_config(args.config).data.data_dir if args.config else None


def reports_dir(spec):
    from hpsearch.storage import beside_store

    return beside_store(spec, "reports")


def cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hpsearch.report import make_report
    from hpsearch.train import resolve_device

    device = resolve_device(args.device) if args.retrain else None
    spec, storage = open_store(args)
    study = load_named_study(args, storage)
    artifacts = existing_artifacts(args, spec)
    out = Path(args.out).resolve() if args.out else reports_dir(spec) / study.study_name
    settings = study.user_attrs.get("hpsearch") or {}

    def load_data(cfg):
        return study_data(cfg, settings.get("split_seed", cfg.study.seed),
                          (settings.get("data") or {}).get("fingerprint"))

    result = make_report(study, out, artifacts=artifacts, load_data=load_data,
                         data_dir=data_dir_of(args), retrain_device=device)
    for note in result.notes:
        print(f"note: {note}")
    if result.best is not None:
        test = result.test_accuracy
        print(f"Best: trial {result.best['trial']}, validation accuracy "
              f"{result.best['validation_accuracy']:.4f}"
              + ("" if test is None else f", test accuracy {test:.4f}"))
    print(f"Report: {out / 'report.html'} ({len(result.files)} files in {out})")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hpsearch.report.compare import make_comparison

    spec, storage = open_store(args)
    studies = [load_named_study(args, storage, name) for name in dict.fromkeys(args.studies)]
    default = reports_dir(spec) / ("compare-" + "-".join(s.study_name for s in studies))[:120]
    out = Path(args.out).resolve() if args.out else default
    result = make_comparison(studies, out)
    print(f"Comparison: {out / 'report.html'} ({len(result.files)} files in {out})")
    return 0


def cmd_best(args: argparse.Namespace) -> int:
    import json

    from hpsearch.report import collect

    _, storage = open_store(args)
    study = load_named_study(args, storage)
    trials = study.get_trials(deepcopy=False)
    settings = collect.study_settings(study)
    best = collect.best_trial(trials)
    if best is None:
        print(f"hpsearch: study {study.study_name!r} has no completed trial yet",
              file=sys.stderr)
        return EXIT_FAILED
    cfg = collect.config_of(settings, data_dir_of(args))
    print(json.dumps(collect.best_config(study, best, settings, cfg), indent=2))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    import optuna

    from hpsearch.study import state_counts

    spec, storage = open_store(args)
    names = sorted(optuna.get_all_study_names(storage=storage))
    print(f"Store: {spec.display}")
    if not names:
        print("No studies yet.")
        return 0
    header = ("study", "complete", "pruned", "failed", "running", "waiting", "best",
              "last activity")
    lines = [header]
    for name in names:
        study = optuna.load_study(study_name=name, storage=storage)
        counts = state_counts(study)
        trials = study.get_trials(deepcopy=False)
        times = [t.datetime_complete or t.datetime_start for t in trials]
        times = [t for t in times if t is not None]
        try:
            best = f"{study.best_value:.4f}"
        except ValueError:
            best = "-"
        lines.append((name, *(str(counts.get(k, 0)) for k in
                              ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")),
                      best, max(times).strftime("%Y-%m-%d %H:%M:%S") if times else "-"))
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    for row in lines:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                        for i, (c, w) in enumerate(zip(row, widths))).rstrip())
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hpsearch import best as best_model
    from hpsearch.report.collect import config_of
    from hpsearch.train import configure_threads, resolve_device

    path = Path(args.best).expanduser().resolve()
    try:
        best = best_model.read_best_config(path)
        cfg = config_of({"config": best["config"]}, args.data_dir)
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"--best {path}: {err}") from None
    device = resolve_device(args.device)
    if device.type == "cpu":
        configure_threads()
    data = study_data(cfg, best.get("split_seed", cfg.study.seed), best.get("data_fingerprint"),
                      device)
    print(f"Retraining trial {best.get('trial')} of {best.get('study')!r} on train + "
          f"validation ({len(data.y_train) + len(data.y_val)} images, {best['epochs']} "
          f"epochs) on {device}", flush=True)
    model = best_model.retrain(best["params"], best["epochs"], best["seed"],
                               best_model.with_validation_in_training(data), device,
                               best.get("precision", "auto"))
    preds = best_model.predictions_on_test(model, data)
    out = Path(args.out).expanduser().resolve() if args.out else path.parent / "model"
    saved = {**{k: v for k, v in best.items() if k != "confusion_matrix"},
             "trained_on": "train+validation", "test_accuracy": round(preds.accuracy, 6),
             "test_size": int(len(preds.true))}
    weights, config = best_model.save_model(model, saved, out)
    print(f"Test accuracy {preds.accuracy:.4f} on {len(preds.true)} held-out images")
    print(f"Saved: {weights} and {config}")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    import optuna_dashboard

    spec, storage = open_store(args)
    folder = artifact_dir(args, spec)
    artifacts = existing_artifacts(args, spec)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"optuna-dashboard on {spec.display}" + (f" with weights in {folder}" if artifacts
                                                    else ""))
    print(f"Open http://{host}:{args.port}/ (Ctrl-C stops it)", flush=True)
    try:
        optuna_dashboard.run_server(storage, host=args.host, port=args.port,
                                    artifact_store=artifacts)
    except OSError as err:
        print(f"hpsearch: error: cannot serve on {args.host}:{args.port} ({err.strerror}); "
              f"pass another --port", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("\nDashboard stopped.")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from hpsearch.bench import PARTS, markdown, run_all

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    parts = PARTS if "all" in args.what else tuple(p for p in PARTS if p in args.what)

    def save(result: dict) -> None:
        (out / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
        (out / "bench.md").write_text(markdown(result) + "\n")

    run_all(parts, args.trials, args.repeats, args.epochs, out, args.overhead_at,
            say=lambda line: print(line, flush=True), done=save)
    print((out / "bench.md").read_text(), end="")
    print(f"Written: {out / 'bench.json'}, {out / 'bench.md'}")
    return 0


def artifact_dir(args: argparse.Namespace, spec):
    from pathlib import Path

    from hpsearch.storage import beside_store

    return Path(args.artifacts).expanduser().resolve() if args.artifacts else \
        beside_store(spec, "artifacts")


def existing_artifacts(args: argparse.Namespace, spec):
    """The artifact store of the weights a study saved, for reading: None when the default
    folder does not exist (a study run without weights); a folder named with --artifacts
    that does not exist is a mistake, not a study without weights."""
    from hpsearch.storage import StorageError, open_artifacts

    folder = artifact_dir(args, spec)
    if folder.is_dir():
        return open_artifacts(folder)
    if args.artifacts:
        raise StorageError(f"--artifacts {args.artifacts}: no such folder; pass the folder the "
                           f"study saved its weights in (default: artifacts/ beside the store)")
    return None


def print_header(cfg, data, store: str, device, threads, done: int, workers: int) -> None:
    from hpsearch.train import choose_precision

    sizes = f"{len(data.y_train)} train / {len(data.y_val)} val / {len(data.y_test)} test"
    where = f"{device} ({threads} threads)" if threads else str(device)
    if workers > 1:
        where = f"{workers} worker processes on {where.replace(' threads', ' threads each')}"
    where += f" in {choose_precision(device, cfg.train.precision).name}"  # auto differs by device
    print(f"Store: {store}")
    print(f"Study {cfg.study.name!r}: {done} of {cfg.study.trials} trials finished; "
          f"{cfg.study.sampler} sampler, {cfg.study.pruner} pruner, {cfg.train.epochs} epochs")
    print(f"Data: {cfg.data.dataset}, {sizes} images of {data.image_size}x{data.image_size}, "
          f"{len(data.classes)} classes; training on {where}")


class progress_bar:
    """A tqdm bar over the study's finished trials, with the best value so far. The best is
    read from the store once, then taken from each trial this process finishes (a read per
    trial cost about 1 ms on SQLite and 3 ms on PostgreSQL); `poll` reads both again."""

    def __init__(self, study, target: int, done: int, quiet: bool):
        from optuna.study import StudyDirection
        from tqdm.auto import tqdm

        self.bar = tqdm(total=target, initial=done, unit="trial", disable=quiet,
                        dynamic_ncols=True, file=sys.stderr)
        self.sign = 1 if study.direction == StudyDirection.MAXIMIZE else -1
        self.best = None
        self._read_best(study)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.bar.close()

    def __call__(self, study, trial) -> None:
        from optuna.trial import TrialState

        from hpsearch.study import FINISHED

        if trial.state in FINISHED:
            self.bar.update(1)
        if trial.state == TrialState.COMPLETE and (
                self.best is None or self.sign * (trial.value - self.best) > 0):
            self._show(trial.value)

    def poll(self, study) -> None:
        """For workers in other processes: read the finished count from the store."""
        from hpsearch.study import count_finished

        self.bar.update(count_finished(study) - self.bar.n)
        self._read_best(study)

    def _read_best(self, study) -> None:
        try:
            self._show(study.best_value)
        except ValueError:
            pass  # no completed trial yet

    def _show(self, best: float) -> None:
        self.best = best
        self.bar.set_postfix_str(f"best={best:.4f}")


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
        if result.lock_retries:
            rows.append(("Lock retries", f"{result.lock_retries} (the SQLite store was busy "
                                         f"for over a second each time; nothing was lost)"))
    rows.append(("Store", store))
    print()
    for label, value in rows:
        print(f"{label:<14} {value}")


def run_study_main() -> int:
    """`python run_study.py ...` is `hpsearch run ...`."""
    argv = sys.argv[1:]
    return main(argv if argv[:1] == ["run"] else ["run", *argv])


if __name__ == "__main__":  # pragma: no cover
    exit_fast(main())
