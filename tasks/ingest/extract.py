"""Reading files into page texts: PDF through PyMuPDF, TXT/Markdown with encoding detection.

Every refusal is an ``IngestError`` whose message is one line naming the file and the reason, so the
command line can print it as is and the warehouse can record it.
"""

from __future__ import annotations

import hashlib
import re
import stat
from dataclasses import dataclass
from pathlib import Path

import pymupdf
from charset_normalizer import from_bytes

PDF_SUFFIXES = {".pdf"}
TEXT_SUFFIXES = {".txt", ".md", ".markdown", ".text"}
SUPPORTED_SUFFIXES = PDF_SUFFIXES | TEXT_SUFFIXES

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
    kind: str  # pdf | txt | md
    size_bytes: int
    encoding: str | None
    pages: list[str]  # raw text per page (a text file is one page)


def file_kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in PDF_SUFFIXES:
        return "pdf"
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


def extract(path: Path, data: bytes, max_pages: int, min_text_chars_per_page: int) -> RawDocument:
    """Turn the bytes of ``path`` into page texts, or raise ``IngestError`` saying why not."""
    kind = file_kind(path)
    if not data.strip():
        raise IngestError("empty file (no content)")
    if kind == "pdf":
        pages = _pdf_pages(data, max_pages, min_text_chars_per_page)
        encoding = None
    else:
        text, encoding = decode_text(data)
        pages = [text]
    return RawDocument(path, content_id(data), kind, len(data), encoding, pages)


def _pdf_pages(data: bytes, max_pages: int, min_text_chars_per_page: int) -> list[str]:
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
            pages = [page.get_text("text") for page in doc]
        except Exception as exc:
            raise IngestError(f"corrupt PDF, text extraction failed ({_short(exc)})") from exc
    text_chars = sum(len("".join(p.split())) for p in pages)
    if text_chars < min_text_chars_per_page * len(pages):
        damage = _mupdf_damage()
        if damaged or damage:
            # Not a scan: the text was lost with the file's structure (truncated, broken objects).
            raise IngestError(
                f"corrupt PDF, damaged beyond reading: no text recovered ({damage or 'repaired'})"
            )
        raise IngestError(
            f"scanned PDF: no text layer ({text_chars} characters in {len(pages)} pages); OCR is needed first"
        )
    return pages


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
