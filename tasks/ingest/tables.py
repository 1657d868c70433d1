"""Tables (rate tables: lodging by staff grade, meal allowances by region) as text a fact can be read from.

A table is a grid of cell texts. It becomes one text line per data row, each value cell written as
"row column value" and the cells joined by "；" ("三类人员 住宿费 500元；三类人员 伙食补助费 100元。"), after a
caption line and a line naming the columns. Why lines and not a Markdown grid: each number then stands next
to the words that say what it is for, so the fact's sentence (its context, quoted by answers and review),
lexical retrieval and a small model all see "三类人员 住宿费 500元" together; in a grid the column header is
rows away from the cell. ``TableText.row_cells`` says for each row line the cell of each of its "；" clauses:
its exact subject (row header + column header), which the fact ledger uses instead of guessing from the
words, and its row and column in the table as printed (``TableCell``).

Two entry points, the same for every route (PDF text layer, Word, OCR):

* :func:`table_text` turns a grid (``None`` for a cell merged over by its neighbour) plus the text just
  before the table (caption, "单位：元") into a :class:`TableText`.
* :func:`read_pdf_page` reads a PyMuPDF page: its tables (:func:`page_tables`) as :class:`TableText` at
  their place, the rest of the page's text as ``get_text("text")`` gives it, without the cells a second time.

Merged cells: in the first header row a merged-over cell takes the text of the cell to its left (a header
spanning columns: "住宿费" over 一类/二类/三类), in later header rows the text above (a header spanning rows);
in the row-name columns of data rows the text above (a region spanning rows). A merged-over value cell is
left out rather than repeated, so each printed number is one fact.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import pymupdf

from tasks.ingest.normalize import clean_lines, fold

Grid = Sequence[Sequence[str | None]]

# A cell that is only a number (or a range): the unit of its column or table is appended to it.
BARE_NUMBER = re.compile(r"^\d[\d,.]*(?:\s*[-~～—–至]\s*\d[\d,.]*)?$")
# A value cell: starts with a number ("500", "15%", "1,200元", "80-100").
_VALUE = re.compile(r"^\d")
# "住宿费（元/人·天）", "金额(单位：万元)": a column name with its unit in brackets at the end.
_HEADER_UNIT = re.compile(r"^(?P<name>.*?)\s*[（(](?:单位\s*[：:]\s*)?(?P<unit>[^（）()]{1,10})[)）]$")
# "单位：元" in a caption, a line before the table, or a first row of one merged cell.
TABLE_UNIT = re.compile(r"单位\s*[：:]\s*(?P<unit>[^\s，,；;。)）]{1,10})")
_UNIT_WORD = re.compile(r"元|天|日|人|次|小时|公里|%|％|个月|月|年|间|晚|餐|学时|课时|页|份|件|台")
# A caption line: 表1, 附表2, 表一 ... or a short line naming the table.
_CAPTION = re.compile(r"^(?:附\s*)?表\s*[\d一二三四五六七八九十]+|标准表|一览表|明细表|对照表")
_MAX_HEADER_ROWS = 3
# A page drawn with more paths than this is a chart or vector art, not a ruled table (a 40-row rate table
# is about a hundred lines); finding tables in it would only cost time.
_MAX_DRAWINGS = 5000
_CJK = "\u3000-\u303f\u3400-\u9fff\uff00-\uffef"
_WRAP = re.compile(rf"(?<=[{_CJK}])[ \t]*\n\s*(?=[{_CJK}])")


class TableCell(NamedTuple):
    """A value cell of a table: what it is for, and where it stands in the table as printed on its page
    (1-based, header and caption rows counted; a table continued on the next page counts from its top there)."""

    subject: str  # row header + column header: "北京 住宿费 三类人员"
    row: int
    column: int

    @property
    def position(self) -> str:
        """As the ledger keeps it: "r5c3" (row 5, column 3)."""
        return f"r{self.row}c{self.column}"


@dataclass(frozen=True)
class TableText:
    """A table as text lines (see the module doc)."""

    lines: list[str]  # folded, one per line: captions, the column line, one line per data row
    row_cells: dict[str, tuple[TableCell, ...]]  # a data row line -> the cell of each of its "；" clauses
    header: tuple[tuple[str, ...], ...] = ()  # the header rows, filled (a table continued reuses them)
    columns: int = 0
    caption: str = ""
    unit: str = ""  # the table's unit from "单位：元", "" if none

    @property
    def text(self) -> str:
        """The lines as page text; blank lines between them, so each stays its own paragraph."""
        return "\n\n".join(self.lines)


def _cell(text: str | None) -> str | None:
    if text is None:
        return None
    # One line per cell: wrapped cell text is one phrase, its lines joined without a space between Chinese
    # characters (上缴学校|经费); "；" would end a clause in the row line.
    text = _WRAP.sub("", text.strip())
    return fold(" ".join(text.split())).replace("；", "，").replace(";", ",").strip().rstrip("。，,")


def _is_value(cell: str | None) -> bool:
    return bool(cell) and bool(_VALUE.match(cell or ""))


def table_text(grid: Grid, *, before: str = "", continues: TableText | None = None) -> TableText:
    """The text of a table given as rows of cell texts, ``None`` for a cell merged over (see module doc).

    ``before``: the text just before the table (a caption, "单位：元"), read for the caption and the unit.
    ``continues``: the table this grid continues (the next page of a long table); its header and unit are
    used, and header rows repeated at the top of this grid are dropped."""
    cells_of = [[_cell(c) for c in row] for row in grid]
    numbers = [i + 1 for i, r in enumerate(cells_of) if any(r)]  # each kept row's place in the grid
    rows = [r for r in cells_of if any(r)]
    columns = max((len(r) for r in rows), default=0)
    rows = [r + [""] * (columns - len(r)) for r in rows]
    lines: list[str] = []
    unit_match = TABLE_UNIT.search(fold(before))
    unit = unit_match.group("unit") if unit_match else ""
    caption = _caption(before)
    if continues is not None:
        unit = unit or continues.unit
        caption = continues.caption
        header = [list(h) for h in continues.header]
        while rows and any(_same_row(rows[0], h) for h in header):
            rows.pop(0)  # the header printed again on the new page
            numbers.pop(0)
        rows = [r + [""] * (continues.columns - len(r)) for r in rows]
        columns = max(columns, continues.columns)
    else:
        # Rows of one cell across the table are captions ("差旅费开支标准", "单位：元").
        while len(rows) > 1 and sum(1 for c in rows[0] if c) == 1 and rows[0][0]:
            text = rows.pop(0)[0] or ""
            numbers.pop(0)
            lines.append(text)
            caption = caption or text
            found = TABLE_UNIT.search(text)
            unit = found.group("unit") if found else unit
        header_count = next((i for i, r in enumerate(rows) if any(_is_value(c) for c in r[1:])), 1)
        header_count = max(1, min(header_count, _MAX_HEADER_ROWS, len(rows) - 1))
        header = _fill_header(rows[:header_count])
        rows, numbers = rows[header_count:], numbers[header_count:]
    if not rows or columns < 2:
        flat = [" ".join(c for c in r if c) for r in ([*header, *rows] if continues is None else rows)]
        return TableText(
            lines + [f for f in flat if f], {}, tuple(map(tuple, header)), columns, caption, unit
        )

    names, units = _column_names(header, columns)
    if continues is None:
        lines.append(" ".join(dict.fromkeys(n for n in names if n)))
    first, last = _name_columns(rows)
    row_cells: dict[str, tuple[TableCell, ...]] = {}
    above: list[str | None] = [None] * columns
    for cells, row_no in zip(rows, numbers, strict=True):
        for j in range(first, last):  # a region merged down over several rows names each of them
            if cells[j] is None and above[j]:
                cells[j] = above[j]
            above[j] = cells[j]
        name = " ".join(dict.fromkeys(c for c in cells[first:last] if c))
        parts, found = [], []
        for j in range(last, columns):
            cell = cells[j]
            if not cell or cell == name:
                continue
            cell_unit = units[j] or unit
            value = cell + cell_unit if cell_unit and BARE_NUMBER.match(cell) else cell
            subject = " ".join(p for p in (name, names[j]) if p)
            parts.append(f"{subject} {value}")
            found.append(TableCell(subject, row_no, j + 1))
        if not parts:
            if name:
                lines.append(name)
            continue
        line = fold("；".join(parts) + "。")
        lines.append(line)
        row_cells[line] = tuple(found)
    return TableText(lines, row_cells, tuple(map(tuple, header)), columns, caption, unit)


def _caption(before: str) -> str:
    """The caption among the lines before a table: "表1 …" or a short title line, else the last line."""
    candidates = [
        line for line in clean_lines(before, is_pdf=False) if line and not TABLE_UNIT.fullmatch(line)
    ]
    for line in reversed(candidates):
        if _CAPTION.search(line):
            return line
    return candidates[-1][:40] if candidates else ""


def _same_row(row: Sequence[str | None], header_row: Sequence[str]) -> bool:
    """Whether ``row`` repeats ``header_row`` (its merged-over cells aside)."""
    shown = [(c, h) for c, h in zip(row, header_row, strict=False) if c is not None]
    return any(c for c, _ in shown) and all(c == h for c, h in shown)


def _fill_header(rows: list[list[str | None]]) -> list[list[str]]:
    """Header rows with merged cells filled: the first row from the left, later rows from above."""
    filled: list[list[str]] = []
    for r, row in enumerate(rows):
        out: list[str] = []
        for j, cell in enumerate(row):
            if cell is None:
                cell = filled[r - 1][j] if r > 0 else (out[j - 1] if j > 0 else "")
            out.append(cell)
        filled.append(out)
    return filled


def _column_names(header: list[list[str]], columns: int) -> tuple[list[str], list[str]]:
    """Each column's name (its header cells top to bottom, a repeated one once) and its unit, if a header
    cell states one in brackets ("住宿费（元/人·天）")."""
    names, units = [], []
    for j in range(columns):
        parts: list[str] = []
        unit = ""
        for row in header:
            cell = row[j] if j < len(row) else ""
            match = _HEADER_UNIT.match(cell)
            if match and _UNIT_WORD.search(match.group("unit")):
                cell, unit = match.group("name"), match.group("unit")
            if cell and cell not in parts:
                parts.append(cell)
        names.append(" ".join(parts))
        units.append(unit)
    return names, units


def _name_columns(rows: list[list[str | None]]) -> tuple[int, int]:
    """The columns that name a row: after a 序号 column of bare numbers, those text in every row
    (a region and a city); one when every column is text (then the others are read as values)."""
    columns = len(rows[0])

    def all_rows(test: Any, j: int) -> bool:
        return all(test(r[j]) for r in rows)

    first = 1 if columns > 2 and all_rows(lambda c: c is None or BARE_NUMBER.match(c or "x"), 0) else 0
    last = first + 1
    while last < columns and all_rows(lambda c: not _is_value(c), last):
        last += 1
    return first, (first + 1 if last >= columns else last)


# --- PDF pages ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FoundTable:
    """A table PyMuPDF found on a page: where it is and its cells' text (``None``: merged over)."""

    bbox: tuple[float, float, float, float]
    grid: list[list[str | None]]


