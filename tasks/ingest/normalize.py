"""Normalising extracted page text into one document text with known page offsets.

What it fixes, each seen in real rule PDFs: page footers ("- 8 -", "第 3 页"), hard line wraps inside a
paragraph, full-width digits and letters, and spaces that PDF extraction puts between Chinese characters and
numbers ("1 元", "30 天", "8.8 折").
Chinese punctuation (，。；（）) is kept: it carries meaning for chunking.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tasks.ingest.numbers import CN_INDEX_NUMERALS

# Full-width digits, Latin letters and the symbols that matter for numbers fold to ASCII.
_FOLD = {0xFF10 + i: ord("0") + i for i in range(10)}
_FOLD.update({0xFF21 + i: ord("A") + i for i in range(26)})
_FOLD.update({0xFF41 + i: ord("a") + i for i in range(26)})
_FOLD.update({ord("％"): "%", ord("\u3000"): " ", ord("\u00a0"): " ", ord("／"): "/", ord("～"): "~"})
# Invisible format characters (zero-width spaces and joiners, bidi marks and overrides, BOM, soft hyphen)
# are dropped: inside a number they would split it ("1\u200b00元" read as 1 and 00元).
_INVISIBLE = [0x00AD, 0xFEFF, *range(0x200B, 0x2010), *range(0x202A, 0x202F), *range(0x2060, 0x2065)]
_FOLD.update(dict.fromkeys([*_INVISIBLE, *range(0x2066, 0x206A)]))
_DIGITS = "0123456789"
_FULLWIDTH_DOT_IN_NUMBER = re.compile(r"(?<=\d)[．。·](?=\d)")

_CJK = r"\u3000-\u303f\u3400-\u9fff\uf900-\ufaff\uff00-\uffef"
# A space between a CJK character and a digit carries no meaning in Chinese; PDF extraction inserts them
# ("1 元", "30 天", "达到 1000 元"). Spaces between two CJK characters are left alone: headings use them.
_SPACE_AROUND_CJK = re.compile(rf"(?<=[0-9%])[ \t]+(?=[{_CJK}])|(?<=[{_CJK}])[ \t]+(?=[0-9])")

_FOOTER_ANYWHERE = re.compile(
    r"^(?:[-—–－_~\s]*[-—–－]\s*\d{1,4}\s*[-—–－][-—–－_~\s]*"  # - 8 -
    r"|第\s*\d{1,4}\s*页(?:\s*[,，/]?\s*共\s*\d{1,4}\s*页)?"  # 第 3 页 / 第3页 共9页
    r"|共\s*\d{1,4}\s*页\s*[,，]?\s*第\s*\d{1,4}\s*页"
    r"|[Pp]age\s*\d{1,4}(?:\s*of\s*\d{1,4})?)$"
)
# A bare number is a page number only at the top or bottom of a PDF page; elsewhere it may be a table cell.
_BARE_PAGE_NUMBER = re.compile(r"^\d{1,4}(\s*/\s*\d{1,4})?$")

_PARAGRAPH_START = re.compile(
    rf"^(第[{CN_INDEX_NUMERALS}\d]+[章节条節條]|[{CN_INDEX_NUMERALS}]+[、.．]|[（(][{CN_INDEX_NUMERALS}\d]+[)）]|\d{{1,2}}[、.．）)](?!\d{{1,2}}[%折])"
    r"|[①-⑳]|附件|附表|附则)"
)
_SENTENCE_END = re.compile(r"[。；！？：:;!?]$")
# An English sentence ("... mode.") or a markup tag ("<|im_end|>") ending a line ends its block too; joining
# it to the next line would glue foreign text (or text aimed at a model) onto the rule that follows.
_BLOCK_END = re.compile(r"(?:[A-Za-z]\.|>)$")
_MARKDOWN_PREFIX = re.compile(r"^(#{1,6}\s+|>\s*|[-*+]\s+(?=\S))")


@dataclass(frozen=True)
class PageSpan:
    page_no: int  # 1-based
    start_char: int  # where the page's first line lands in the document text
    char_count: int


def fold(text: str) -> str:
    """Full-width digits/letters to ASCII; spaces between Chinese characters and digits removed."""
    text = text.translate(_FOLD)
    text = _FULLWIDTH_DOT_IN_NUMBER.sub(".", text)
    return _SPACE_AROUND_CJK.sub("", text)


def clean_lines(page_text: str, is_pdf: bool, markdown: bool = False) -> list[str]:
    """The page's lines, folded and stripped, footers and page numbers removed; '' marks a blank line."""
    lines = [line.strip() for line in fold(page_text).splitlines()]
    if markdown:
        lines = [_MARKDOWN_PREFIX.sub("", line).replace("**", "").strip() for line in lines]
    kept = [line for line in lines if not _FOOTER_ANYWHERE.match(line)]
    if is_pdf:
        nonblank = [i for i, line in enumerate(kept) if line]
        for edge in (nonblank[:1] + nonblank[-1:]) if nonblank else []:
            if _BARE_PAGE_NUMBER.match(kept[edge]):
                kept[edge] = ""
    return kept


def starts_paragraph(previous: str, line: str) -> bool:
    """Whether ``line`` begins a new paragraph rather than continuing a hard-wrapped one."""
    return (
        not previous
        or bool(_PARAGRAPH_START.match(line))
        or bool(_SENTENCE_END.search(previous))
        or bool(_BLOCK_END.search(previous))
        or line.startswith(("《", "【"))
    )


def join_pages(pages: list[str], is_pdf: bool, markdown: bool = False) -> tuple[str, list[PageSpan]]:
    """One normalised document text from page texts, and where each page starts in it."""
    parts: list[str] = []
    length = 0
    previous = ""
    blank_pending = False
    spans: list[PageSpan] = []
    for page_no, page_text in enumerate(pages, start=1):
        page_start = length
        first_line = True
        for line in clean_lines(page_text, is_pdf, markdown):
            if not line:
                blank_pending = True
                continue
            if parts and (blank_pending or starts_paragraph(previous, line)):
                parts.append("\n")
                length += 1
            elif parts and previous[-1] in _DIGITS and line[0] in _DIGITS:
                parts.append("\n")  # table cells, one per line: joining "100" and "200" would invent 100200
                length += 1
            elif parts and previous[-1:].isascii() and line[:1].isascii() and previous[-1:].isalpha():
                parts.append(" ")  # re-join a wrapped Latin word sequence with its space
                length += 1
            if first_line:
                page_start, first_line = length, False
            parts.append(line)
            length += len(line)
            previous = line
            blank_pending = False
        spans.append(PageSpan(page_no, page_start, length - page_start))
    return "".join(parts), spans
