"""Reading files into page texts: PDF through PyMuPDF, Word (.docx) through python-docx, TXT/Markdown with
encoding detection.

Every refusal is an ``IngestError`` whose message is one line naming the file and the reason, so the
command line can print it as is and the warehouse can record it.
"""

from __future__ import annotations

import hashlib
import io
import re
import stat
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docx
import pymupdf
from charset_normalizer import from_bytes
from docx.oxml.ns import qn

from tasks.ingest.ocr import OcrUnavailable, read_page
from tasks.ingest.tables import TableCell, TableText, read_docx_table, read_pdf_page

PDF_SUFFIXES = {".pdf"}
DOCX_SUFFIXES = {".docx"}
TEXT_SUFFIXES = {".txt", ".md", ".markdown", ".text"}
SUPPORTED_SUFFIXES = PDF_SUFFIXES | DOCX_SUFFIXES | TEXT_SUFFIXES
# Files people keep next to their rules that no route reads, and what to do instead. A folder lists them as
# skipped with this reason; named on the command line they are refused with it.
_SAVE_AS = "save it as PDF, DOCX or TXT"
UNSUPPORTED_REASONS = {
    ".doc": "old binary Word file (.doc): open it in Word or LibreOffice and save it as .docx",
    ".wps": "WPS document (.wps): save it as .docx",
    ".rtf": "unsupported type .rtf: save it as .docx",
    ".odt": "unsupported type .odt: save it as .docx",
    **{s: f"unsupported type {s} (spreadsheet): {_SAVE_AS}" for s in (".xls", ".xlsx", ".et", ".ods")},
    **{s: f"unsupported type {s} (slides): {_SAVE_AS}" for s in (".ppt", ".pptx", ".dps", ".odp")},
}
# What each route is called in messages and `slm docs`.
ROUTES = {"pdf": "pdf text", "docx": "docx", "txt": "txt", "md": "md"}

# MuPDF reports damage on stderr as well as by exception; the exception is what we turn into a message.
pymupdf.TOOLS.mupdf_display_errors(False)

# Chinese text files in the wild: UTF-8 (with or without BOM), GB18030 (a superset of GBK/GB2312), Big5.
_CANDIDATE_ENCODINGS = ["utf_8", "gb18030", "big5"]
# What a rule text is made of: ASCII, CJK ideographs and punctuation, full-width forms.
_TEXT_CHARS = re.compile(
    r"[\t\n\r\x20-\x7e\u2000-\u206f\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uff00-\uffef]"
)


class IngestError(Exception):
    """A file that cannot be ingested. ``str(err)`` is the one-line reason, without the file name."""


@dataclass(frozen=True)
class RawDocument:
    path: Path
    doc_id: str  # sha256 of the bytes: the same file twice is the same document
    kind: str  # pdf | docx | txt | md
    size_bytes: int
    encoding: str | None
    pages: list[str]  # raw text per page (a text file is one page)
    # Per page: how its text was read (text | ocr) and, for OCR, the engine's mean confidence. Empty for
    # documents read as text throughout.
    page_routes: tuple[str, ...] = ()
    page_confidence: tuple[float | None, ...] = ()
    # Each table row line (as normalised text) -> the subject of each of its "；" clauses: row + column
    # header ("三类人员 住宿费"), which the ledger takes as the facts' subjects (tasks.ingest.tables).
    table_rows: dict[str, tuple[TableCell, ...]] = field(default_factory=dict)


def unsupported_reason(path: Path) -> str:
    """Why no route reads a file found in a folder ("" when one does)."""
    suffix = path.suffix.lower()
    if suffix in SUPPORTED_SUFFIXES:
        if path.name.startswith("~$"):
            return "Office lock file of a document open in Word (not a document)"
        return ""
    if suffix in UNSUPPORTED_REASONS:
        return UNSUPPORTED_REASONS[suffix]
    return f"unsupported type {suffix or '(no extension)'}: {_SAVE_AS}"


def file_kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in PDF_SUFFIXES:
        return "pdf"
    if suffix in DOCX_SUFFIXES:
        return "docx"
    if suffix in (".md", ".markdown"):
        return "md"
    return "txt"


