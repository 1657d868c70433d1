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

import functools
import statistics
from dataclasses import dataclass
from typing import Any

import numpy as np
import pymupdf

# Measured on examples/sample_rules.pdf page 2 (bench/ingest.py --dpi): 150 dpi read 99.5% of the text-layer
# characters in 9 s, 200 dpi 97.5% in 15 s, 300 dpi 97.5% in 43 s. Larger images are scaled down by the
# detector (max side 2000 px) and cost time without reading better.
OCR_DPI = 150
OCR_INSTALL = "pip install -e '.[ocr]' && pip install --no-deps rapidocr-onnxruntime==1.4.4 (or make venv)"
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
class OcrPage:
    boxes: tuple[OcrBox, ...]
    lines: tuple[tuple[OcrBox, ...], ...]  # reading order: lines top to bottom, boxes left to right

    @property
    def text(self) -> str:
        return "\n".join(line_text(line) for line in self.lines)

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
    result, _ = _engine()(image)
    boxes = []
    for points, text, score in result or []:
        xs = [p[0] for p in points]
        ys = [p[1] for p in points]
        if text.strip():
            boxes.append(OcrBox(text.strip(), float(score), min(xs), min(ys), max(xs), max(ys)))
    return OcrPage(tuple(boxes), tuple(reading_lines(boxes)))


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
