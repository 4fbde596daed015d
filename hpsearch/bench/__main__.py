"""`python -m hpsearch.bench` (and `make bench`): run the suite, write bench.json and bench.md."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hpsearch.bench.suite import PARTS, PHOTOS_STUDY, PhotoOptions, run_all
from hpsearch.bench.tables import markdown


def whole_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def counts(text: str) -> tuple:
    """Whole numbers of at least 1, separated by commas."""
    return tuple(whole_number(part.strip()) for part in text.split(","))


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line instead of the usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="python -m hpsearch.bench", allow_abbrev=False,
        description="Training throughput, achieved compute, the whole study against the "
                    "canonical Optuna + PyTorch recipe, pruners, workers, framework "
                    "overhead and a folder of photos against the canonical photo recipe, each "
                    "run as its own process.")
    p.add_argument("--trials", type=whole_number, default=50, metavar="N",
                   help="trials per study (default 50)")
    p.add_argument("--repeats", type=whole_number, default=3, metavar="N",
                   help="runs of each side, alternating; medians are reported (default 3)")
    p.add_argument("--what", nargs="+", choices=("all",) + PARTS, default=["all"],
                   metavar="PART", help="all (default) or some of: " + ", ".join(PARTS))
    p.add_argument("--epochs", type=whole_number, default=10, metavar="N",
                   help="epochs of the fixed trials of throughput, compute and photos "
                        "(default 10)")
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
                   help="photos: hpsearch's study file (default: studies/photos.toml)")
    p.add_argument("--out", default="studies/bench", metavar="DIR",
                   help="where bench.json and bench.md are written (default: studies/bench)")
    return p


def main() -> int:
    args = build_parser().parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    parts = PARTS if "all" in args.what else tuple(p for p in PARTS if p in args.what)

    def save(result: dict) -> None:
        (out / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
        (out / "bench.md").write_text(markdown(result) + "\n")

    photos = PhotoOptions(args.photo_trials, args.photo_folder, args.photo_per_class,
                          args.photo_config)
    run_all(parts, args.trials, args.repeats, args.epochs, out, args.overhead_at,
            say=lambda line: print(line, flush=True), done=save, photos=photos)
    print((out / "bench.md").read_text(), end="")
    print(f"Written: {out / 'bench.json'}, {out / 'bench.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
