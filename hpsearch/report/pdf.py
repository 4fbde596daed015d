"""The report as an A4 PDF: the same blocks as report.md and report.html, in the same order,
with the charts as vector graphics.

fpdf2 lays out the text and tables and leaves room for each chart; each chart, drawn by
matplotlib's own PDF backend (exact clipping, markers and fonts, which an SVG reader only
approximates), is then laid onto its place with pypdf.

The pages are set as a paper's. A chart drawn style.WIDTH wide prints at the text width, its
type a sixth larger than drawn; narrower charts print at the same scale, centred. What belongs
together shares a page: a heading and the start of its section, a chart with its caption and
the short table after it, a sentence ending in a colon and what it introduces. A section
starts on the page the last one ended on where its start fits. A chart that does not fit the
room left prints there smaller (down to SHRINK of the text width), and two charts in a row
share a page at one smaller size where that fits them; failing that, a chart waits for the
next page, and the section's paragraphs after it fill the room (as a paper's figures
float)."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

from hpsearch.report.render import Image, Section, Table, Text, numeric_columns
from hpsearch.report.style import WIDTH

FONT = "dejavu"
MONO = "dejavumono"
MARGIN = 16  # mm, every side
TEXT_PT, SMALL_PT, TABLE_PT = 10, 8, 8
GREY = (90, 90, 90)
PT_PER_MM = 72 / 25.4
HEADING_MM = 11  # a section heading with the space above and below it
START_MM = 18  # the least of a section that must follow its heading: about three lines
# The smallest a chart prints, as a share of the text width, where that lets it share a page
# rather than leave the room empty: its type then prints at 0.875 of the size drawn (tick
# labels 7 pt).
SHRINK = 0.75


@dataclass
class Placed:
    """Where a block printed (a Section: its heading): its page (0 the first), top and
    height in mm; a chart's left edge and width too."""
    block: object
    page: int
    y: float
    height: float
    x: float = 0.0
    width: float = 0.0


def pdf_document(title: str, sections: list, figures: dict) -> bytes:
    """A4 pages of `sections`; `figures` maps an Image's file name to (the one-page PDF
    matplotlib drew of it, its width and height in inches)."""
    pdf, placed = layout(title, sections, figures)
    charts = [(p.page, p.x, p.y, p.width, figures[p.block.filename][0])
              for p in placed if isinstance(p.block, Image)]
    return _with_charts(bytes(pdf.output()), charts)


def layout(title: str, sections: list, figures: dict) -> tuple:
    """(the fpdf document, with room left for each chart; a Placed for every block)."""
    pdf = _document(title)
    pages = _Pages(pdf, _document(None), figures)
    pdf.add_page()
    pdf.set_font(FONT, "B", 16)
    pdf.multi_cell(0, 8, title, new_x="LMARGIN", new_y="NEXT")
    for section in sections:
        pages.section(section)
    return pdf, pages.placed


def _document(title):
    """An A4 document with the report's fonts and margins; without a title, a ruler: one
    tall page without page breaks, where blocks are set to measure their height."""
    import logging

    from fpdf import FPDF

    for name in ("fontTools", "fpdf"):  # font subsetting and SVG details, line by line
        logging.getLogger(name).setLevel(logging.ERROR)
    pdf = FPDF(format="A4" if title is not None else (210, 2000), unit="mm")
    pdf.set_margins(MARGIN, MARGIN, MARGIN)
    pdf.set_auto_page_break(title is not None, margin=MARGIN)
    _fonts(pdf)
    if title is not None:
        pdf.set_title(title)
        pdf.set_creator("hpsearch")
    return pdf


def chart_scale(text_mm: float) -> float:
    """How much larger than drawn every chart prints: a chart WIDTH inches wide spans the
    text."""
    return text_mm / (WIDTH * 25.4)


