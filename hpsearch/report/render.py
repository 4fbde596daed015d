"""A report as plain blocks -> Markdown and one self-contained HTML file."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Text:
    text: str


@dataclass
class Table:
    header: list
    rows: list


@dataclass
class Image:
    filename: str  # a PNG in the report folder
    caption: str  # one line on how to read it


@dataclass
class Section:
    title: str
    blocks: list = field(default_factory=list)


def markdown(title: str, sections: list) -> str:
    out = [f"# {title}", ""]
    for section in sections:
        out += [f"## {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, Text):
                out += [block.text, ""]
            elif isinstance(block, Table):
                out += [_md_row(block.header), _md_row(["---"] * len(block.header))]
                out += [_md_row(r) for r in block.rows] + [""]
            else:
                out += [f"![{block.caption}]({block.filename})", "", f"*{block.caption}*", ""]
    return "\n".join(out)


def _md_row(cells) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


CSS = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1100px;
       margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { padding: 0.25em 0.7em; border-bottom: 1px solid #e5e5e5; text-align: left; }
th { background: #f6f6f6; } .num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1em 0 2em; } img { max-width: 100%; }
figcaption { color: #555; font-size: 0.9em; }
"""


def html_page(title: str, sections: list, folder: Path) -> str:
    """One file: images are embedded as data URIs, the style is inline, nothing is fetched."""
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
           f"<h1>{html.escape(title)}</h1>"]
    for section in sections:
        out.append(f"<h2>{html.escape(section.title)}</h2>")
        for block in section.blocks:
            if isinstance(block, Text):
                out.append(f"<p>{_inline(block.text)}</p>")
            elif isinstance(block, Table):
                out.append(_html_table(block))
            else:
                data = base64.b64encode((folder / block.filename).read_bytes()).decode("ascii")
                out.append(f'<figure><img alt="{html.escape(block.caption)}" '
                           f'src="data:image/png;base64,{data}">'
                           f"<figcaption>{html.escape(block.caption)}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out)


def _html_table(table: Table) -> str:
    """Columns of numbers align right, whole; a table of label-value pairs (an empty
    header) has no header row."""
    numeric = numeric_columns(table)
    head = ""
    if any(str(h) for h in table.header):
        head = "<thead><tr>" + "".join(
            ('<th class="num">' if n else "<th>") + f"{html.escape(str(h))}</th>"
            for h, n in zip(table.header, numeric)) + "</tr></thead>"
    body = []
    for row in table.rows:
        cells = "".join(f'<td class="num">{html.escape(str(c))}</td>' if n
                        else f"<td>{_inline(str(c))}</td>" for c, n in zip(row, numeric))
        body.append(f"<tr>{cells}</tr>")
    return f"<table>{head}<tbody>{''.join(body)}</tbody></table>"


def numeric_columns(table: Table) -> list:
    """Per column, whether every cell that holds something is a number (it aligns right):
    one rule for the HTML and the PDF."""
    return [all(_is_numeric(row[i]) for row in table.rows if str(row[i]) not in ("", "-"))
            for i in range(len(table.header))]


def _is_numeric(cell) -> bool:
    try:
        float(str(cell).replace(",", "").rstrip("%s"))
    except ValueError:
        return False
    return True


def _inline(text: str) -> str:
    """Markdown's `code` spans as <code>; everything else escaped."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