@dataclass(frozen=True)
class PdfPage:
    """A PDF page read with its tables: the page text, the tables in it, and the table still open at the
    bottom of the page (the next page's first table may continue it)."""

    text: str
    tables: list[TableText] = field(default_factory=list)
    open_table: TableText | None = None


def ruled_grid(drawings: list[dict[str, Any]]) -> bool:
    """Whether a page's drawn lines (and rectangle edges) cross in at least 3 rows and 3 columns, the least a
    table of 2x2 cells needs. A frame, a header rule or a one-column box does not; ``find_tables`` is then
    not worth its cost (it builds a dict per character of the page: 20-40 ms a page)."""
    across: set[tuple[int, int, int]] = set()  # (y, x0, x1)
    down: set[tuple[int, int, int]] = set()  # (x, y0, y1)
    for path in drawings:
        for item in path["items"]:
            if item[0] == "l":
                (x0, y0), (x1, y1) = item[1], item[2]
                if abs(y0 - y1) < 1:
                    across.add((round(y0), round(min(x0, x1)), round(max(x0, x1))))
                elif abs(x0 - x1) < 1:
                    down.add((round(x0), round(min(y0, y1)), round(max(y0, y1))))
            elif item[0] == "re":
                x0, y0, x1, y1 = item[1]
                across |= {(round(y0), round(x0), round(x1)), (round(y1), round(x0), round(x1))}
                down |= {(round(x0), round(y0), round(y1)), (round(x1), round(y0), round(y1))}
    crossings = {
        (x, y)
        for y, left, right in across
        for x, top, bottom in down
        if left - 1 <= x <= right + 1 and top - 1 <= y <= bottom + 1
    }
    return len({y for _, y in crossings}) >= 3 and len({x for x, _ in crossings}) >= 3