class _Pages:
    """Sets sections onto `pdf` a unit at a time (blocks kept on one page), measuring each
    on `ruler` first."""

    def __init__(self, pdf, ruler, figures: dict):
        self.pdf, self.ruler, self.figures = pdf, ruler, figures
        self.placed: list = []
        self.text_mm = pdf.epw
        self.page_mm = pdf.h - 2 * MARGIN
        self.scale = chart_scale(self.text_mm)
        self._heights: dict = {}

    def room(self) -> float:
        return self.pdf.h - MARGIN - self.pdf.get_y()

    def at_top(self) -> bool:
        return self.pdf.get_y() <= MARGIN + 0.5

    def section(self, section: Section) -> None:
        """The heading where the section's start fits under it, else on a new page; a chart
        that must wait for the next page lets the blocks after it go first, unless another
        chart comes (charts keep their order)."""
        units = self.units(section.blocks)
        if units and HEADING_MM + self.start_mm(units[0]) > self.room() and not self.at_top():
            self.pdf.add_page()
        self.placed.append(Placed(section, self.pdf.page - 1, self.pdf.get_y(), 0.0))
        self.heading(section.title)
        waiting = None
        for unit, after in zip(units, units[1:] + [None]):
            if waiting is not None and (self.has_chart(unit) or
                                        self.height(unit) > self.room()):
                self.pdf.add_page()
                if not self.pair(waiting, unit):
                    self.place(waiting)
                waiting = None
            if waiting is not None:
                self.draw(unit)
            elif not self.pair(unit, after) and not self.place(unit):
                waiting = unit
        if waiting is not None:
            self.pdf.add_page()
            self.place(waiting)

    def pair(self, unit: list, after) -> bool:
        """Print `unit`, a chart, at the one size that fits it and the chart `after` it on
        this page, where that is smaller than full but no smaller than SHRINK (two charts of
        a size rather than one large and one small); False where it did not."""
        if after is None or not (self.has_chart(unit) and self.has_chart(after)):
            return False
        room = self.room()
        alone = self.fit(unit, room)
        if alone >= 1 and self.fit(after, room - self.height(unit)) >= 1:
            return False  # both fit as they are
        both = self.fit(unit + after, room)
        if not SHRINK <= both < 1:
            return False
        self.draw(unit, both)
        return True

    def heading(self, title: str) -> None:
        pdf = self.pdf
        if not self.at_top():
            pdf.ln(3)
        pdf.set_font(FONT, "B", 13)
        pdf.multi_cell(0, 7, title, new_x="LMARGIN", new_y="NEXT")
        pdf.ln(1)

    def units(self, blocks: list) -> list:
        """The blocks as lists that print together: a sentence ending in a colon with what
        follows; a paragraph with the short table after it (what it describes); a chart
        with the short table after it (its numbers); a section's closing paragraph of a
        few lines with what comes before it."""
        units: list = []
        for i, block in enumerate(blocks):
            if units and self.joins(units[-1], block, i == len(blocks) - 1):
                units[-1].append(block)
            else:
                units.append([block])
        return units

    def joins(self, unit: list, block, closing: bool) -> bool:
        last = unit[-1]
        if isinstance(last, Text) and last.text.rstrip().endswith(":"):
            return True
        if isinstance(block, Table) and isinstance(last, (Text, Image)) or (
                closing and isinstance(block, Text) and self.measured(block) <= START_MM):
            return self.kept(unit + [block])
        return False

    def has_chart(self, unit: list) -> bool:
        return any(isinstance(b, Image) and b.filename in self.figures for b in unit)

    def kept(self, unit: list) -> bool:
        """Whether `unit` must not break across pages: a chart, or anything up to half a
        page; longer text and tables run on (a table repeats its header)."""
        return self.has_chart(unit) or self.height(unit) <= 0.5 * self.page_mm

    def start_mm(self, unit: list) -> float:
        """How much of `unit` must fit under a heading: all of it where it is kept (a chart
        at its smallest), else its first lines."""
        if self.kept(unit):
            return self.height(unit, SHRINK)
        return min(self.height(unit), START_MM)

    def place(self, unit: list) -> bool:
        """Print `unit` here where it fits, a chart perhaps smaller; a unit that runs on
        starts on a new page when not even its first lines fit. False: a chart that must
        wait for the next page."""
        room = self.room()
        if not self.kept(unit):
            if min(self.height(unit), START_MM) > room:
                self.pdf.add_page()
            self.draw(unit)
            return True
        fit = self.fit(unit, room)
        if fit >= 1 or (self.has_chart(unit) and fit >= SHRINK):
            self.draw(unit, min(fit, 1.0))
            return True
        if self.at_top():  # taller than a page: a chart prints as large as one holds
            self.draw(unit, max(fit, 0.1))
            return True
        if not self.has_chart(unit):  # a short table moves on, whole
            self.pdf.add_page()
            self.draw(unit)
            return True
        return False

    def fit(self, unit: list, room: float) -> float:
        """The largest share of the full size the unit's charts fit `room` at (the rest
        of the unit at its size); inf where nothing need shrink, 0 where nothing helps."""
        charts = self.height(unit) - self.height(unit, 0.0)
        rest = self.height(unit, 0.0)
        if charts <= 0:
            return float("inf") if rest <= room else 0.0
        return max(0.0, (room - rest) / charts)

    def height(self, unit: list, charts: float = 1.0) -> float:
        """The unit's height in mm with its charts at `charts` times the full size."""
        return sum(self.block_mm(b, charts) for b in unit)

    def block_mm(self, block, charts: float = 1.0) -> float:
        if isinstance(block, Image):
            size = self.chart_mm(block)
            if size is None:
                return 0.0
            return size[1] * charts + 1 + self.measured(block)
        return self.measured(block)

    def measured(self, block) -> float:
        """A text's or table's height, or a chart's caption's, as set on the ruler."""
        key = id(block)
        if key not in self._heights:
            self.ruler.add_page()
            top = self.ruler.get_y()
            self.write(self.ruler, block)
            self._heights[key] = self.ruler.get_y() - top
        return self._heights[key]

    def chart_mm(self, image: Image):
        """(width, height) in mm of the chart at full size: WIDTH inches span the text; None
        for a chart that was not drawn."""
        drawn = self.figures.get(image.filename)
        if drawn is None:
            return None
        _, width_in, height_in = drawn
        width = min(width_in * 25.4 * self.scale, self.text_mm)
        return width, width * height_in / width_in

    def draw(self, unit: list, charts: float = 1.0) -> None:
        for block in unit:
            page, top = self.pdf.page - 1, self.pdf.get_y()
            if isinstance(block, Image):
                size = self.chart_mm(block)
                if size is None:
                    continue
                width, height = size[0] * charts, size[1] * charts
                x = self.pdf.l_margin + (self.text_mm - width) / 2
                self.placed.append(Placed(block, page, top, height, x, width))
                self.pdf.set_y(top + height + 1)
                self.write(self.pdf, block)
                continue
            self.write(self.pdf, block)
            self.placed.append(Placed(block, page, top, self.pdf.get_y() - top))

    @staticmethod
    def write(pdf, block) -> None:
        """A text or a table, or a chart's caption (the chart goes on later)."""
        if isinstance(block, Text):
            _text(pdf, block.text)
        elif isinstance(block, Table):
            _table(pdf, block)
        elif isinstance(block, Image):
            _text(pdf, block.caption, SMALL_PT, "I", GREY)


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


