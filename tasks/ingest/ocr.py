"""OCR of scanned PDF pages, offline: RapidOCR (PP-OCRv4 models in ONNX) ships its three model files inside its
wheel, so nothing is downloaded at run time.

A page is rendered at ``OCR_DPI`` and read into boxes (text, confidence, position); the boxes become text lines
in reading order (boxes grouped into lines by vertical overlap, each line read left to right), so the page goes
through normalisation, chunking and the fact ledger like a page with a text layer.

Installed as the ``ocr`` extra plus the engine without its dependencies (``OCR_INSTALL``): the engine asks for
``opencv-python``, the GUI build of OpenCV, while the project keeps the headless one that label-studio-sdk
already brings (both install the same ``cv2`` module and would overwrite each other).
"""

from __future__ import annotations

import bisect
import functools
import re
import statistics
from dataclasses import dataclass
from typing import Any

import numpy as np
import pymupdf

from tasks.ingest.normalize import clean_lines
from tasks.ingest.tables import TableText, table_text

# `bench/ingest.py --dpi-sweep` on examples/sample_rules.pdf page 2: 150, 200 and 300 dpi all read 99.5% of the
# text layer (mean confidence 0.996); the detector scales large images down (max side 2000 px), so more pixels
# only cost time (on a quiet machine, before the angle classifier was turned off: 9 s, 15 s, 43 s a page).
OCR_DPI = 150
OCR_INSTALL = "pip install -e '.[ocr]' && pip install --no-deps rapidocr-onnxruntime==1.4.4 (or make venv)"
_SPACED_DIGITS = re.compile(r"(?<=\d) +(?=\d)")
# Two boxes on one line further apart than this many character heights are separate cells, joined by a space.
_CELL_GAP = 1.0


class OcrUnavailable(Exception):
    """The OCR engine is not installed."""


@dataclass(frozen=True)
class OcrBox:
    """One piece of text the engine read, with its box in page pixels."""

    text: str
    confidence: float
    left: float
    top: float
    right: float
    bottom: float

    @property
    def height(self) -> float:
        return self.bottom - self.top


@dataclass(frozen=True)
class RuledTable:
    """A table drawn with ruling lines on a scanned page: its box in page pixels and its cells' OCR text,
    ``None`` for a cell merged over by its neighbour (a missing line between them), as
    ``tasks.ingest.tables.table_text`` takes a grid."""

    left: float
    top: float
    right: float
    bottom: float
    grid: tuple[tuple[str | None, ...], ...]

    def holds(self, box: OcrBox) -> bool:
        x, y = (box.left + box.right) / 2, (box.top + box.bottom) / 2
        return self.left <= x <= self.right and self.top <= y <= self.bottom


@dataclass(frozen=True)
class OcrPage:
    boxes: tuple[OcrBox, ...]
    lines: tuple[tuple[OcrBox, ...], ...]  # reading order: lines top to bottom, boxes left to right
    tables: tuple[RuledTable, ...] = ()

    @property
    def text(self) -> str:
        return "\n".join(line_text(line) for line in self.lines)

    def text_with_tables(
        self, previous: TableText | None = None
    ) -> tuple[str, list[TableText], TableText | None]:
        """The page text with each ruled table written as ``tables.table_text`` writes a PDF's (row lines
        "北京 住宿费 一类人员 1100元；…"), the tables, and the table still open at the bottom of the page.
        ``previous``: the table left open by the page before; a table first on this page as wide continues it."""
        if not self.tables:
            return self.text, [], None
        outside = [tuple(b for b in line if not any(t.holds(b) for t in self.tables)) for line in self.lines]
        lines = [(line[0].top, line_text(line)) for line in outside if line]
        out: list[str] = []
        rendered: list[TableText] = []
        open_table = None
        placed = 0
        for table in sorted(self.tables, key=lambda t: t.top):
            above = [text for top, text in lines if top < table.top]
            out.extend(text for _, text in lines[placed : len(above)])
            placed = max(placed, len(above))
            columns = max(map(len, table.grid))
            first = (
                previous is not None and not rendered and not any(clean_lines("\n".join(above), is_pdf=True))
            )
            continues = previous if first and previous is not None and columns == previous.columns else None
            written = table_text(
                table.grid, before="\n".join(above[-3:]) if continues is None else "", continues=continues
            )
            rendered.append(written)
            out.append("\n" + written.text + "\n")
            below = [text for top, text in lines if top > table.bottom]
            open_table = written if not any(clean_lines("\n".join(below), is_pdf=True)) else None
        out.extend(text for _, text in lines[placed:])
        return "\n".join(out), rendered, open_table

    @property
    def confidence(self) -> float | None:
        """Mean confidence per character read (a one-character box weighs less than a whole line); None when
        nothing was read."""
        weights = [len(b.text) for b in self.boxes]
        if not sum(weights):
            return None
        return sum(b.confidence * w for b, w in zip(self.boxes, weights, strict=True)) / sum(weights)


