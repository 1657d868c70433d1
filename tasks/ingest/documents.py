"""Ingesting files into the warehouse: extract, normalise, chunk, build the fact ledger, store.

One transaction per document: a file either lands with all its pages, chunks and facts, or is recorded as
failed with a one-line reason and leaves nothing else behind. The document id is the sha256 of its bytes,
so ingesting the same file twice adds nothing.

A file in a folder that no route reads (a spreadsheet, an old .doc) is never passed over in silence: it comes
back as ``skipped`` with the reason and what to do ("save it as .docx"). Hidden files and folders (names
starting with "."; .git, .DS_Store) are not listed one by one: one ``skipped`` line per folder counts them.
"""

from __future__ import annotations

import bisect
import os
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb

from runtime.config import Settings
from tasks.ingest.chunk import Chunk, chunk_document
from tasks.ingest.extract import (
    ROUTES,
    IngestError,
    RawDocument,
    content_id,
    extract,
    file_kind,
    read_bytes,
    unsupported_reason,
)
from tasks.ingest.facts import Fact, extract_facts, table_fact_count
from tasks.ingest.normalize import PageSpan, join_pages
from warehouse import ledger


@dataclass(frozen=True)
class IngestResult:
    path: Path
    status: str  # added | unchanged | failed | skipped (in a folder, no route reads it; not stored)
    doc_id: str | None
    message: str  # one line for people
    pages: int = 0
    chunks: int = 0
    facts: int = 0


@dataclass(frozen=True)
class DocumentRecord:
    doc_id: str
    name: str
    path: str
    kind: str
    size_bytes: int
    encoding: str | None
    text: str
    routes: str = ""  # "pdf text+tables (text 192, tables 24)": see ``document_routes``


def shown(path: Path | str) -> str:
    """``path`` as one printable line: bytes that are not UTF-8 as \\xNN, control characters escaped.

    File names may hold line breaks or undecodable bytes; messages stay one line and the warehouse (UTF-8)
    can store them."""
    text = os.fsencode(path).decode("utf-8", "backslashreplace")
    return "".join(
        ascii(ch)[1:-1] if unicodedata.category(ch)[0] in "CZ" and ch != " " else ch for ch in text
    )


def discover(paths: Iterable[Path]) -> tuple[list[Path], list[IngestResult]]:
    """Files to ingest (folders walked recursively, sorted); failures for paths that do not exist and for
    entries that look like documents but are not regular files (broken or looping links, pipes); and
    ``skipped`` results for files in a folder that no route reads, each with its reason."""
    found: list[Path] = []
    missing: list[IngestResult] = []
    for path in paths:
        if path.is_dir():
            hidden = 0
            for entry in sorted(path.rglob("*")):
                if entry.is_dir():
                    continue
                if any(part.startswith(".") for part in entry.relative_to(path).parts):
                    hidden += 1
                    continue
                reason = unsupported_reason(entry)
                if reason:
                    missing.append(IngestResult(entry, "skipped", None, f"{shown(entry)}: {reason}"))
                    continue
                if entry.is_file():
                    found.append(entry)
                else:
                    missing.append(_not_a_file(entry))
            if hidden:
                missing.append(
                    IngestResult(
                        path, "skipped", None, f"{shown(path)}: {hidden} hidden files (names starting with .)"
                    )
                )
        elif path.is_file():
            found.append(path)
        elif path.is_symlink() or path.exists():
            missing.append(_not_a_file(path))
        else:
            missing.append(IngestResult(path, "failed", None, f"{shown(path)}: no such file or folder"))
    return found, missing


def _not_a_file(path: Path) -> IngestResult:
    if path.is_symlink() and not path.exists():
        reason = "broken symbolic link (its target is missing, or the link points back at itself)"
    else:
        reason = "not a regular file (a pipe, socket or device)"
    return IngestResult(path, "failed", None, f"{shown(path)}: {reason}")


def ingest_file(con: duckdb.DuckDBPyConnection, path: Path, settings: Settings) -> IngestResult:
    """Ingest one file; never raises for bad input (the result says what happened)."""
    try:
        data = read_bytes(path, settings.max_file_mb)
    except IngestError as exc:
        return IngestResult(path, "failed", None, f"{shown(path)}: {exc}")
    except OSError as exc:
        if path.is_symlink() and not path.exists():
            return _not_a_file(path)
        return IngestResult(path, "failed", None, f"{shown(path)}: cannot read ({exc.strerror or exc})")
    doc_id = content_id(data)
    if ledger.document_status(con, doc_id) == "ok":
        return IngestResult(path, "unchanged", doc_id, f"{shown(path)}: already ingested, nothing added")
    try:
        raw = extract(path, data, settings.max_pages, settings.min_text_chars_per_page, settings.max_file_mb)
        text, pages = join_pages(raw.pages, is_pdf=raw.kind == "pdf", markdown=raw.kind == "md")
        if not text.strip():
            raise IngestError("no text after normalisation (only page numbers or blank lines)")
        chunks = chunk_document(doc_id, text, pages, settings.chunk_size, settings.chunk_overlap)
        facts = extract_facts(doc_id, text, chunks, raw.table_rows)
        reads = page_reads(raw, settings.ocr_min_confidence)
        # Table cells on a scanned page were read by OCR: they count as the OCR route's.
        on_text_pages = [
            f for f, r in zip(facts, fact_routes(reads, pages, chunks, facts), strict=True) if r == "text"
        ]
        table_facts = table_fact_count(text, chunks, on_text_pages, raw.table_rows)
    except IngestError as exc:
        reason = str(exc)
    except Exception as exc:  # a bug must not stop the other files; it is recorded, not hidden
        reason = f"unexpected error while reading ({type(exc).__name__}: {' '.join(str(exc).split())[:160]})"
    else:
        reason = ""
    if reason:
        ledger.save_failure(con, doc_id, shown(path.name), shown(path), file_kind(path), len(data), reason)
        return IngestResult(path, "failed", doc_id, f"{shown(path)}: {reason}")
    route, split = document_routes(raw.kind, reads, pages, chunks, facts, table_facts)
    record = DocumentRecord(
        doc_id,
        shown(path.name),
        shown(path),
        raw.kind,
        raw.size_bytes,
        raw.encoding,
        text,
        f"{route} ({split})" if split else route,
    )
    ledger.save_document(con, record, pages, chunks, facts, reads)
    return IngestResult(
        path,
        "added",
        doc_id,
        f"{shown(path)}: {route_summary(route, split, reads, pages, chunks, facts)}",
        len(pages),
        len(chunks),
        len(facts),
    )