def _fonts(pdf) -> None:
    """DejaVu, which matplotlib ships: every character the report may hold (names of
    classes and folders included), where the PDF core fonts know only Latin-1."""
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    pdf.add_font(FONT, "", str(folder / "DejaVuSans.ttf"))
    pdf.add_font(FONT, "B", str(folder / "DejaVuSans-Bold.ttf"))
    pdf.add_font(FONT, "I", str(folder / "DejaVuSans-Oblique.ttf"))
    pdf.add_font(MONO, "", str(folder / "DejaVuSansMono.ttf"))


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
    width at least."""
    cells = [[str(c).replace("`", "") for c in row] for row in table.rows]  # no code font
    header = [str(h) for h in table.header]
    pdf.set_font(FONT, "B", TABLE_PT)
    heads = [pdf.get_string_width(h) for h in header]
    pdf.set_font(FONT, "", TABLE_PT)
    widths = [min(110.0, max([heads[i]] + [pdf.get_string_width(r[i]) for r in cells]) + 2.6)
              for i in range(len(header))]  # mm, with the cell's padding
    width = pdf.w - 2 * MARGIN
    full = min(width, max(sum(widths), 0.5 * width))
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


def _bold_headings():
    from fpdf.fonts import FontFace

    return FontFace(family=FONT, emphasis="BOLD", fill_color=(235, 235, 235))