@functools.cache
def _engine() -> Any:
    try:
        from rapidocr_onnxruntime import RapidOCR
    except ImportError as exc:
        raise OcrUnavailable(f"OCR is not installed ({OCR_INSTALL})") from exc
    return RapidOCR()


def ocr_available() -> bool:
    try:
        _engine()
    except OcrUnavailable:
        return False
    return True


def page_image(page: pymupdf.Page, dpi: int = OCR_DPI) -> np.ndarray:
    """The page rendered as a BGR image (the channel order OpenCV and the engine expect)."""
    pix = page.get_pixmap(dpi=dpi, alpha=False, colorspace=pymupdf.csRGB)
    rgb = np.frombuffer(pix.samples, dtype=np.uint8).reshape(pix.height, pix.width, 3)
    return np.ascontiguousarray(rgb[:, :, ::-1])


def read_image(image: np.ndarray) -> OcrPage:
    """OCR of one image: its boxes and their lines in reading order. Raises ``OcrUnavailable``."""
    # No angle classifier: on upright scans it turned short numbers in table cells upside down ("600" read
    # as "009", "960" as "096").
    result, _ = _engine()(image, use_cls=False)
    boxes = []
    for points, text, score in result or []:
        xs = [p[0] for p in points]
        ys = [p[1] for p in points]
        # Widely set digits come back spaced ("6 4 5"); inside one box they are one number.
        text = _SPACED_DIGITS.sub("", text.strip())
        if text:
            boxes.append(OcrBox(text, float(score), min(xs), min(ys), max(xs), max(ys)))
    return OcrPage(tuple(boxes), tuple(reading_lines(boxes)), tuple(ruled_tables(image, boxes)))


def read_page(page: pymupdf.Page, dpi: int = OCR_DPI) -> OcrPage:
    """OCR of one PDF page rendered at ``dpi``. Raises ``OcrUnavailable``."""
    return read_image(page_image(page, dpi))


def reading_lines(boxes: list[OcrBox]) -> list[tuple[OcrBox, ...]]:
    """Boxes grouped into lines: a box joins the line it overlaps vertically by half its height or more (a
    slightly skewed scan still reads as one line); lines top to bottom, boxes in a line left to right."""
    lines: list[list[OcrBox]] = []
    for box in sorted(boxes, key=lambda b: (b.top + b.bottom) / 2):
        line = lines[-1] if lines else None
        if line is not None:
            top = statistics.median(b.top for b in line)
            bottom = statistics.median(b.bottom for b in line)
            overlap = min(bottom, box.bottom) - max(top, box.top)
            if overlap >= 0.5 * min(box.height, bottom - top):
                line.append(box)
                continue
        lines.append([box])
    return [tuple(sorted(line, key=lambda b: b.left)) for line in lines]


def line_text(line: tuple[OcrBox, ...]) -> str:
    """A line's boxes joined: with a space where they stand a character height or more apart (table cells,
    a heading's number and title), directly otherwise (one sentence the engine cut in two)."""
    out = ""
    for previous, box in zip((None, *line), line, strict=False):
        if previous is not None:
            gap = box.left - previous.right
            out += " " if gap > _CELL_GAP * min(previous.height, box.height) else ""
        out += box.text
    return out