def page_reads(raw: RawDocument, ocr_min_confidence: float) -> list[ledger.PageRead]:
    """How each page was read; an OCR'd page under ``ocr_min_confidence`` sends its facts to a person."""
    if not raw.page_routes:
        return [ledger.PageRead() for _ in raw.pages]
    return [
        ledger.PageRead(route, conf, route == "ocr" and (conf or 0.0) < ocr_min_confidence)
        for route, conf in zip(raw.page_routes, raw.page_confidence, strict=True)
    ]


def fact_routes(
    reads: Sequence[ledger.PageRead],
    pages: Sequence[PageSpan],
    chunks: Sequence[Chunk],
    facts: Sequence[Fact],
) -> list[str]:
    """The route of the page each fact stands on (a fact's page: the last one starting at or before it)."""
    chunk_start = {c.chunk_id: c.start_char for c in chunks}
    starts = [p.start_char for p in pages]
    return [
        reads[max(bisect.bisect_right(starts, chunk_start[f.chunk_id] + f.span_start) - 1, 0)].route
        for f in facts
    ]


def document_routes(
    kind: str,
    reads: Sequence[ledger.PageRead],
    pages: Sequence[PageSpan],
    chunks: Sequence[Chunk],
    facts: Sequence[Fact],
    table_facts: int = 0,
) -> tuple[str, str]:
    """The routes a document took ("pdf text+tables", "pdf text+ocr", "docx") and, when it took more than
    one or OCR, the facts each produced ("text 28, tables 12"; "" for a single text route). ``table_facts``
    of the facts were read from table cells of text pages (cells on scanned pages count as OCR's)."""
    ocr = any(r.route == "ocr" for r in reads)
    tables = "+tables" if table_facts else ""
    if not ocr:
        route = ROUTES[kind] + tables
        return route, (f"text {len(facts) - table_facts}, tables {table_facts}" if table_facts else "")
    route = ("pdf ocr" if all(r.route == "ocr" for r in reads) else "pdf text+ocr") + tables
    per_route = Counter(fact_routes(reads, pages, chunks, facts))
    if table_facts:
        per_route["text"] -= table_facts
        per_route["tables"] = table_facts
    split = ", ".join(f"{name} {n}" for name, n in sorted(per_route.items(), key=lambda kv: kv[0] != "text"))
    return route, split


def route_summary(
    route: str,
    split: str,
    reads: Sequence[ledger.PageRead],
    pages: Sequence[PageSpan],
    chunks: Sequence[Chunk],
    facts: Sequence[Fact],
) -> str:
    """ "pdf text+ocr, 4 pages (2 OCR, mean confidence 0.93), 36 chunks, 40 facts (text 28, ocr 12)": the ingest
    line for a document (``route`` and ``split`` from :func:`document_routes`)."""
    ocr = [r.ocr_confidence or 0.0 for r in reads if r.route == "ocr"]
    page_note = ""
    if ocr:
        low = sum(r.review_required for r in reads)
        page_note = f" ({len(ocr)} OCR, mean confidence {sum(ocr) / len(ocr):.2f}" + (
            f", {low} under the review threshold)" if low else ")"
        )
    counts = f"{len(pages)} pages{page_note}, {len(chunks)} chunks, {len(facts)} facts"
    return f"{route}, {counts}" + (f" ({split})" if split else "")


def ingest_paths(
    con: duckdb.DuckDBPyConnection,
    paths: Iterable[Path],
    settings: Settings,
    on_file: Callable[[IngestResult], None] | None = None,
    on_start: Callable[[Path, int, int], None] | None = None,
) -> list[IngestResult]:
    """Ingest every file under ``paths``; one bad file never stops the others. The results hold one per file
    found, ``skipped`` ones (see the module doc) first. ``on_start(path, done, total)`` hears of each file
    before it is read (the CLI's progress bar)."""
    files, results = discover(paths)
    for result in results:
        if on_file:
            on_file(result)
    for done, path in enumerate(files):
        if on_start:
            on_start(path, done, len(files))
        result = ingest_file(con, path, settings)
        results.append(result)
        if on_file:
            on_file(result)
    return results
