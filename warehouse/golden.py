"""Queries for the golden set: the frozen evaluation questions that training never sees."""

from __future__ import annotations

from typing import Any

import duckdb

from warehouse.db import bulk_insert, fetch_dicts

HELD_OUT = "held_out:"
RECALL = "recall"
READING = "reading"
SUBJECT_PLACEHOLDER = "{s}"

# Punctuation, symbols and spaces go; so do polite openings and closing particles, which change no meaning.
NORMALISED_QUESTION = (
    "regexp_replace(regexp_replace(regexp_replace(lower({col}), '[\\s\\p{{P}}\\p{{S}}]', '', 'g'),"
    " '^(请问|麻烦问一下|麻烦问|麻烦|您好|你好|请教一下|请教|想问一下|想问|请)+', ''),"
    " '(呢|吗|啊|呀|吧|谢谢)+$', '')"
)


def normalised(col: str) -> str:
    return NORMALISED_QUESTION.format(col=col)


def phrasing_key(row: str = "r") -> str:
    """SQL for the phrasing of ``row``'s question: the question with the subject of a ledger fact the row
    cites replaced by ``{s}`` (the longest such subject), or the question itself when it names none. For the
    extractive teacher this recovers the template ("{s}的上限是多少？"); for any teacher, questions asking
    different facts the same way share a key."""
    return (
        "coalesce((SELECT arg_max(replace("
        f"{row}.question, trim(f.subject), '{SUBJECT_PLACEHOLDER}'), (length(trim(f.subject)), f.fact_id))"
        f" FROM facts f WHERE list_contains({row}.fact_ids, f.fact_id) AND length(trim(f.subject)) >= 2"
        f" AND contains({row}.question, trim(f.subject))), {row}.question)"
    )


def has_held_out(con: duckdb.DuckDBPyConnection) -> bool:
    row = con.execute("SELECT count(*) FROM golden_items WHERE source LIKE ?", [f"{HELD_OUT}%"]).fetchone()
    return bool(row and row[0])


def reviewed_rows(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """Rows a golden set may be held out from: approved or corrected by review (people or the auto policy),
    with the facts they cite and their phrasing key."""
    cursor = con.execute(
        "SELECT r.row_id, r.question, r.answer, r.numbers, r.kind, d.name AS doc, r.fact_ids,"
        f" {phrasing_key('r')} AS phrasing FROM qa_rows r JOIN documents d USING (doc_id)"
        " WHERE r.status IN ('approved', 'corrected') ORDER BY r.row_id"
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
    new = [{"fact_ids": [], **i} for i in items if i["item_id"] not in existing]
    columns = [
        "item_id",
        "question",
        "answer",
        "numbers",
        "keywords",
        "type",
        "doc",
        "source",
        "row_id",
        "split",
        "fact_ids",
        "phrasing",
    ]
    bulk_insert(con, "golden_items", columns, [[i.get(c) for c in columns] for i in new])
    return len(new)


def drop_held_out_items(con: duckdb.DuckDBPyConnection, item_ids: list[str]) -> int:
    """Remove held-out items (never a file's) by id; returns how many went."""
    if not item_ids:
        return 0
    gone = con.execute(
        "DELETE FROM golden_items WHERE source LIKE ? AND item_id IN (SELECT unnest(?)) RETURNING item_id",
        [f"{HELD_OUT}%", item_ids],
    ).fetchall()
    return len(gone)


def list_items(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    cursor = con.execute(
        "SELECT item_id, question, answer, numbers, keywords, type, doc, source, split, fact_ids, phrasing"
        " FROM golden_items ORDER BY item_id"
    )
    return fetch_dicts(cursor)


# What a held-out golden set keeps out of training (used by the release frame and the dataset freeze): the
# held-out rows and rows asking the very same (normalised) question; every row citing a fact of a *reading*
# item (facts held out entirely, in every phrasing); every row phrased like a *recall* item (its phrasing
# key: the facts stay trained, that phrasing never is). Near paraphrases are dropped in warehouse/gates.py.
SHADOWED_BY_GOLDEN = (
    "r.row_id IN (SELECT row_id FROM golden_items WHERE row_id IS NOT NULL) OR "
    + normalised("r.question")
    + f" IN (SELECT {normalised('question')} FROM golden_items WHERE source LIKE '{HELD_OUT}%')"
    + f" OR EXISTS (SELECT 1 FROM golden_items g WHERE g.split = '{READING}'"
    " AND list_has_any(g.fact_ids, r.fact_ids))"
    + f" OR {phrasing_key('r')} IN (SELECT phrasing FROM golden_items WHERE split = '{RECALL}'"
    " AND phrasing IS NOT NULL)"
)
