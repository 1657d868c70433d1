"""Chunking that knows Chinese regulations.

A chunk is one article (第X条) with the chapter heading before it, or, in documents without articles, one
top-level item (一、). Each chunk keeps its heading path (章 > 节 > 条) and its character offsets in the
document text, so any span can be shown in its source. Articles longer than ``chunk_size`` are split at
sentence ends (。；) with a small overlap.
"""

from __future__ import annotations

import bisect
import hashlib
import re
from dataclasses import dataclass

from tasks.ingest.normalize import PageSpan
from tasks.ingest.numbers import CN_INDEX_NUMERALS

# The one set of heading and list-numbering patterns; facts, teachers and the answer guard import them.
_INDEX = rf"[{CN_INDEX_NUMERALS}\d]+"


def heading(words: str) -> str:
    """Regex source for 第 + a number + one of ``words`` (第二十条, 第 3 章: PDF text puts spaces in it)."""
    return rf"第\s*{_INDEX}\s*[{words}]"


# Simplified and traditional forms: Big5 documents write 條 and 節.
_CHAPTER = re.compile("^" + heading("章编編"))
_SECTION = re.compile("^" + heading("节節"))
_ARTICLE = re.compile("^" + heading("条條"))
_TOP_ITEM = re.compile(rf"^[{CN_INDEX_NUMERALS}]+、")
# Numbering at the start of a clause is structure, not subject: 第二十条, （一）, 一、, 1.
MARKER = rf"{heading('条章节款项條節')}\s*|[（(]{_INDEX}[)）]\s*|[{CN_INDEX_NUMERALS}]+、\s*|\d+[.．、)）]\s*"
LEADING_MARKER = re.compile(rf"^\s*(?:{MARKER})+")
_SENTENCE_END = re.compile(r"[。；;！？!?]|\n")
_SOFT_BREAK = re.compile(r"[，,、：:]")
_HEADING_TITLE_CHARS = 24


@dataclass(frozen=True)
class Chunk:
    chunk_id: str
    seq: int
    heading_path: str
    text: str  # == document_text[start_char:end_char]
    start_char: int
    end_char: int
    page_start: int | None
    page_end: int | None


@dataclass
class _Unit:
    start: int
    end: int
    path: list[str]
    headings_only: bool


def _label(line: str, pattern: re.Pattern[str], whole: bool) -> str:
    """The heading label: a chapter keeps its title (第二章 差旅费), an article only its number (第七条)."""
    if whole:
        return line[:_HEADING_TITLE_CHARS].strip()
    match = pattern.match(line)
    return match.group(0).replace(" ", "") if match else line[:_HEADING_TITLE_CHARS]


def _units(text: str) -> list[_Unit]:
    """Split the document into article-sized units at 章/节/条 (or 一、) boundaries, whole lines only."""
    lines: list[tuple[int, int]] = []
    pos = 0
    for line in text.split("\n"):
        lines.append((pos, pos + len(line)))
        pos += len(line) + 1
    has_articles = any(_ARTICLE.match(text[s:e]) for s, e in lines)
    boundary = _ARTICLE if has_articles else _TOP_ITEM

    chapter = section = ""
    units: list[_Unit] = []
    for start, end in lines:
        line = text[start:end]
        if not line.strip():
            continue
        if _CHAPTER.match(line):
            chapter, section = _label(line, _CHAPTER, whole=True), ""
            units.append(_Unit(start, end, [chapter], headings_only=True))
            continue
        if _SECTION.match(line):
            section = _label(line, _SECTION, whole=True)
            path = [p for p in (chapter, section) if p]
            if units and units[-1].headings_only:
                units[-1].end, units[-1].path = end, path
            else:
                units.append(_Unit(start, end, path, headings_only=True))
            continue
        if boundary.match(line) or not units:
            path = [p for p in (chapter, section) if p]
            if boundary.match(line):
                path.append(_label(line, boundary, whole=not has_articles))
            if units and units[-1].headings_only:
                units[-1].end, units[-1].path, units[-1].headings_only = end, path, False
            else:
                units.append(_Unit(start, end, path, headings_only=False))
            continue
        units[-1].end = end
        units[-1].headings_only = False
    return units


def _split_long(text: str, start: int, end: int, size: int, overlap: int) -> list[tuple[int, int]]:
    """Pieces of text[start:end] of at most ``size`` chars, cut after sentence ends, overlapping a little."""
    if end - start <= size:
        return [(start, end)]
    pieces: list[tuple[int, int]] = []
    piece_start = start
    while end - piece_start > size:
        limit = piece_start + size
        cut = (
            _last_break(text, piece_start, limit, _SENTENCE_END)
            or _last_break(text, piece_start, limit, _SOFT_BREAK)
            or limit
        )
        pieces.append((piece_start, cut))
        # Overlap: restart at the last sentence start that lies within `overlap` chars of the cut.
        next_start = cut
        back = _last_break(text, max(piece_start + 1, cut - overlap), cut - 1, _SENTENCE_END)
        if back and back < cut:
            next_start = back
        piece_start = next_start if next_start > piece_start else cut
        while piece_start < end and text[piece_start] == "\n":
            piece_start += 1
    if piece_start < end:
        pieces.append((piece_start, end))
    return pieces


def _last_break(text: str, lo: int, hi: int, pattern: re.Pattern[str]) -> int | None:
    """Position just after the last match of ``pattern`` in text[lo:hi], if it is past ``lo``."""
    best = None
    for match in pattern.finditer(text, lo, hi):
        best = match.end()
    return best if best and best > lo else None


def chunk_document(
    doc_id: str, text: str, pages: list[PageSpan], size: int = 600, overlap: int = 80
) -> list[Chunk]:
    """Chunks of the normalised document ``text`` (see module doc)."""
    page_starts = [p.start_char for p in pages]
    chunks: list[Chunk] = []
    for unit in _units(text):
        for start, end in _split_long(text, unit.start, unit.end, size, overlap):
            while end > start and text[end - 1] in " \n":
                end -= 1
            if end <= start:
                continue
            body = text[start:end]
            digest = hashlib.sha256(f"{doc_id}:{start}:{end}:{body}".encode()).hexdigest()[:24]
            chunks.append(
                Chunk(
                    chunk_id=digest,
                    seq=len(chunks),
                    heading_path=" > ".join(unit.path),
                    text=body,
                    start_char=start,
                    end_char=end,
                    page_start=_page_at(page_starts, pages, start),
                    page_end=_page_at(page_starts, pages, end - 1),
                )
            )
    return chunks


def _page_at(page_starts: list[int], pages: list[PageSpan], offset: int) -> int | None:
    if not pages:
        return None
    index = bisect.bisect_right(page_starts, offset) - 1
    return pages[max(index, 0)].page_no
