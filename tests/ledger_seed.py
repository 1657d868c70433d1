"""A ledger of one rule text without running ingest: one document, one page, one chunk and its facts, written
the way ingest writes them (tests and benches that need a ledger row to point at, not a parsed file)."""

from __future__ import annotations

from types import SimpleNamespace

import duckdb

from tasks.ingest.facts import Fact
from warehouse import ledger


def fact_in(text: str, raw: str, value: str, unit: str, subject: str, *, fact_id: str, chunk_id: str) -> Fact:
    """The fact whose wording ``raw`` stands (first) in the chunk ``text``."""
    start = text.index(raw)
    # Fact's fields in order: id, value, value_max, unit, raw, qualifier, subject, context, span.
    return Fact(
        fact_id, value, None, unit, raw, "", subject, text, start, start + len(raw), chunk_id=chunk_id
    )


def save_one_chunk(
    con: duckdb.DuckDBPyConnection,
    text: str,
    facts: list[Fact],
    *,
    doc_id: str,
    chunk_id: str,
    name: str,
    heading: str,
) -> None:
    """Store ``text`` as a one-page, one-chunk txt document ``doc_id`` with ``facts`` in that chunk."""
    document = SimpleNamespace(
        doc_id=doc_id,
        name=name,
        path=name,
        kind="txt",
        size_bytes=1,
        encoding="utf-8",
        text=text,
        routes="txt",
    )
    page = SimpleNamespace(page_no=1, start_char=0, char_count=len(text))
    chunk = SimpleNamespace(
        chunk_id=chunk_id,
        seq=0,
        heading_path=heading,
        text=text,
        start_char=0,
        end_char=len(text),
        page_start=1,
        page_end=1,
    )
    ledger.save_document(con, document, [page], [chunk], facts)