def content_id(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_bytes(path: Path, max_file_mb: float) -> bytes:
    status = path.stat()
    if not stat.S_ISREG(status.st_mode):
        # Reading a pipe would wait for a writer forever; a folder or device is no document either.
        raise IngestError("not a regular file (a folder, pipe, socket or device)")
    size = status.st_size
    if size > max_file_mb * 1024 * 1024:
        raise IngestError(
            f"file too large ({size / 1024 / 1024:.0f} MB > max_file_mb {max_file_mb:g}); "
            "raise SLM_MAX_FILE_MB"
        )
    return path.read_bytes()


def extract(
    path: Path,
    data: bytes,
    max_pages: int,
    min_text_chars_per_page: int,
    max_file_mb: float = float("inf"),
) -> RawDocument:
    """Turn the bytes of ``path`` into page texts, or raise ``IngestError`` saying why not.

    ``max_file_mb`` also bounds what a .docx unpacks to (a zip bomb is refused before it is parsed)."""
    kind = file_kind(path)
    if path.suffix.lower() in UNSUPPORTED_REASONS:
        # Named on the command line: these are binary formats that reading as text would only call "binary".
        raise IngestError(UNSUPPORTED_REASONS[path.suffix.lower()])
    if not data.strip():
        raise IngestError("empty file (no content)")
    routes: tuple[str, ...] = ()
    confidence: tuple[float | None, ...] = ()
    table_rows: dict[str, tuple[TableCell, ...]] = {}
    if kind == "pdf":
        pages, routes, confidence, table_rows = _pdf_pages(data, max_pages, min_text_chars_per_page)
        encoding = None
    elif kind == "docx":
        text, table_rows = _docx_text(data, max_file_mb)
        pages = [text]
        encoding = None
    else:
        text, encoding = decode_text(data)
        pages = [text]
    return RawDocument(
        path, content_id(data), kind, len(data), encoding, pages, routes, confidence, table_rows
    )


def _pdf_pages(
    data: bytes, max_pages: int, min_text_chars_per_page: int
) -> tuple[list[str], tuple[str, ...], tuple[float | None, ...], dict[str, tuple[TableCell, ...]]]:
    """Page texts, each page's route (text | ocr), OCR confidence (None for text pages) and the subjects
    of its table rows (``RawDocument.table_rows``)."""
    if not data.lstrip().startswith(b"%PDF"):
        raise IngestError("not a PDF (no %PDF header): corrupt or mislabelled file")
    pymupdf.TOOLS.reset_mupdf_warnings()
    try:
        doc = pymupdf.open(stream=data, filetype="pdf")
    except Exception as exc:  # PyMuPDF raises several types for damaged files
        raise IngestError(f"corrupt PDF, cannot be opened ({_short(exc)})") from exc
    with doc:
        damaged = doc.is_repaired
        if doc.needs_pass or doc.is_encrypted:
            raise IngestError("encrypted PDF: a password is required; save an unencrypted copy and retry")
        if doc.page_count == 0:
            raise IngestError("corrupt or empty PDF: no pages could be read")
        if doc.page_count > max_pages:
            raise IngestError(
                f"too many pages ({doc.page_count} > max_pages {max_pages}); "
                "split the file or raise SLM_MAX_PAGES"
            )
        try:
            pages, table_rows = _pdf_text_layer(doc)
        except Exception as exc:
            raise IngestError(f"corrupt PDF, text extraction failed ({_short(exc)})") from exc
        text_chars = sum(_visible_chars(p) for p in pages)
        if text_chars < min_text_chars_per_page * len(pages):
            damage = _mupdf_damage()
            if damaged or damage:
                # Not a scan: the text was lost with the file's structure (truncated, broken objects).
                raise IngestError(
                    f"corrupt PDF, damaged beyond reading: no text recovered ({damage or 'repaired'})"
                )
        return (*_read_scanned_pages(doc, pages, min_text_chars_per_page, table_rows), table_rows)


def _pdf_text_layer(doc: pymupdf.Document) -> tuple[list[str], dict[str, tuple[TableCell, ...]]]:
    """Each page's text layer, its ruled tables written as row lines (a table running on over the next
    page read as one), and the subjects of those lines."""
    pages: list[str] = []
    table_rows: dict[str, tuple[TableCell, ...]] = {}
    open_table: TableText | None = None
    for page in doc:
        read = read_pdf_page(page, open_table)
        pages.append(read.text)
        open_table = read.open_table
        for table in read.tables:
            table_rows.update(table.row_cells)
    return pages, table_rows


def _visible_chars(text: str) -> int:
    return len("".join(text.split()))


def _read_scanned_pages(
    doc: pymupdf.Document,
    pages: list[str],
    min_text_chars_per_page: int,
    table_rows: dict[str, tuple[TableCell, ...]],
) -> tuple[list[str], tuple[str, ...], tuple[float | None, ...]]:
    """OCR for each page with (almost) no text layer that shows an image: a scan, page by page, so a document
    with a few scanned pages keeps the text layer of the others. A page OCR reads less from keeps its text.
    Ruled tables on a scanned page are written as the text layer's are; their row subjects go to
    ``table_rows``."""
    scanned = [
        i
        for i, text in enumerate(pages)
        if _visible_chars(text) < min_text_chars_per_page and doc[i].get_images(full=False)
    ]
    routes = ["text"] * len(pages)
    confidence: list[float | None] = [None] * len(pages)
    text_chars = sum(_visible_chars(p) for p in pages)
    if scanned:
        try:
            read = {i: read_page(doc[i]) for i in scanned}
        except OcrUnavailable as exc:
            raise IngestError(
                f"scanned PDF: {len(scanned)} of {len(pages)} pages have no text layer; {exc}"
            ) from exc
        except Exception as exc:  # the engine on an odd image: the file's fault or ours, named either way
            raise IngestError(f"scanned PDF, OCR failed ({_short(exc)})") from exc
        open_table = None
        for i, page in read.items():
            text, tables, open_table = page.text_with_tables(open_table if i - 1 in read else None)
            if _visible_chars(text) > _visible_chars(pages[i]):
                pages[i], routes[i], confidence[i] = text, "ocr", page.confidence
                for table in tables:
                    table_rows.update(table.row_cells)
        if "ocr" not in routes and text_chars < min_text_chars_per_page * len(pages):
            raise IngestError(
                f"scanned PDF: OCR found no text on {len(scanned)} page{'s' * (len(scanned) != 1)} "
                f"({text_chars} characters in {len(pages)} pages)"
            )
    elif text_chars < min_text_chars_per_page * len(pages):
        raise IngestError(
            f"scanned PDF: no text layer ({text_chars} characters in {len(pages)} pages) and no page "
            "image to OCR"
        )
    return pages, tuple(routes), tuple(confidence)


# --- Word (.docx) -------------------------------------------------------------------------------------------

_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # a compound file: an encrypted .docx or an old .doc
_CN_DIGITS = "零一二三四五六七八九"


def _docx_text(data: bytes, max_file_mb: float) -> tuple[str, dict[str, tuple[TableCell, ...]]]:
    """The text of a Word document: one block per paragraph, one line per table row, in document order;
    and the subjects of the table rows (``RawDocument.table_rows``)."""
    if data.startswith(_OLE_MAGIC):
        raise IngestError(
            "encrypted Word file (password protected) or an old .doc renamed .docx: "
            "remove the password or save it as .docx again"
        )
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError) as exc:
        raise IngestError(f"corrupt .docx: not a zip archive ({_short(exc)})") from exc
    with archive:
        # The sizes a zip declares are what its reader will unpack at most (zipfile stops at the declared
        # size), so checking them refuses a zip bomb before any part is inflated.
        unpacked = sum(info.file_size for info in archive.infolist())
        if unpacked > max_file_mb * 1024 * 1024:
            raise IngestError(
                f"file too large when unpacked ({unpacked / 1024 / 1024:.0f} MB > max_file_mb "
                f"{max_file_mb:g}): a zip bomb or a document with huge embedded files; raise SLM_MAX_FILE_MB"
            )
        if "word/document.xml" not in archive.namelist():
            raise IngestError("corrupt .docx: a zip archive without word/document.xml (not a Word file)")
    try:
        document = docx.Document(io.BytesIO(data))
        table_rows: dict[str, tuple[TableCell, ...]] = {}
        text = "\n\n".join(_docx_blocks(document, table_rows))
    except IngestError:
        raise
    except Exception as exc:  # python-docx and lxml raise many types for damaged parts
        raise IngestError(f"corrupt .docx, cannot be read ({_short(exc)})") from exc
    if not text.strip():
        raise IngestError("empty Word document: no text in its paragraphs or tables")
    return text, table_rows


