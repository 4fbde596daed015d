"""The report as an A4 PDF: the same blocks as report.md and report.html, in the same order,
with the charts as vector graphics.

fpdf2 lays out the text and tables and leaves room for each chart; each chart, drawn by
matplotlib's own PDF backend (exact clipping, markers and fonts, which an SVG reader only
approximates), is then laid onto its place with pypdf."""

from __future__ import annotations

import io
import re
from pathlib import Path

from hpsearch.report.render import Image, Section, Table, Text, numeric_columns

FONT = "dejavu"
MONO = "dejavumono"
MARGIN = 16  # mm, every side
TEXT_PT, SMALL_PT, TABLE_PT = 10, 8, 8
GREY = (90, 90, 90)


def pdf_document(title: str, sections: list, figures: dict) -> bytes:
    """A4 pages of `sections`; `figures` maps an Image's file name to (the one-page PDF
    matplotlib drew of it, its width and height in inches)."""
    import logging

    from fpdf import FPDF

    for name in ("fontTools", "fpdf"):  # font subsetting and SVG details, line by line
        logging.getLogger(name).setLevel(logging.ERROR)
    pdf = FPDF(format="A4", unit="mm")
    pdf.set_margins(MARGIN, MARGIN, MARGIN)
    pdf.set_auto_page_break(True, margin=MARGIN)
    _fonts(pdf)
    pdf.set_title(title)
    pdf.set_creator("hpsearch")
    pdf.add_page()
    pdf.set_font(FONT, "B", 16)
    pdf.multi_cell(0, 8, title, new_x="LMARGIN", new_y="NEXT")
    places: list = []
    for section in sections:
        _section(pdf, section, figures, places)
    return _with_charts(bytes(pdf.output()), places)


def _with_charts(document: bytes, places: list) -> bytes:
    """Each chart's page scaled onto the room left for it: (page index, x, y, width in mm
    from the top left, the chart's PDF)."""
    from pypdf import PdfReader, PdfWriter, Transformation

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(document)))
    for index, x, y, width, chart in places:
        page = writer.pages[index]
        drawn = PdfReader(io.BytesIO(chart)).pages[0]
        scale = width * PT_PER_MM / float(drawn.mediabox.width)
        height = float(drawn.mediabox.height) * scale
        top = float(page.mediabox.height) - y * PT_PER_MM
        page.merge_transformed_page(
            drawn, Transformation().scale(scale).translate(x * PT_PER_MM, top - height))
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


PT_PER_MM = 72 / 25.4


def _fonts(pdf) -> None:
    """DejaVu, which matplotlib ships: every character the report may hold (names of
    classes and folders included), where the PDF core fonts know only Latin-1."""
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    pdf.add_font(FONT, "", str(folder / "DejaVuSans.ttf"))
    pdf.add_font(FONT, "B", str(folder / "DejaVuSans-Bold.ttf"))
    pdf.add_font(FONT, "I", str(folder / "DejaVuSans-Oblique.ttf"))
    pdf.add_font(MONO, "", str(folder / "DejaVuSansMono.ttf"))


def _section(pdf, section: Section, figures: dict, places: list) -> None:
    """A heading never ends a page, nor is it parted from a short table that opens its
    section (the table would move to the next page on its own; see _table)."""
    opening = next((b for b in section.blocks[:2] if isinstance(b, Table)), None)
    need = 30 + (_table_mm(opening) if opening is not None else 0)
    if pdf.get_y() + need > pdf.h - MARGIN and need < 0.5 * (pdf.h - 2 * MARGIN):
        pdf.add_page()
    elif pdf.get_y() > pdf.h - MARGIN - 30:
        pdf.add_page()
    pdf.ln(3)
    pdf.set_font(FONT, "B", 13)
    pdf.multi_cell(0, 7, section.title, new_x="LMARGIN", new_y="NEXT")
    pdf.ln(1)
    for block in section.blocks:
        if isinstance(block, Text):
            _text(pdf, block.text)
        elif isinstance(block, Table):
            _table(pdf, block)
        elif isinstance(block, Image):
            _image(pdf, block, figures.get(block.filename), places)


def _text(pdf, text: str, size: float = TEXT_PT, style: str = "",
          colour: tuple = (0, 0, 0)) -> None:
    """A paragraph; `code` spans in the monospaced font. Words are placed one at a time, so
    that a line breaks between words of either font, never inside one."""
    pdf.set_text_color(*colour)
    height = size * 0.5
    right = pdf.w - pdf.r_margin
    for i, part in enumerate(re.split(r"`([^`]*)`", text)):
        pdf.set_font(MONO if i % 2 else FONT, "" if i % 2 else style, size)
        for word in re.findall(r"\S+\s*|\s+", part):
            if pdf.get_x() > pdf.l_margin and \
                    pdf.get_x() + pdf.get_string_width(word.rstrip()) > right - 2:
                pdf.ln(height)
                word = word.lstrip()
            pdf.write(height, word)
    pdf.ln(height)
    pdf.ln(1.5)
    pdf.set_text_color(0, 0, 0)


def _table(pdf, table: Table) -> None:
    """Columns as wide as their widest cell (the heading in bold), spread to half the text
    width at least; a short table starts a new page rather than being split."""
    cells = [[str(c).replace("`", "") for c in row] for row in table.rows]  # no code font
    header = [str(h) for h in table.header]
    pdf.set_font(FONT, "B", TABLE_PT)
    heads = [pdf.get_string_width(h) for h in header]
    pdf.set_font(FONT, "", TABLE_PT)
    widths = [min(110.0, max([heads[i]] + [pdf.get_string_width(r[i]) for r in cells]) + 2.6)
              for i in range(len(header))]  # mm, with the cell's padding
    width = pdf.w - 2 * MARGIN
    natural = sum(widths)
    full = min(width, max(natural, 0.5 * width))
    rows_mm = _table_mm(table)
    room = pdf.h - MARGIN - pdf.get_y()
    if rows_mm > room and rows_mm < 0.5 * (pdf.h - 2 * MARGIN):
        pdf.add_page()
    numeric = numeric_columns(table)
    with pdf.table(width=full, col_widths=widths, align="LEFT", line_height=TABLE_PT * 0.5,
                   first_row_as_headings=any(header), padding=0.8,
                   text_align=tuple("RIGHT" if n else "LEFT" for n in numeric),
                   headings_style=_bold_headings()) as out:
        if any(header):
            row = out.row()
            for h in header:
                row.cell(h)
        for values in cells:
            row = out.row()
            for value in values:
                row.cell(value)
    pdf.ln(2)


def _table_mm(table: Table) -> float:
    """About how tall a table of one-line rows prints, in mm."""
    return (len(table.rows) + 1) * (TABLE_PT * 0.5 + 1.8)


def _bold_headings():
    from fpdf.fonts import FontFace

    return FontFace(family=FONT, emphasis="BOLD", fill_color=(235, 235, 235))


def _image(pdf, image: Image, drawn, places: list) -> None:
    """Room for the chart at its own size (its fonts print at the size they were drawn at),
    at most the text's width, and its caption below."""
    if drawn is None:
        return
    chart, width_in, height_in = drawn
    width = min(width_in * 25.4, pdf.w - 2 * MARGIN)
    height = width * height_in / width_in
    if pdf.get_y() + height + 12 > pdf.h - MARGIN:  # the caption stays with its chart
        pdf.add_page()
    places.append((pdf.page - 1, pdf.l_margin, pdf.get_y(), width, chart))
    pdf.set_y(pdf.get_y() + height + 1)
    _text(pdf, image.caption, SMALL_PT, "I", GREY)
