"""What a report writes: its files, in order, and each figure twice (a PNG for report.md and
report.html, a one-page PDF drawing for report.pdf)."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import hpsearch.report.draw as draw
from hpsearch.report.render import Image

@dataclass
class ReportResult:
    folder: Path
    files: list = field(default_factory=list)  # written, in order
    notes: list = field(default_factory=list)  # what could not be drawn, and why
    best: Optional[dict] = None  # best_config.json's content
    test_accuracy: Optional[float] = None
    figures: dict = field(default_factory=dict)  # file name -> (PDF bytes, width, height in)


def write_text(path: Path, text: str, result: ReportResult) -> None:
    path.write_text(text, encoding="utf-8")
    result.files.append(path)


def figure(result: ReportResult, fig, filename: str, caption: str,
           tight: bool = False) -> Image:
    """Save `fig` as `filename` (PNG) and keep its drawing for the PDF."""
    draw.save(fig, result.folder / filename, tight)
    result.files.append(result.folder / filename)
    result.figures[filename] = vector(fig, tight)
    return Image(filename, caption)


def vector(fig, tight: bool = False) -> tuple:
    """(a one-page PDF of the figure, its width and height in inches) for report.pdf."""
    buf = io.BytesIO()
    fig.savefig(buf, format="pdf", bbox_inches="tight" if tight else None)
    box = PdfBox(buf.getvalue())
    return buf.getvalue(), box.width / 72, box.height / 72


class PdfBox:
    """The page size of a one-page PDF matplotlib wrote (its MediaBox, in points)."""

    def __init__(self, data: bytes):
        found = re.search(rb"/MediaBox\s*\[\s*([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)",
                          data)
        if found is None:
            raise ValueError("matplotlib wrote a PDF without a page size")
        x0, y0, x1, y1 = (float(v) for v in found.groups())
        self.width, self.height = x1 - x0, y1 - y0