def ruled_tables(image: np.ndarray, boxes: list[OcrBox]) -> list[RuledTable]:
    """Tables drawn with ruling lines, found in the image (long horizontal and vertical strokes), with the
    OCR boxes placed in their cells. A cell whose border line is missing is merged with its neighbour: a
    header spanning columns ("住宿费" over three staff grades), a name spanning rows."""
    import cv2  # OpenCV comes with the ocr extra (headless)

    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    ink = (gray < 200).astype(np.uint8) * 255
    height, width = ink.shape
    horizontal = cv2.morphologyEx(ink, cv2.MORPH_OPEN, np.ones((1, max(width // 30, 10)), np.uint8))
    vertical = cv2.morphologyEx(ink, cv2.MORPH_OPEN, np.ones((max(height // 60, 10), 1), np.uint8))
    count, _, stats, _ = cv2.connectedComponentsWithStats(cv2.bitwise_or(horizontal, vertical))
    tables = []
    for x, y, w, h, _ in stats[1:count]:
        if w < width // 5 or h < height // 40:
            continue  # a rule under a heading, a stroke of a character: no grid
        rows = _strokes(horizontal[y : y + h, x : x + w].sum(axis=1), y)
        columns = _strokes(vertical[y : y + h, x : x + w].sum(axis=0), x)
        if len(rows) < 3 or len(columns) < 3:
            continue
        tables.append(_grid(rows, columns, horizontal, vertical, boxes))
    return tables


def _strokes(profile: np.ndarray, offset: int) -> list[float]:
    """Positions of the lines in a projection (any run of line pixels of a few px), merged when adjacent."""
    at = [i for i, v in enumerate(profile) if v > 255 * 15]
    groups: list[list[int]] = []
    for i in at:
        if groups and i - groups[-1][-1] <= 3:
            groups[-1].append(i)
        else:
            groups.append([i])
    return [offset + sum(g) / len(g) for g in groups]


def _grid(
    rows: list[float], columns: list[float], horizontal: np.ndarray, vertical: np.ndarray, boxes: list[OcrBox]
) -> RuledTable:
    n_rows, n_cols = len(rows) - 1, len(columns) - 1
    parent = {(r, c): (r, c) for r in range(n_rows) for c in range(n_cols)}

    def find(cell: tuple[int, int]) -> tuple[int, int]:
        while parent[cell] != cell:
            cell = parent[cell]
        return cell

    def join(a: tuple[int, int], b: tuple[int, int]) -> None:
        first, second = sorted((find(a), find(b)))
        parent[second] = first  # the top-left cell of a merged area holds its text

    def drawn(mask: np.ndarray, x: float, y: float) -> bool:
        return bool(mask[int(y) - 3 : int(y) + 4, int(x) - 3 : int(x) + 4].any())

    for r in range(n_rows):
        middle_y = (rows[r] + rows[r + 1]) / 2
        for c in range(n_cols):
            middle_x = (columns[c] + columns[c + 1]) / 2
            if c + 1 < n_cols and not drawn(vertical, columns[c + 1], middle_y):
                join((r, c), (r, c + 1))
            if r + 1 < n_rows and not drawn(horizontal, middle_x, rows[r + 1]):
                join((r, c), (r + 1, c))
    texts: dict[tuple[int, int], list[OcrBox]] = {}
    table = RuledTable(columns[0], rows[0], columns[-1], rows[-1], ())
    for box in boxes:
        if table.holds(box):
            r = min(max(bisect.bisect_right(rows, (box.top + box.bottom) / 2) - 1, 0), n_rows - 1)
            c = min(max(bisect.bisect_right(columns, (box.left + box.right) / 2) - 1, 0), n_cols - 1)
            texts.setdefault(find((r, c)), []).append(box)
    grid = tuple(
        tuple(
            " ".join(line_text(line) for line in reading_lines(texts.get((r, c), [])))
            if find((r, c)) == (r, c)
            else None
            for c in range(n_cols)
        )
        for r in range(n_rows)
    )
    return RuledTable(columns[0], rows[0], columns[-1], rows[-1], grid)