def _docx_blocks(document: Any, table_rows: dict[str, tuple[TableCell, ...]]) -> Iterator[str]:
    """Paragraphs (with their list numbers) and table rows, in document order; each table's row subjects
    are added to ``table_rows``."""
    numbering = _Numbering(document)
    previous = ""
    for item in document.iter_inner_content():
        if isinstance(item, docx.table.Table):
            table = read_docx_table(item, previous)
            table_rows.update(table.row_cells)
            yield from table.lines
            previous = ""
            continue
        text = item.text.strip()
        label = numbering.label(item)
        if label and text:
            text = label + text
        if text:
            yield text
            previous = text


class _Numbering:
    """Word's automatic list numbers (第一条, 一、, （一）, 1.), which live in numbering.xml, not in the text."""

    def __init__(self, document: Any) -> None:
        self.nums: dict[str, tuple[str, dict[int, int]]] = {}
        self.levels: dict[str, dict[int, tuple[int, str, str, str]]] = {}
        self.counters: dict[str, list[int]] = {}  # per abstract list: lists sharing one count on
        self.restarted: set[str] = set()
        self.styles = document.styles
        try:
            root = document.part.numbering_part.element
        except (KeyError, NotImplementedError):  # no numbering part: nothing is numbered
            return
        for abstract in root.findall(qn("w:abstractNum")):
            levels = {}
            for lvl in abstract.findall(qn("w:lvl")):
                levels[int(lvl.get(qn("w:ilvl"), "0"))] = (
                    int(_val(lvl, "w:start") or 1),
                    _val(lvl, "w:numFmt") or "decimal",
                    _val(lvl, "w:lvlText") or "",
                    _val(lvl, "w:suff") or "tab",
                )
            self.levels[abstract.get(qn("w:abstractNumId"), "")] = levels
        for num in root.findall(qn("w:num")):
            starts = {
                int(o.get(qn("w:ilvl"), "0")): int(_val(o, "w:startOverride") or 1)
                for o in num.findall(qn("w:lvlOverride"))
                if o.find(qn("w:startOverride")) is not None
            }
            self.nums[num.get(qn("w:numId"), "")] = (_val(num, "w:abstractNumId") or "", starts)

    def label(self, paragraph: Any) -> str:
        """The number Word shows before ``paragraph`` ("第三条 ", "（二）"), "" if none; counts it."""
        num_id, level = self._num_pr(paragraph)
        if num_id is None or num_id not in self.nums:
            return ""
        abstract_id, overrides = self.nums[num_id]
        levels = self.levels.get(abstract_id, {})
        if level not in levels:
            return ""
        counters = self.counters.setdefault(abstract_id, [0] * 10)
        if overrides and num_id not in self.restarted:
            # A list that restarts (startOverride): its counters begin again the first time it is used.
            self.restarted.add(num_id)
            for lvl, start in overrides.items():
                counters[lvl] = start - 1
        start = levels[level][0]
        counters[level] = counters[level] + 1 if counters[level] >= start else start
        for deeper in range(level + 1, len(counters)):
            counters[deeper] = 0
        _, fmt, text, suffix = levels[level]
        if fmt in ("bullet", "none"):
            return ""

        def number(match: re.Match[str]) -> str:
            at = int(match.group(1)) - 1
            at_fmt = levels.get(at, (1, "decimal", "", ""))[1]
            return _format_number(max(counters[at], 1), at_fmt)

        shown = re.sub(r"%([1-9])", number, text)
        return shown + ("" if suffix == "nothing" or not shown else " ")

    def _num_pr(self, paragraph: Any) -> tuple[str | None, int]:
        """numId and level: the paragraph's own, else its style's (a heading style linked to a list)."""
        num_id, level = None, None
        p_pr = paragraph._p.pPr
        own = p_pr.find(qn("w:numPr")) if p_pr is not None else None
        if own is not None:
            num_id, level = _val(own, "w:numId"), _val(own, "w:ilvl")
        style = paragraph.style
        while num_id is None and style is not None:
            style_pr = style.element.pPr
            linked = style_pr.find(qn("w:numPr")) if style_pr is not None else None
            if linked is not None:
                num_id = _val(linked, "w:numId")
                level = level or _val(linked, "w:ilvl")
            style = style.base_style
        if num_id in (None, "0"):
            return None, 0
        return num_id, int(level or 0)


