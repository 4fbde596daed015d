"""report.pdf's page layout: charts at the text width, a chart with its caption and its
table on one page, headings with what follows them, sections running on where they fit."""

from __future__ import annotations

import io

import pytest
from matplotlib.figure import Figure

from hpsearch.report.output import vector
from hpsearch.report.pdf import SHRINK, chart_scale, layout, pdf_document
from hpsearch.report.render import Image, Section, Table, Text
from hpsearch.report.style import WIDTH, styled

SENTENCE = "The search scored each trial on the validation split after every epoch. "
PARAGRAPH = SENTENCE * 4


def chart(height_in: float, width_in: float = WIDTH) -> tuple:
    with styled():
        fig = Figure(figsize=(width_in, height_in), layout="constrained")
        ax = fig.subplots()
        ax.barh(["lr", "depth", "width", "dropout", "optimizer"], [0.4, 0.3, 0.2, 0.08, 0.02])
        ax.set_title("Parameter importance")
    return vector(fig)


@pytest.fixture(scope="module")
def importance_chart() -> tuple:
    return chart(2.9)


def importance_report(sentences: int, drawn: tuple) -> tuple:
    """A report whose importance chart and table come after a paragraph of `sentences`."""
    figures = {"param_importances.png": drawn}
    rows = [[n, f"{v:.1%}"] for n, v in (("lr", 0.4), ("depth", 0.3), ("width", 0.2),
                                         ("dropout", 0.08), ("optimizer", 0.02))]
    sections = [
        Section("Results", [Text(PARAGRAPH), Text(SENTENCE * sentences)]),
        Section("What mattered", [
            Text("How much each parameter decides whether a trial is among the best ones."),
            Image("param_importances.png", "Parameter importance from 12 completed trials."),
            Table(["parameter", "importance"], rows)]),
        Section("Next study", [Text(PARAGRAPH)]),
    ]
    return sections, figures


def where(placed: list, kind) -> list:
    return [p for p in placed if isinstance(p.block, kind)]


def test_a_chart_drawn_full_width_spans_the_text(importance_chart):
    pdf, placed = layout("report", *importance_report(1, importance_chart))
    image = where(placed, Image)[0]
    assert chart_scale(pdf.epw) * WIDTH * 25.4 == pytest.approx(pdf.epw)
    assert image.width == pytest.approx(pdf.epw)
    assert image.x == pytest.approx(pdf.l_margin)
    _, width_in, height_in = importance_chart
    assert image.height / image.width == pytest.approx(height_in / width_in)  # its aspect


@pytest.mark.parametrize("sentences", range(0, 48, 6))  # about 25 mm of text a step
def test_the_importance_chart_its_caption_and_table_share_a_page(sentences, importance_chart):
    """Wherever the page ends, the chart, its caption and its table print on one page, the
    chart no narrower than SHRINK of the text, and no heading ends a page."""
    pdf, placed = layout("report", *importance_report(sentences, importance_chart))
    image, table = where(placed, Image)[0], where(placed, Table)[0]
    assert image.page == table.page
    assert table.y == pytest.approx(image.y + image.height, abs=25)  # the caption between
    assert table.y + table.height <= pdf.h - 16 + 0.01
    assert SHRINK * pdf.epw - 0.01 <= image.width <= pdf.epw + 0.01
    for i, heading in enumerate(placed):
        if isinstance(heading.block, Section) and heading.block.blocks:
            assert placed[i + 1].page == heading.page, heading.block.title


def test_short_sections_run_on_rather_than_start_a_page():
    sections = [Section(title, [Text("One short paragraph."), Table(["", ""], [["a", 1]])])
                for title in ("Summary", "Dataset", "Training")]
    _, placed = layout("report", sections, {})
    assert {p.page for p in placed} == {0}


def test_a_chart_that_does_not_fit_lets_the_text_after_it_go_first():
    """As a paper's figures float: the room above the chart's page is filled with the
    section's text, and charts keep their order."""
    figures = {"a.png": chart(5.8), "b.png": chart(5.8)}
    blocks = [Text(PARAGRAPH) for _ in range(9)] + [Image("a.png", "A."), Text("After a."),
                                                    Image("b.png", "B.")]
    _, placed = layout("report", [Section("Results", blocks)], figures)
    after, a, b = placed[-3:]  # as printed
    assert (after.block.text, a.block.filename, b.block.filename) == ("After a.", "a.png",
                                                                      "b.png")
    assert after.page < a.page <= b.page


def test_the_pdf_holds_the_charts_where_the_layout_put_them(importance_chart):
    from pypdf import PdfReader

    sections, figures = importance_report(40, importance_chart)
    reader = PdfReader(io.BytesIO(pdf_document("report", sections, figures)))
    _, placed = layout("report", sections, figures)
    assert len(reader.pages) == max(p.page for p in placed) + 1
    text = reader.pages[where(placed, Image)[0].page].extract_text()
    assert "Parameter importance" in text and "lr 40.0%" in text  # the chart and its table
