"""Queries for the golden set: the frozen evaluation questions that training never sees."""

from __future__ import annotations

from typing import Any

import duckdb

from warehouse.db import bulk_insert, fetch_dicts
from warehouse.gates import normalised

HELD_OUT = "held_out:"


def has_held_out(con: duckdb.DuckDBPyConnection) -> bool:
    row = con.execute("SELECT count(*) FROM golden_items WHERE source LIKE ?", [f"{HELD_OUT}%"]).fetchone()
    return bool(row and row[0])


def reviewed_rows(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """Rows a golden set may be held out from: approved or corrected by review (people or the auto policy)."""
    cursor = con.execute(
        "SELECT r.row_id, r.question, r.answer, r.numbers, r.kind, d.name AS doc FROM qa_rows r"
        " JOIN documents d USING (doc_id) WHERE r.status IN ('approved', 'corrected') ORDER BY r.row_id"
    )
    return fetch_dicts(cursor)


def insert_items(con: duckdb.DuckDBPyConnection, items: list[dict[str, Any]]) -> int:
    """Add golden items; an item whose id is already there is left as it is. Returns the number added."""
    if not items:
        return 0
    existing = {
        r
        for (r,) in con.execute(
            "SELECT item_id FROM golden_items WHERE item_id IN (SELECT unnest(?))",
            [[i["item_id"] for i in items]],
        ).fetchall()
    }
    new = [i for i in items if i["item_id"] not in existing]
    columns = ["item_id", "question", "answer", "numbers", "keywords", "type", "doc", "source", "row_id"]
    bulk_insert(con, "golden_items", columns, [[i.get(c) for c in columns] for i in new])
    return len(new)


def list_items(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    cursor = con.execute(
        "SELECT item_id, question, answer, numbers, keywords, type, doc, source FROM golden_items ORDER BY item_id"
    )
    return fetch_dicts(cursor)


# Rows held out into the golden set, and rows asking the very same (normalised) question, are not training
# rows: used by the release frame and the dataset freeze.
SHADOWED_BY_GOLDEN = (
    "r.row_id IN (SELECT row_id FROM golden_items WHERE row_id IS NOT NULL) OR "
    + normalised("r.question")
    + f" IN (SELECT {normalised('question')} FROM golden_items WHERE source LIKE '{HELD_OUT}%')"
)
