"""Render ``examples/sample_rules.md`` into a multi-page A4 PDF with PyMuPDF.

The PDF imitates a real university finance regulation: a large centred title, centred
chapter headings, body paragraphs wrapped to the page width, and a ``- N -`` page footer
centred at the bottom of every page (the ingest step must strip these footers).

Chinese has no spaces, so lines are wrapped by measured glyph width.  Runs of ASCII
letters/digits (``1,200``, ``1500-2400``, ``8.8``) are never split across lines nor
separated from the first character of their unit, and closing punctuation never starts a
line, so numbers survive text extraction.  Other lines break mid-phrase, like real PDFs.

The output is byte-stable: metadata dates are fixed and the file is saved with
``reproducible=True`` / ``no_new_id=True``.

Usage::

    python examples/make_sample_pdf.py [--out PATH] [--src PATH]
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pymupdf

HERE = Path(__file__).resolve().parent
DEFAULT_SRC = HERE / "sample_rules.md"
DEFAULT_OUT = HERE / "sample_rules.pdf"

FONT_NAME = "china-s"  # CJK font shipped with PyMuPDF (Droid Sans Fallback), embedded as a subset.
PAGE_W, PAGE_H = pymupdf.paper_size("a4")
MARGIN_X = 72.0
MARGIN_TOP = 72.0
MARGIN_BOTTOM = 80.0
FOOTER_Y = PAGE_H - 40.0

TITLE_SIZE = 18.0
HEADING_SIZE = 14.0
BODY_SIZE = 11.0
FOOTER_SIZE = 9.0
LINE_FACTOR = 1.7  # line pitch as a multiple of the font size

FIXED_DATE = "D:20250728000000+08'00'"

# Tokens that must stay on one line: ASCII words/numbers incl. separators, else one char.
_TOKEN_RE = re.compile(r"[0-9A-Za-z０-９][0-9A-Za-z０-９.,%\-–～~/·]*|.", re.S)
# Characters that must not begin a line (kinsoku): they are glued to the previous token.
_NO_LINE_START = set("，。、；：！？）》」』”’〕】%,.;:!?)")


@dataclass(frozen=True)
class Block:
    """One logical paragraph of the document with its rendering style."""

    text: str
    size: float
    centred: bool
    space_before: float


def parse_markdown(md: str) -> list[Block]:
    """Turn the small Markdown subset used by sample_rules.md into styled blocks."""
    blocks: list[Block] = []
    for raw in md.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("## "):
            blocks.append(Block(line[3:].strip(), HEADING_SIZE, True, HEADING_SIZE))
        elif line.startswith("# "):
            blocks.append(Block(line[2:].strip(), TITLE_SIZE, True, 0.0))
        else:
            blocks.append(Block(line, BODY_SIZE, False, BODY_SIZE * 0.3))
    return blocks


def tokenize(text: str) -> list[str]:
    """Split text into unbreakable units for line wrapping."""
    tokens: list[str] = []
    after_number = False
    for tok in _TOKEN_RE.findall(text):
        # Glue closing punctuation to the previous unit, and a number to its unit's first char.
        if tokens and (after_number or tok[0] in _NO_LINE_START):
            tokens[-1] += tok
            after_number = False
        else:
            tokens.append(tok)
            after_number = tok[0].isdigit()
    return tokens


def wrap(
    text: str, font: pymupdf.Font, size: float, width: float, first_width: float | None = None
) -> list[str]:
    """Wrap ``text`` greedily so that no line is wider than ``width`` points.

    ``first_width`` (default ``width``) limits the first line, which may be indented.
    """
    lines: list[str] = []
    current = ""
    for tok in tokenize(text):
        limit = width if lines else (first_width if first_width is not None else width)
        candidate = current + tok
        if current and font.text_length(candidate, fontsize=size) > limit:
            lines.append(current)
            current = tok
        else:
            current = candidate
    if current:
        lines.append(current)
    return lines


def render(md: str) -> pymupdf.Document:
    """Lay out the Markdown text on A4 pages and return the PDF document."""
    font = pymupdf.Font(FONT_NAME)
    body_width = PAGE_W - 2 * MARGIN_X
    bottom = PAGE_H - MARGIN_BOTTOM
    # Layout pass: each page is a list of (x, y, text, fontsize) baseline placements.
    pages: list[list[tuple[float, float, str, float]]] = []
    y = 0.0

    def new_page() -> None:
        nonlocal y
        pages.append([])
        y = MARGIN_TOP

    for block in parse_markdown(md):
        pitch = block.size * LINE_FACTOR
        # Body paragraphs get a two-character first-line indent, as in printed regulations.
        indent = 0.0 if block.centred else 2 * block.size
        lines = wrap(block.text, font, block.size, body_width, first_width=body_width - indent)
        if not pages or y + block.space_before + pitch > bottom:
            new_page()
        else:
            y += block.space_before
        for i, line in enumerate(lines):
            if y + pitch > bottom:
                new_page()
            y += pitch
            if block.centred:
                x = (PAGE_W - font.text_length(line, fontsize=block.size)) / 2
            else:
                x = MARGIN_X + (indent if i == 0 else 0.0)
            pages[-1].append((x, y, line, block.size))

    # Drawing pass.  The footer is appended last so extracted text reads body first, footer last.
    doc = pymupdf.open()
    for number, placements in enumerate(pages, start=1):
        page = doc.new_page(width=PAGE_W, height=PAGE_H)
        writer = pymupdf.TextWriter(page.rect)
        for x, y_base, text, size in placements:
            writer.append((x, y_base), text, font=font, fontsize=size)
        label = f"- {number} -"
        x_footer = (PAGE_W - font.text_length(label, fontsize=FOOTER_SIZE)) / 2
        writer.append((x_footer, FOOTER_Y), label, font=font, fontsize=FOOTER_SIZE)
        writer.write_text(page)
    # The font is embedded; keep only the glyphs actually used so the file stays small.
    doc.subset_fonts()

    title = parse_markdown(md)[0].text if md.strip() else ""
    doc.set_metadata(
        {
            "title": title,
            "author": "明湖大学财务处（虚构示例）",
            "subject": "Fictional sample finance regulation for slm-factory",
            "creator": "examples/make_sample_pdf.py",
            "producer": "PyMuPDF",
            "creationDate": FIXED_DATE,
            "modDate": FIXED_DATE,
        }
    )
    return doc


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=DEFAULT_SRC, help="Markdown source file")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="PDF file to write")
    args = parser.parse_args(argv)

    doc = render(args.src.read_text(encoding="utf-8"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    doc.save(args.out, garbage=4, deflate=True, no_new_id=True, reproducible=True)
    pages = doc.page_count
    doc.close()
    print(f"wrote {args.out} ({pages} pages, {args.out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
