"""The command line: the parser, one function per command, and the exit codes.

What the commands print is printed by hpsearch.console; a run is assembled by
hpsearch.session. Nothing imports this module.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional

from hpsearch import console, interrupts
from hpsearch.errors import USER_ERRORS, OutOfMemory
from hpsearch.flags import (dashed_values, duration, epochs, positive_float, positive_int,
                            trials_flag, whole_number)

EXIT_USAGE = 2  # bad input: a flag, a config value, a store, a device
EXIT_FAILED = 1  # the study stopped because its trials kept crashing
EXIT_INTERRUPTED = 130


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line instead of the usage block."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> Parser:
    from hpsearch.storage import DEFAULT_STORAGE

    parser = Parser(prog="hpsearch", allow_abbrev=False,
                    description="Hyperparameter search for image classifiers.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    run = sub.add_parser("run", allow_abbrev=False,
                         help="run or resume a study until it has its trials",
                         description="Run a study, or resume it: --trials and --time are "
                                     "the study's totals.")
    run.add_argument("--config", metavar="PATH",
                     help="study file (TOML); default: the packaged digits study")
    run.add_argument("--trials", type=positive_int, metavar="N",
                     help="finished trials the study should hold (default: study.trials; "
                          "no limit when --time is given without it)")
    run.add_argument("--time", type=duration, metavar="DURATION",
                     help="the time the study may spend on trials over all its runs: 90 "
                          "(seconds), 300s, 20m, 1.5h or 1h30m (default: study.time, none); a "
                          "rerun spends what is left. It ends the study, as --trials does: no "
                          "trial starts after it, the one running then finishes")
    run.add_argument("--timeout", type=positive_float, metavar="SECONDS",
                     help="stop this run after SECONDS (the study can be resumed; "
                          "--time is the study's total)")
    run.add_argument("--storage", default=DEFAULT_STORAGE, metavar="URL",
                     help=f"sqlite:///PATH, postgresql://USER@HOST/DB or journal:PATH "
                          f"(default: {DEFAULT_STORAGE})")
    run.add_argument("--study-name", metavar="NAME", help="default: study.name")
    run.add_argument("--artifacts", metavar="DIR",
                     help="where completed trials' weights go (default: artifacts/ beside a "
                          "store file, else studies/artifacts)")
    run.add_argument("--epochs", type=epochs, metavar="N",
                     help="the most a trial trains: N or auto (default: train.epochs)")
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

    sub.add_parser("bench", add_help=False,
                   help="measure hpsearch against the canonical recipe (python -m hpsearch.bench)")
    return parser


def store_flags(p: argparse.ArgumentParser, name: bool = True, artifacts: bool = True) -> None:
    """The flags that find a study, as `run` takes them."""
    from hpsearch.storage import DEFAULT_STORAGE

    p.add_argument("--config", metavar="PATH",
                   help="study file (TOML): its study.name and data_dir; default: digits")
    if name:
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="a study-file key as `run` took it (study.name, data.data_dir); "
                            "repeatable")
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
                     "Write report.pdf, report.html and report.md (one document), the charts, "
                     "best_config.json, next.toml (the next study) and study.toml (this one).")
    store_flags(report)
    report.add_argument("--out", metavar="DIR",
                        help="default: reports/<study>/ beside a store file "
                             "(studies/reports/<study>/ for the default store)")
    report.add_argument("--retrain", action="store_true",
                        help="retrain the best trial when its weights are missing")
    report.add_argument("--device", default="auto", help="for --retrain: auto | cpu | cuda | mps")

    compare = command("compare", cmd_compare, "overlay two or more studies of one store")
    compare.add_argument("studies", nargs="+", metavar="STUDY")
    store_flags(compare, name=False, artifacts=False)
    compare.add_argument("--out", metavar="DIR",
                         help="default: reports/compare-<studies>/ beside a store file")

    best = command("best", cmd_best, "print the best trial of a study")
    store_flags(best, artifacts=False)
    best.add_argument("--json", action="store_true",
                      help="the full record as JSON, as best_config.json holds it (the test "
                           "split's fields null until `hpsearch report` measures them)")

    status = command("status", cmd_status, "list the studies of a store")
    store_flags(status, name=False, artifacts=False)

    train = command("train", cmd_train, "retrain a best_config.json on train + validation",
                    "Retrain a best_config.json from scratch on train + validation, evaluate "
                    "it on the test split, save weights.pt and config.json side by side.")
    train.add_argument("--best", required=True, metavar="PATH", help="a best_config.json")
    train.add_argument("--out", metavar="DIR", help="default: model/ beside the JSON file")
    train.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    train.add_argument("--data-dir", metavar="DIR", help="where mnist/cifar10 files are")

    predict = command("predict", cmd_predict, "classify image files with a study's best model",
                      "Classify image files (or every file under folders) with the best model "
                      "of a study, or a saved one (--model), decoding each as training did. "
                      "Writes CSV: file, class, probability (and the next classes with "
                      "--top-k).")
    predict.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    store_flags(predict)
    predict.add_argument("--model", metavar="DIR",
                         help="a saved model (weights.pt and config.json: `hpsearch train "
                              "--best` or best_model().save) instead of the study's best")
    predict.add_argument("--top-k", type=positive_int, default=1, metavar="K",
                         help="the K most probable classes per image (default 1)")
    predict.add_argument("--out", metavar="FILE", help="the CSV file (default: printed)")
    predict.add_argument("--device", default="cpu", help="cpu (default) | auto | cuda | mps")

    dash = command("dashboard", cmd_dashboard, "run optuna-dashboard on a store",
                   "Run optuna-dashboard on the store and its weights folder.")
    store_flags(dash, name=False)
    dash.add_argument("--host", default="127.0.0.1",
                      help="default 127.0.0.1; the dashboard has no login, so keep it local")
    dash.add_argument("--port", type=whole_number(1), default=8080, metavar="N",
                      help="default 8080")
    dash.add_argument("--verbose", action="store_true",
                      help="log each request (the page polls every few seconds)")


def main(argv: Optional[list] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["run"]:
        interrupts.install()  # first thing: a Ctrl-C is never lost, nor acted on mid-write
    try:
        if argv[:1] == ["bench"]:
            return bench(argv[1:])
        args = build_parser().parse_args(dashed_values(argv))
        console.configure_logging(verbose=getattr(args, "verbose", False))
        return args.func(args)
    except KeyboardInterrupt:
        console.interrupted()
        return EXIT_INTERRUPTED
    except USER_ERRORS as err:
        console.error(str(err))
        return EXIT_USAGE
    except OutOfMemory as err:  # training outside a study: train --best, report --retrain
        console.error(str(err))
        return EXIT_FAILED
    except OSError as err:
        if not console.output_failed(err):  # a file's, a socket's, a worker's pipe
            raise
        console.silence_stdout()
        if isinstance(err, BrokenPipeError):  # `| head` stopped reading: it has what it wanted
            return 0
        try:
            console.error(f"cannot write the output: {err.strerror}")
        except OSError:
            pass  # stderr cannot be written either; the exit status still says it
        return console.EXIT_UNWRITABLE


def program() -> None:
    """The `hpsearch` command."""
    console.exit_fast(main())


def run_study_main() -> None:
    """`python run_study.py ...` is `hpsearch run ...`."""
    argv = sys.argv[1:]
    console.exit_fast(main(argv if argv[:1] == ["run"] else ["run", *argv]))


def bench(argv: list) -> int:
    """`hpsearch bench ...` is `python -m hpsearch.bench ...`, the suite beside the product."""
    import importlib.util
    import subprocess

    if importlib.util.find_spec("hpsearch.bench") is None:
        console.error("this installation has no benchmark suite (hpsearch/bench); run it from "
                      "a clone of the repository: make bench")
        return EXIT_USAGE
    code = subprocess.call([sys.executable, "-m", "hpsearch.bench", *argv])
    return 128 - code if code < 0 else code  # killed by signal N: 128 + N, as a shell says


def cmd_run(args: argparse.Namespace) -> int:
    from hpsearch.config import load_config
    from hpsearch.runs import run_study
    from hpsearch.session import RunOptions

    flags = {"study.trials": trials_flag(args), "study.time": args.time,
             "study.name": args.study_name, "train.epochs": args.epochs, "study.seed": args.seed,
             "study.backup": args.backup}
    cfg = load_config(args.config, args.set, {k: v for k, v in flags.items() if v is not None})
    options = RunOptions(storage=args.storage, device=args.device, workers=args.workers,
                         artifacts=args.artifacts, timeout=args.timeout)
    return EXIT_FAILED if run_study(cfg, options, args.quiet).failed else 0


def data_dir_of(args: argparse.Namespace) -> Optional[str]:
    from hpsearch.config import load_config

    sets = getattr(args, "set", [])
    return load_config(args.config, sets).data.data_dir if args.config or sets else None


def open_store(args: argparse.Namespace):
    """(spec, storage) of a store that must exist."""
    from hpsearch.storage import open_existing_storage, parse_storage

    spec = parse_storage(args.storage)
    return spec, open_existing_storage(spec)


def named_study(args: argparse.Namespace, storage, name: Optional[str] = None):
    """The study `name` (default: --study-name, else the study file's name)."""
    from hpsearch.config import load_config
    from hpsearch.storage import load_named_study

    if name is None:
        name = getattr(args, "study_name", None) or load_config(
            args.config, getattr(args, "set", [])).study.name
    return load_named_study(storage, name)


def cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hpsearch.board import report_and_attach
    from hpsearch.storage import beside_store
    from hpsearch.train import resolve_device

    device = resolve_device(args.device) if args.retrain else None
    spec, storage = open_store(args)
    study = named_study(args, storage)
    out = Path(args.out).resolve() if args.out else beside_store(spec, "reports") / \
        study.study_name
    result, unattached = report_and_attach(study, spec, out, args.artifacts,
                                           data_dir_of(args), device)
    console.report_written(result.notes, result.best, out, len(result.files), unattached)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hpsearch.report.compare import load_studies, make_comparison
    from hpsearch.storage import beside_store

    spec, storage = open_store(args)
    names = list(dict.fromkeys(args.studies))
    if len(names) < 2:
        console.error(f"compare overlays two or more studies of one store; got one: "
                      f"{names[0]!r}. Run `hpsearch report` for a single study.")
        return EXIT_USAGE
    studies = load_studies(storage, names)
    default = beside_store(spec, "reports") / \
        ("compare-" + "-".join(s.study_name for s in studies))[:120]
    out = Path(args.out).resolve() if args.out else default
    result = make_comparison(studies, out)
    console.say(f"Comparison: {out / 'report.html'} ({len(result.files)} files in {out})")
    return 0


def cmd_best(args: argparse.Namespace) -> int:
    import json

    from hpsearch import records
    from hpsearch.report import collect
    from hpsearch.storage import beside_store

    spec, storage = open_store(args)
    study = named_study(args, storage)
    settings = collect.study_settings(study)
    best = collect.best_trial(study.get_trials(deepcopy=False))
    if best is None:
        console.error(f"study {study.study_name!r} has no completed trial yet")
        return EXIT_FAILED
    cfg = records.config_of(settings, data_dir_of(args))
    record = collect.best_config(study, best, settings, cfg)
    tested = records.tested_of(study, best.number)
    if args.json:  # best_config.json's record; the test fields null until a report measures
        tested = tested or {}
        record.update({k: tested.get(k) for k in records.TESTED_FIELDS})
        console.say(json.dumps(record, indent=2))
        return 0
    report_file = beside_store(spec, "reports") / study.study_name / "best_config.json"
    console.best(record, tested, report_file)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    import optuna

    from hpsearch.records import status_row

    spec, storage = open_store(args)
    names = sorted(optuna.get_all_study_names(storage=storage))
    studies = [optuna.load_study(study_name=name, storage=storage) for name in names]
    console.status(spec.display, [status_row(study) for study in studies])
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hpsearch import best as best_model
    from hpsearch.data import study_data
    from hpsearch.train import configure_threads, resolve_device

    path = Path(args.best).expanduser().resolve()
    best, cfg = best_model.read_best(path, args.data_dir)
    device = resolve_device(args.device)
    if device.type == "cpu":
        configure_threads()
    data = study_data(cfg, best.get("split_seed", cfg.study.seed), best.get("data_fingerprint"),
                      device)
    console.say(f"Retraining trial {best.get('trial')} of {best.get('study')!r} on train + "
                f"validation ({len(data.y_train) + len(data.y_val)} images, {best['epochs']} "
                f"epochs) on {device}", flush=True)
    model, preds, saved = best_model.final_model(best, data, device)
    out = Path(args.out).expanduser().resolve() if args.out else path.parent / "model"
    weights, config = best_model.save_model(model, saved, out)
    console.say(f"Test accuracy {preds.accuracy:.4f} on {len(preds.true)} held-out images")
    console.say(f"Saved: {weights} and {config}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hpsearch import api
    from hpsearch.errors import DataError
    from hpsearch.train import resolve_device
    from hpsearch.trained import predictions_csv, save_csv, skipped_note

    missing = [p for p in args.paths if not Path(p).exists()]
    if missing:
        raise DataError(f"no such file or folder: {missing[0]}"
                        + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    device = resolve_device(args.device)
    if args.model:
        model = api.load_model(args.model, device)
    else:
        from hpsearch.config import load_config

        name = args.study_name or load_config(args.config, args.set).study.name
        model = api.load(name, storage=args.storage, config=args.config,
                         artifacts=args.artifacts).best_model(str(device))
    x, sources, skipped = model.images(args.paths)
    if not sources:
        raise DataError(f"none of the {len(skipped)} files given is an image PIL can read"
                        f" (the first: {skipped[0]})" if skipped else "no files were given")
    found = model.predict_images(x, sources, args.top_k)
    text = predictions_csv(found, args.top_k)
    if args.out:
        save_csv(text, args.out)
    else:
        console.say(text, end="")
    console.predicted(len(found), skipped_note(skipped) if skipped else "", args.out)
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from hpsearch import board
    from hpsearch.storage import artifact_folder, existing_artifacts

    spec, storage = open_store(args)
    artifacts = existing_artifacts(spec, args.artifacts)
    app = board.app(storage, artifact_store=artifacts)
    weights = artifact_folder(spec, args.artifacts) if artifacts else None
    console.dashboard_started(spec.display, weights, args.host, args.port)
    try:
        board.serve(app, args.host, args.port, console.request if args.verbose else None)
    except OSError as err:
        console.error(f"cannot serve on {args.host}:{args.port} ({err.strerror}); pass "
                      f"another --port")
        return EXIT_USAGE
    except KeyboardInterrupt:
        console.say("\nDashboard stopped.")
    return 0


if __name__ == "__main__":  # pragma: no cover
    console.exit_fast(main())
