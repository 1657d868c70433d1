"""The project's own rate-table documents: the same travel rules as a PDF (a ruled table with merged header
cells and a "单位：元" line, running on over two pages) and as a Word file (the same table, its header merged
the Word way). Made here, deterministically, for tests/test_ingest_tables.py; nothing is copied from
elsewhere. ``python -m tests.data.make_rate_tables OUT_DIR`` writes both files to look at.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import docx
import pymupdf

BEFORE = [
    "第一章 总则",
    "第一条 为规范差旅费管理，制定本办法。",
    "第二章 开支标准",
    "第二条 出差人员市内交通费每人每天80元。",
    "第三条 出差人员住宿费和伙食补助费按下表执行。",
]
CAPTION = "表1 差旅住宿费和伙食补助费标准"
UNIT_LINE = "单位：元"
AFTER = [
    "第四条 差旅费报销须在出差结束后30日内办理。",
    "第五条 本办法由财务处负责解释。",
]
# Two header rows: 地区 and 伙食补助费 span both, 住宿费 spans the three staff grades below it.
HEADER = [
    ["地区", "住宿费", None, None, "伙食补助费"],
    [None, "一类人员", "二类人员", "三类人员", None],
]
GRADES = ["一类人员", "二类人员", "三类人员"]
_REGIONS = [
    "北京", "天津", "河北", "山西", "内蒙古", "辽宁", "大连", "吉林", "黑龙江", "上海", "江苏", "浙江",
    "宁波", "安徽", "福建", "厦门", "江西", "山东", "青岛", "河南", "湖北", "湖南", "广东", "深圳",
    "广西", "海南", "重庆", "四川", "贵州", "云南", "西藏", "陕西", "甘肃", "青海", "宁夏", "新疆",
]  # fmt: skip


def rate_rows() -> list[list[str]]:
    """One row per region: lodging per staff grade and the meal allowance (made-up, distinct values)."""
    rows = []
    for i, region in enumerate(_REGIONS):
        top, middle, low = 1100 - 10 * i, 650 - 5 * i, 500 - 5 * i
        meal = 120 if region in ("西藏", "青海", "新疆") else 100
        rows.append([region, str(top), str(middle), str(low), str(meal)])
    return rows


def expected_cells() -> dict[tuple[str, str], str]:
    """(region, column) -> value of every table cell: what the ledger must hold (unit 元)."""
    cells = {}
    for region, *values in rate_rows():
        for grade, value in zip(GRADES, values[:3], strict=True):
            cells[(region, f"住宿费 {grade}")] = value
        cells[(region, "伙食补助费")] = values[3]
    return cells


# --- PDF ----------------------------------------------------------------------------------------------------

_WIDTHS = [110, 90, 90, 90, 100]
_LEFT, _ROW, _TOP, _BOTTOM = 50.0, 22.0, 60.0, 780.0
_FONT = "china-s"  # PyMuPDF's built-in simplified Chinese font


def rate_table_pdf(repeat_header: bool = True) -> bytes:
    """The rules as a PDF: text, then the table filling page 1 and running on to page 2 (its header printed
    again there when ``repeat_header``), then more articles; page numbers at the foot of each page."""
    doc = pymupdf.open()
    page = doc.new_page()
    y = _TOP
    for line in [*BEFORE, CAPTION]:
        page.insert_text((_LEFT, y), line, fontname=_FONT, fontsize=11)
        y += 20
    page.insert_text((_LEFT + sum(_WIDTHS) - 50, y), UNIT_LINE, fontname=_FONT, fontsize=10)
    y += 8
    rows = rate_rows()
    first = True
    while rows:
        if first or repeat_header:
            y = _draw_header(page, y)
        take = int((_BOTTOM - y) // _ROW)
        y = _draw_rows(page, y, rows[:take])
        rows = rows[take:]
        first = False
        if rows:
            _page_number(page, doc.page_count)
            page = doc.new_page()
            y = _TOP
    y += 24
    for line in AFTER:
        page.insert_text((_LEFT, y), line, fontname=_FONT, fontsize=11)
        y += 20
    _page_number(page, doc.page_count)
    data = doc.tobytes(garbage=3, deflate=True, no_new_id=True)
    doc.close()
    return data


def _xs() -> list[float]:
    xs = [_LEFT]
    for width in _WIDTHS:
        xs.append(xs[-1] + width)
    return xs


def _draw_header(page: pymupdf.Page, top: float) -> float:
    xs = _xs()
    bottom = top + 2 * _ROW
    page.draw_line((xs[0], top), (xs[-1], top))
    page.draw_line((xs[1], top + _ROW), (xs[4], top + _ROW))  # under 住宿费 only: the grades below it
    page.draw_line((xs[0], bottom), (xs[-1], bottom))
    for x in (xs[0], xs[1], xs[4], xs[5]):
        page.draw_line((x, top), (x, bottom))
    for x in (xs[2], xs[3]):
        page.draw_line((x, top + _ROW), (x, bottom))
    page.insert_text((xs[0] + 6, top + _ROW + 6), "地区", fontname=_FONT, fontsize=10)
    page.insert_text((xs[1] + 100, top + 15), "住宿费", fontname=_FONT, fontsize=10)
    page.insert_text((xs[4] + 6, top + _ROW + 6), "伙食补助费", fontname=_FONT, fontsize=10)
    for i, grade in enumerate(GRADES):
        page.insert_text((xs[1 + i] + 6, top + _ROW + 15), grade, fontname=_FONT, fontsize=10)
    return bottom


def _draw_rows(page: pymupdf.Page, top: float, rows: list[list[str]]) -> float:
    xs = _xs()
    y = top
    page.draw_line((xs[0], top), (xs[-1], top))  # a ruled table: closed at the top on a new page too
    for row in rows:
        for i, cell in enumerate(row):
            page.insert_text((xs[i] + 6, y + 15), cell, fontname=_FONT, fontsize=10)
        y += _ROW
        page.draw_line((xs[0], y), (xs[-1], y))
    for x in xs:
        page.draw_line((x, top), (x, y))
    return y


def _page_number(page: pymupdf.Page, number: int) -> None:
    page.insert_text((290, 815), f"- {number} -", fontname=_FONT, fontsize=9)


# --- Word ---------------------------------------------------------------------------------------------------


def rate_table_docx() -> bytes:
    """The same rules as a Word file: headings, articles, the caption, the unit line and the table with
    its header cells merged (地区 and 伙食补助费 down two rows, 住宿费 across three columns)."""
    document = docx.Document()
    for line in BEFORE:
        if line.startswith("第") and "章" in line[:4]:
            document.add_heading(line, 1)
        else:
            document.add_paragraph(line)
    document.add_paragraph(CAPTION)
    document.add_paragraph(UNIT_LINE)
    rows = rate_rows()
    table = document.add_table(rows=2 + len(rows), cols=5)
    table.cell(0, 0).merge(table.cell(1, 0)).text = "地区"
    table.cell(0, 1).merge(table.cell(0, 3)).text = "住宿费"
    table.cell(0, 4).merge(table.cell(1, 4)).text = "伙食补助费"
    for i, grade in enumerate(GRADES):
        table.cell(1, 1 + i).text = grade
    for r, row in enumerate(rows, start=2):
        for c, value in enumerate(row):
            table.cell(r, c).text = value
    for line in AFTER:
        document.add_paragraph(line)
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


if __name__ == "__main__":
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rate_table.pdf").write_bytes(rate_table_pdf())
    (folder / "rate_table_no_repeat.pdf").write_bytes(rate_table_pdf(repeat_header=False))
    (folder / "rate_table.docx").write_bytes(rate_table_docx())
    print(f"wrote rate_table.pdf, rate_table_no_repeat.pdf, rate_table.docx to {folder}")