def page_tables(page: pymupdf.Page) -> list[FoundTable]:
    """The ruled tables of a page, cell text read by position (``get_text`` in the cell), which keeps CJK
    punctuation in its place where the table extractor's own text splits it off. A page without vector
    drawings has no ruling lines and is not searched (``find_tables`` costs a tenth of a second a page), nor
    one of more than ``_MAX_DRAWINGS`` paths."""
    drawings = page.get_cdrawings()
    if not drawings or len(drawings) > _MAX_DRAWINGS or not ruled_grid(drawings):
        return []
    found = []
    # use_layout=False: ruled lines only, the same wherever pymupdf-layout (an ONNX layout model that
    # gates the tables it finds, ten times slower) happens to be installed.
    for table in page.find_tables(use_layout=False).tables:
        grid = [
            [None if box is None else page.get_text("text", clip=box) for box in row.cells]
            for row in table.rows
        ]
        if len(grid) >= 2 and max(len(r) for r in grid) >= 2:
            found.append(FoundTable(tuple(table.bbox), grid))
    return found


def read_pdf_page(page: pymupdf.Page, previous: TableText | None = None) -> PdfPage:
    """A page's text with each table written as :class:`TableText` where it stands, the table's cells taken
    out of the running text. ``previous``: the table left open at the bottom of the page before; a table
    at the top of this page with as many columns continues it. A page without tables gives exactly
    ``page.get_text("text")``."""
    try:
        found = page_tables(page)
    except Exception:  # tables improve a page's text, they are not needed for it: a page they fail on
        found = []  # (odd drawings in a damaged file) is read as plain text
    if not found:
        return PdfPage(page.get_text("text"))
    rects = [pymupdf.Rect(t.bbox) for t in found]
    # (top, text) of every text line outside the tables, in the order get_text("text") writes them.
    lines: list[tuple[float, str]] = []
    for block in page.get_text("dict", flags=pymupdf.TEXTFLAGS_TEXT)["blocks"]:
        for line in block.get("lines", []):
            box = pymupdf.Rect(line["bbox"])
            middle = pymupdf.Point((box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2)
            if not any(middle in r for r in rects):
                lines.append((box.y0, "".join(span["text"] for span in line["spans"])))
    # Each table goes after the last line above it in the order get_text writes lines (which is not
    # always top to bottom: a footer may come first), tables above one another in their order.
    after: dict[int, list[int]] = {}
    for i in sorted(range(len(found)), key=lambda i: rects[i].y0):
        above_at = [k for k, (y, text) in enumerate(lines) if text.strip() and y < rects[i].y0]
        if not above_at:  # first on the page: still after a page number written first (kept an edge line)
            above_at = [k for k in range(len(lines)) if not _body([t for _, t in lines[: k + 1]])]
        after.setdefault(above_at[-1] if above_at else -1, []).append(i)
    out: list[str] = []
    tables: list[TableText] = []
    open_table = None
    for k in range(-1, len(lines)):
        if k >= 0:
            out.append(lines[k][1] + "\n")
        for i in after.get(k, []):
            above = [t for y, t in lines if y < rects[i].y0]
            # A table first on the page, nothing but a page number above it, as wide as the table left
            # open at the bottom of the page before: the same table running on.
            first = previous is not None and not tables and not _body(above)
            continues = previous if first and max(map(len, found[i].grid)) == previous.columns else None
            before = "\n".join(above[-3:]) if continues is None else ""
            rendered = table_text(found[i].grid, before=before, continues=continues)
            tables.append(rendered)
            out.append("\n" + rendered.text + "\n\n")
            below = [t for y, t in lines if y > rects[i].y1]
            open_table = rendered if not _body(below) else None
    return PdfPage("".join(out), tables, open_table)


def _body(lines: list[str]) -> bool:
    """Whether these lines hold body text (not only a page number or footer)."""
    return any(clean_lines("\n".join(lines), is_pdf=True))


def read_docx_table(table: Any, before: str) -> TableText:
    """A python-docx table: merged cells (gridSpan, vMerge) come back once, the others as ``None``."""
    grid: list[list[str | None]] = []
    seen: dict[int, Any] = {}  # holding the elements keeps their ids from being reused
    for row in table.rows:
        cells: list[str | None] = []
        for cell in row.cells:
            cells.append(None if id(cell._tc) in seen else cell.text)
            seen[id(cell._tc)] = cell._tc
        grid.append(cells)
    return table_text(grid, before=before)
