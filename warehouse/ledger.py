"""Queries for documents, pages, chunks and the fact ledger. All SQL for these tables lives here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import duckdb

from warehouse.db import bulk_insert, fetch_dicts, transaction

# The columns of a ledger fact besides its doc_id. ``tasks.ingest.facts.Fact`` has exactly these
# fields and checks so on import (the warehouse may not import tasks); writing and reading go by this list.
FACT_FIELDS = (
    "fact_id",
    "chunk_id",
    "value",
    "value_max",
    "unit",
    "raw",
    "qualifier",
    "subject",
    "context",
    "span_start",
    "span_end",
    "cell",
)


@dataclass(frozen=True)
class PageRead:
    """How one page's text was read: from its text layer, or by OCR with the engine's mean confidence.
    ``review_required``: its OCR confidence was under the threshold, so its facts are never trusted
    without a person (see ``LOW_CONFIDENCE_FACTS``)."""

    route: str = "text"  # text | ocr
    ocr_confidence: float | None = None
    review_required: bool = False


def document_status(con: duckdb.DuckDBPyConnection, doc_id: str) -> str | None:
    row = con.execute("SELECT status FROM documents WHERE doc_id = ?", [doc_id]).fetchone()
    return row[0] if row else None


def save_document(
    con: duckdb.DuckDBPyConnection,
    document: Any,
    pages: Sequence[Any],
    chunks: Sequence[Any],
    facts: Sequence[Any],
    page_reads: Sequence[PageRead] = (),
) -> None:
    """Write one ingested document and everything derived from it in a single transaction.

    ``page_reads`` says per page how its text was read (all text when empty). A previous *failed* attempt
    for the same bytes is replaced; nothing else is touched.
    """
    with transaction(con):
        if document_status(con, document.doc_id) is not None:
            _delete_document_rows(con, document.doc_id)
        con.execute(
            "INSERT INTO documents (doc_id, name, path, kind, size_bytes, encoding, page_count, char_count,"
            " text, routes, status, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'ok', NULL)",
            [
                document.doc_id,
                document.name,
                document.path,
                document.kind,
                document.size_bytes,
                document.encoding,
                len(pages),
                len(document.text),
                document.text,
                document.routes or None,
            ],
        )
        reads = list(page_reads) or [PageRead()] * len(pages)
        bulk_insert(
            con,
            "pages",
            ["doc_id", "page_no", "start_char", "char_count", "route", "ocr_confidence", "review_required"],
            [
                [
                    document.doc_id,
                    p.page_no,
                    p.start_char,
                    p.char_count,
                    r.route,
                    r.ocr_confidence,
                    r.review_required,
                ]
                for p, r in zip(pages, reads, strict=True)
            ],
        )
        bulk_insert(
            con,
            "chunks",
            [
                "chunk_id",
                "doc_id",
                "seq",
                "heading_path",
                "text",
                "start_char",
                "end_char",
                "page_start",
                "page_end",
            ],
            [
                [
                    c.chunk_id,
                    document.doc_id,
                    c.seq,
                    c.heading_path,
                    c.text,
                    c.start_char,
                    c.end_char,
                    c.page_start,
                    c.page_end,
                ]
                for c in chunks
            ],
        )
        bulk_insert(
            con,
            "facts",
            ["doc_id", *FACT_FIELDS],
            [[document.doc_id, *(getattr(f, name) for name in FACT_FIELDS)] for f in facts],
        )


def save_failure(
    con: duckdb.DuckDBPyConnection, doc_id: str, name: str, path: str, kind: str, size_bytes: int, error: str
) -> None:
    """Record that a file could not be ingested, and why. It leaves no pages, chunks or facts behind."""
    with transaction(con):
        _delete_document_rows(con, doc_id)
        con.execute(
            "INSERT INTO documents (doc_id, name, path, kind, size_bytes, status, error)"
            " VALUES (?, ?, ?, ?, ?, 'failed', ?)",
            [doc_id, name, path, kind, size_bytes, error],
        )


def _delete_document_rows(con: duckdb.DuckDBPyConnection, doc_id: str) -> None:
    for table in ("facts", "chunks", "pages", "documents"):
        con.execute(f"DELETE FROM {table} WHERE doc_id = ?", [doc_id])


def document_counts(con: duckdb.DuckDBPyConnection, doc_id: str) -> dict[str, int]:
    """Rows held for one document, per table (used to prove a failed file left nothing behind)."""
    counts = {}
    for table in ("documents", "pages", "chunks", "facts"):
        row = con.execute(f"SELECT count(*) FROM {table} WHERE doc_id = ?", [doc_id]).fetchone()
        counts[table] = int(row[0]) if row else 0
    return counts


def table_counts(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    counts = {}
    for table in ("documents", "pages", "chunks", "facts"):
        row = con.execute(f"SELECT count(*) FROM {table}").fetchone()
        counts[table] = int(row[0]) if row else 0
    return counts


_FACT_COLUMNS = ", ".join(["d.name AS doc", *(f"f.{name}" for name in FACT_FIELDS), "c.heading_path"])


def list_facts(
    con: duckdb.DuckDBPyConnection, doc: str | None = None, *, rules_only: bool = False
) -> list[dict[str, Any]]:
    """Facts in document order; ``doc`` filters by file name (exact) or document id prefix. ``rules_only``
    leaves out the facts a reviewer marked "not a rule" (a date, a form number): answers must not cite them."""
    sql = (
        f"SELECT {_FACT_COLUMNS} FROM facts f JOIN documents d USING (doc_id) JOIN chunks c USING (chunk_id)"
        " WHERE true"
    )
    params: list[Any] = []
    if doc:
        sql += " AND (d.name = ? OR d.doc_id LIKE ?)"
        params = [doc, f"{doc}%"]
    if rules_only:
        sql += " AND f.fact_id NOT IN (SELECT fact_id FROM fact_verdicts WHERE verdict = 'not_a_rule')"
    sql += " ORDER BY d.name, c.start_char + f.span_start"
    cursor = con.execute(sql, params)
    return fetch_dicts(cursor)


def list_documents(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    cursor = con.execute(
        "SELECT d.doc_id, d.name, d.kind, d.routes, d.status, d.error, d.page_count, d.char_count,"
        " (SELECT count(*) FROM chunks c WHERE c.doc_id = d.doc_id) AS chunks,"
        " (SELECT count(*) FROM facts f WHERE f.doc_id = d.doc_id) AS facts"
        " FROM documents d ORDER BY d.name"
    )
    return fetch_dicts(cursor)


def facts_by_unit(con: duckdb.DuckDBPyConnection) -> list[tuple[str, int]]:
    rows = con.execute(
        "SELECT CASE WHEN unit = '' THEN '(none)' ELSE unit END, count(*) FROM facts"
        " GROUP BY 1 ORDER BY 2 DESC, 1"
    ).fetchall()
    return [(str(u), int(n)) for u, n in rows]


def chunk_texts(con: duckdb.DuckDBPyConnection, doc: str | None = None) -> list[tuple[str, str, str, str]]:
    """(chunk id, document name, heading path, text) of ingested documents, in document order."""
    sql = (
        "SELECT c.chunk_id, d.name, c.heading_path, c.text FROM chunks c JOIN documents d USING (doc_id)"
        " WHERE d.status = 'ok'"
    )
    params: list[str] = []
    if doc:
        sql += " AND (d.name = ? OR d.doc_id LIKE ?)"
        params = [doc, f"{doc}%"]
    return [tuple(r) for r in con.execute(sql + " ORDER BY d.name, c.seq", params).fetchall()]


# A fact's page: the last page starting at or before the fact's first character in its document's text.
_FACT_PAGE = (
    "(SELECT max(p.page_no) FROM pages p WHERE p.doc_id = f.doc_id"
    " AND p.start_char <= c.start_char + f.span_start)"
)


# Facts standing on a page whose OCR confidence was under the threshold at ingest (``PageRead``), and the
# distilled rows that cite one: the auto review policy and distillation never trust these without a person.
LOW_CONFIDENCE_FACTS = (
    "SELECT f.fact_id FROM facts f JOIN chunks c USING (chunk_id) WHERE EXISTS (SELECT 1 FROM pages p"
    f" WHERE p.doc_id = f.doc_id AND p.review_required AND p.page_no = {_FACT_PAGE})"
)
LOW_CONFIDENCE_ROWS = (
    "SELECT row_id FROM (SELECT row_id, unnest(fact_ids) AS fact_id FROM qa_rows)"
    f" WHERE fact_id IN ({LOW_CONFIDENCE_FACTS})"
)


def low_confidence_facts(con: duckdb.DuckDBPyConnection) -> set[str]:
    """Ids of the facts read by OCR under the confidence threshold (see ``LOW_CONFIDENCE_FACTS``)."""
    return {fact_id for (fact_id,) in con.execute(LOW_CONFIDENCE_FACTS).fetchall()}


def page_routes(con: duckdb.DuckDBPyConnection, doc_id: str) -> list[dict[str, Any]]:
    """Each page of a document: how its text was read, its OCR confidence and whether its facts need a person."""
    return fetch_dicts(
        con.execute(
            "SELECT page_no, route, ocr_confidence, review_required FROM pages WHERE doc_id = ? ORDER BY page_no",
            [doc_id],
        )
    )


def fact_sources(con: duckdb.DuckDBPyConnection, fact_ids: Sequence[str]) -> list[dict[str, Any]]:
    """Where each fact stands: document name, heading path, sentence, the number as written, and page."""
    if not fact_ids:
        return []
    cursor = con.execute(
        "SELECT f.fact_id, d.name AS document, c.heading_path, f.context AS sentence, f.raw AS number,"
        f" {_FACT_PAGE} AS page"
        " FROM facts f JOIN documents d USING (doc_id) JOIN chunks c USING (chunk_id)"
        " WHERE list_contains(?, f.fact_id)",
        [list(fact_ids)],
    )
    return fetch_dicts(cursor)