def _val(element: Any, tag: str) -> str | None:
    child = element.find(qn(tag))
    return None if child is None else child.get(qn("w:val"))


def _format_number(n: int, fmt: str) -> str:
    if fmt.startswith(("chineseCounting", "taiwaneseCounting", "japaneseCounting", "ideographDigital")):
        return _chinese(n)
    if fmt == "chineseLegalSimplified":
        return _chinese(n).translate(str.maketrans("一二三四五六七八九十百", "壹贰叁肆伍陆柒捌玖拾佰"))
    if fmt == "ideographTraditional" and 1 <= n <= 10:
        return "甲乙丙丁戊己庚辛壬癸"[n - 1]
    if fmt.startswith("decimalEnclosedCircle") and 1 <= n <= 20:
        return chr(0x2460 + n - 1)
    if fmt in ("lowerLetter", "upperLetter"):
        letter = chr(ord("a") + (n - 1) % 26) * ((n - 1) // 26 + 1)
        return letter.upper() if fmt == "upperLetter" else letter
    if fmt in ("lowerRoman", "upperRoman") and 1 <= n < 40:
        roman = "x" * (n // 10) + ["", "i", "ii", "iii", "iv", "v", "vi", "vii", "viii", "ix"][n % 10]
        return roman.upper() if fmt == "upperRoman" else roman
    return str(n)


def _chinese(n: int) -> str:
    """1 一, 10 十, 12 十二, 20 二十, 105 一百零五, 110 一百一十 (how rules number their articles)."""
    if n < 10:
        return _CN_DIGITS[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return ("" if tens == 1 else _CN_DIGITS[tens]) + "十" + (_CN_DIGITS[ones] if ones else "")
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        if rest == 0:
            tail = ""
        elif rest < 10:
            tail = "零" + _CN_DIGITS[rest]
        else:
            tail = ("一" if rest < 20 else "") + _chinese(rest)
        return _CN_DIGITS[hundreds] + "百" + tail
    return str(n)


def decode_text(data: bytes) -> tuple[str, str]:
    """Decode a text file by its content, not its extension. Returns (text, encoding name)."""
    if data.startswith(b"\xef\xbb\xbf"):
        return data[3:].decode("utf-8", errors="strict"), "utf-8-sig"
    utf16 = _utf16(data)
    if utf16:
        return utf16
    # NUL anywhere (not only in the first block): a text file never holds one, and it would land in the text.
    if b"\x00" in data or _control_share(data[:4096]) > 0.05:
        raise IngestError("binary file, not text (control bytes found)")
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    best = from_bytes(data, cp_isolation=_CANDIDATE_ENCODINGS).best()
    if best is None:
        raise IngestError("unreadable text: not valid UTF-8, GB18030 or Big5")
    text = str(best)
    if _looks_garbled(text):
        raise IngestError(f"unreadable text: decoding as {best.encoding} gives garbage")
    return text, best.encoding


def _utf16(data: bytes) -> tuple[str, str] | None:
    """UTF-16 text (Windows "Unicode" files): by its BOM, or without one when the NUL bytes of its ASCII
    characters (digits, spaces, line ends) stand on one side of the code units. None if it is not."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        encoding, body = ("utf-16-le" if data[:2] == b"\xff\xfe" else "utf-16-be"), data[2:]
    elif len(data) % 2 == 0 and b"\x00" in data:
        even, odd = data[0::2].count(0), data[1::2].count(0)
        if min(even, odd) * 4 > max(even, odd):  # a few CJK characters (U+4E00 一) have a NUL byte too
            return None
        encoding, body = ("utf-16-le" if odd > even else "utf-16-be"), data
    else:
        return None
    try:
        text = body.decode(encoding)
    except UnicodeDecodeError:
        return None
    # Binary data decodes as UTF-16 too (to random code points); real text is mostly Chinese and ASCII.
    sample = text[:4000]
    if "\x00" in text or len(_TEXT_CHARS.findall(sample)) < 0.95 * len(sample) or _looks_garbled(text):
        return None
    return text, encoding


def _control_share(sample: bytes) -> float:
    if not sample:
        return 0.0
    controls = sum(1 for b in sample if b < 32 and b not in (9, 10, 12, 13))
    return controls / len(sample)


def _looks_garbled(text: str) -> bool:
    sample = text[:4000]
    bad = sum(1 for ch in sample if ch == "\ufffd" or (ord(ch) < 32 and ch not in "\t\n\r\f"))
    return bool(sample) and bad / len(sample) > 0.02


def _mupdf_damage() -> str:
    """The first error MuPDF reported while reading (it repairs what it can and says so as warnings)."""
    for line in pymupdf.TOOLS.mupdf_warnings().splitlines():
        if "error" in line or line.startswith("cannot"):
            return " ".join(line.split())[:120]
    return ""


def _short(exc: Exception) -> str:
    return " ".join(str(exc).split())[:120] or type(exc).__name__
