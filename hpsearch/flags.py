"""Types of the command line's flag values: each turns a text into a value or says in one
line what is wrong with it (argparse shows the line and exits with status 2)."""

from __future__ import annotations

import argparse
from typing import Optional


def _number(kind: type, ok, what: str, limit: str):
    """An argparse type: a `kind` for which `ok(value)` holds."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not ok(value):
            shown = value if kind is int else text
            raise argparse.ArgumentTypeError(f"must be {limit}, got {shown}")
        return value

    return parse


def whole_number(minimum: int):
    return _number(int, lambda v: v >= minimum, "a whole number", f"at least {minimum}")


positive_int = whole_number(1)
positive_float = _number(float, lambda v: v > 0, "a number of seconds", "positive")


def epochs(text: str):
    """An argparse type: `auto` or a whole number of epochs, at least 1."""
    return text if text == "auto" else positive_int(text)


def duration(text: str) -> float:
    """An argparse type: a duration above zero (see config.duration_seconds), in seconds."""
    from hpsearch.config import DURATION_FORMS, duration_seconds

    seconds = duration_seconds(text)
    if seconds is None:
        raise argparse.ArgumentTypeError(f"expected a duration above zero: {DURATION_FORMS}; "
                                         f"got {text!r}")
    return seconds


DASHED_VALUES = ("--time",)  # flags whose bad values may start with a dash (-5m)


def dashed_values(argv: list) -> list:
    """`--time -5m` as `--time=-5m`: argparse takes a value that starts with a dash for a
    flag (unless it is a plain number) and would say the value is missing, not what is wrong
    with it."""
    out = []
    for arg in argv:
        if out and out[-1] in DASHED_VALUES and arg.startswith("-") and arg[1:2].isdigit():
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def trials_flag(args: argparse.Namespace) -> Optional[int]:
    """--trials; with --time and no trial count on the command line, 0 (no limit): the time
    budget, not the study file's count, ends the study."""
    if args.trials is not None or args.time is None:
        return args.trials
    named = any(item.partition("=")[0].strip() == "study.trials" for item in args.set)
    return None if named else 0
