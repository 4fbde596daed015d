"""`python -m hpsearch.bench` (and `make bench`): run the suite, write bench.json and bench.md."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hpsearch.bench.panel import (DEFAULT_PANEL, REFERENCE_EPOCHS, PanelOptions, bench_panel,
                                  parse_data, time_budget)
from hpsearch.bench.suite import NAMED_ONLY, PARTS, PHOTOS_STUDY, PhotoOptions, run_all
from hpsearch.bench.tables import markdown


def whole_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive(text: str) -> float:
    """A number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def device_name(text: str) -> str:
    """cpu, cuda or cuda:N."""
    if text not in ("cpu", "cuda") and not (text.startswith("cuda:") and text[5:].isdigit()):
        raise argparse.ArgumentTypeError(f"expected cuda, cuda:N or cpu, got {text!r}")
    return text


def counts(text: str) -> tuple:
    """Whole numbers of at least 1, separated by commas."""
    return tuple(whole_number(part.strip()) for part in text.split(","))


def argument(parse):
    """`parse` as an argparse type: its ValueError becomes argparse's one-line error."""
    def checked(text: str):
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return checked


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line instead of the usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="python -m hpsearch.bench", allow_abbrev=False,
        description="Training throughput, achieved compute, the whole study against the "
                    "canonical Optuna + PyTorch recipe, pruners, workers, framework "
                    "overhead, a folder of photos against the canonical photo recipe and, "
                    "when named, a panel of data sets in accuracy per minute, each run as its "
                    "own process.")
    p.add_argument("--trials", type=whole_number, default=50, metavar="N",
                   help="trials per study (default 50)")
    p.add_argument("--repeats", type=whole_number, default=3, metavar="N",
                   help="runs of each side, alternating; medians are reported (default 3)")
    p.add_argument("--what", nargs="+", choices=("all",) + PARTS, default=["all"],
                   metavar="PART", help="all (default: every part but "
                   + ", ".join(NAMED_ONLY) + ") or some of: " + ", ".join(PARTS))
    p.add_argument("--epochs", type=whole_number, default=10, metavar="N",
                   help="epochs of the fixed trials of throughput, compute and photos, and "
                        "of the recipes' trials in the panel (default 10)")
    p.add_argument("--overhead-at", type=counts, default=(50, 1000), metavar="N,N",
                   help="study sizes at which overhead is measured (default 50,1000)")
    p.add_argument("--photo-folder", type=Path, metavar="DIR",
                   help="photos: a folder of class sub-folders of images (default: one drawn "
                        "under --out, photo-folder/, and kept there for the next run)")
    p.add_argument("--photo-per-class", type=whole_number, default=500, metavar="N",
                   help="photos: images per class of the drawn folder (default 500)")
    p.add_argument("--photo-trials", type=whole_number, default=20, metavar="N",
                   help="photos: trials per study (default 20)")
    p.add_argument("--photo-config", type=Path, default=PHOTOS_STUDY, metavar="PATH",
                   help="photos and panel: hpsearch's study file for a folder (default: "
                        "studies/photos.toml)")
    p.add_argument("--panel", nargs="+", type=argument(parse_data), metavar="DATA",
                   help="panel: its data sets, of digits, easy-N@PX, hard-N@PX (a drawn "
                        "folder of N per class at PX pixels), faces@PX (default: "
                        + " ".join(DEFAULT_PANEL) + ")")
    p.add_argument("--panel-trials", type=whole_number, default=20, metavar="N",
                   help="panel: trials per study of either side (default 20)")
    p.add_argument("--panel-time", type=argument(time_budget), metavar="DURATION",
                   help="panel: hpsearch's time budget, passed as `hpsearch run --time` "
                        "(300s, 20m, 1.5h, or recipe: the recipe's wall time on the same "
                        "data); the time, not --panel-trials, then ends its study")
    p.add_argument("--panel-short", type=float, default=0.0, metavar="SHARE",
                   help="panel: with --panel-time, hpsearch also runs on this share of the "
                        "budget (e.g. 0.33), sized to it from the start (default: not)")
    p.add_argument("--panel-epochs", type=whole_number, default=REFERENCE_EPOCHS, metavar="N",
                   help=f"panel: epochs of the reference configuration (default "
                        f"{REFERENCE_EPOCHS})")
    p.add_argument("--panel-set", action="append", default=[], metavar="KEY=VALUE",
                   help="panel: override a key of hpsearch's study files, e.g. "
                        "study.pruner='hyperband' (repeatable)")
    p.add_argument("--out", default="studies/bench", metavar="DIR",
                   help="where bench.json and bench.md are written (default: studies/bench)")
    return p


def main() -> int:
    args = build_parser().parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    parts = tuple(p for p in PARTS
                  if p in args.what or ("all" in args.what and p not in NAMED_ONLY))

    def save(result: dict) -> None:
        (out / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
        (out / "bench.md").write_text(markdown(result) + "\n")

    photos = PhotoOptions(args.photo_trials, args.photo_folder, args.photo_per_class,
                          args.photo_config)
    data = tuple(d.name for d in args.panel) if args.panel else DEFAULT_PANEL
    panel = PanelOptions(data, args.panel_trials, args.panel_time, args.panel_epochs,
                         tuple(args.panel_set), config=args.photo_config,
                         short=args.panel_short)
    named = {"panel": (f"Panel: {', '.join(panel.data)}: the recipe, hpsearch and the "
                       f"reference, {args.repeats}x each.",
                       lambda: bench_panel(panel, args.repeats, args.epochs, out))}
    run_all(parts, args.trials, args.repeats, args.epochs, out, args.overhead_at,
            say=lambda line: print(line, flush=True), done=save, photos=photos, named=named)
    print((out / "bench.md").read_text(), end="")
    print(f"Written: {out / 'bench.json'}, {out / 'bench.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
