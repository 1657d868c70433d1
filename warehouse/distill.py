"""Queries for distillation: chunks to distil with their facts, the teacher-call cache, rows, runs."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import duckdb

from warehouse.db import bulk_insert, fetch_dicts, transaction
from warehouse.ledger import LOW_CONFIDENCE_ROWS


def chunks_with_facts(
    con: duckdb.DuckDBPyConnection, doc: str | None = None, limit: int | None = None
) -> list[dict[str, Any]]:
    """Chunks of successfully ingested documents, in document order, each with a list of its facts."""
    sql = (
        "SELECT c.chunk_id, c.doc_id, d.name AS doc_name, c.heading_path, c.text, c.seq,"
        " list(struct_pack(fact_id := f.fact_id, value := f.value, value_max := f.value_max, unit := f.unit,"
        "   raw := f.raw, qualifier := f.qualifier, subject := f.subject, context := f.context,"
        "   span_start := f.span_start, span_end := f.span_end) ORDER BY f.span_start)"
        "   FILTER (WHERE f.fact_id IS NOT NULL) AS facts"
        " FROM chunks c JOIN documents d USING (doc_id) LEFT JOIN facts f USING (chunk_id)"
        " WHERE d.status = 'ok'"
    )
    params: list[Any] = []
    if doc:
        sql += " AND (d.name = ? OR d.doc_id LIKE ?)"
        params += [doc, f"{doc}%"]
    sql += " GROUP BY ALL ORDER BY doc_name, c.seq"
    if limit:
        sql += f" LIMIT {int(limit)}"
    cursor = con.execute(sql, params)
    return fetch_dicts(cursor)


def document_texts(con: duckdb.DuckDBPyConnection, doc_ids: Sequence[str]) -> dict[str, str]:
    if not doc_ids:
        return {}
    rows = con.execute(
        "SELECT doc_id, text FROM documents WHERE doc_id IN (SELECT unnest(?))", [list(doc_ids)]
    ).fetchall()
    return {doc_id: text for doc_id, text in rows}


def successful_cache_keys(con: duckdb.DuckDBPyConnection, keys: Sequence[str]) -> set[str]:
    """Keys already answered successfully: a re-run bills nothing for them. Failed calls are retried."""
    if not keys:
        return set()
    rows = con.execute(
        "SELECT cache_key FROM teacher_calls WHERE status = 'ok' AND cache_key IN (SELECT unnest(?))",
        [list(keys)],
    ).fetchall()
    return {key for (key,) in rows}


def start_run(
    con: duckdb.DuckDBPyConnection, run_id: str, teacher: str, model: str, prompt_version: str
) -> None:
    con.execute(
        "INSERT INTO distill_runs (run_id, teacher, model, prompt_version) VALUES (?, ?, ?, ?)",
        [run_id, teacher, model, prompt_version],
    )


def finish_run(con: duckdb.DuckDBPyConnection, run_id: str, totals: dict[str, Any]) -> None:
    con.execute(
        "UPDATE distill_runs SET finished_at = current_timestamp, chunks = ?, cached = ?, failed = ?,"
        " rows_added = ?, calls = ?, prompt_tokens = ?, completion_tokens = ?, cost_usd = ? WHERE run_id = ?",
        [
            totals["chunks"],
            totals["cached"],
            totals["failed"],
            totals["rows_added"],
            totals["calls"],
            totals["prompt_tokens"],
            totals["completion_tokens"],
            totals["cost_usd"],
            run_id,
        ],
    )


_CALL_COLUMNS = [
    "cache_key",
    "chunk_id",
    "teacher",
    "model",
    "prompt_version",
    "status",
    "error",
    "raw_text",
    "row_count",
    "calls",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "run_id",
]
_ROW_COLUMNS = [
    "row_id",
    "cache_key",
    "chunk_id",
    "doc_id",
    "teacher",
    "question",
    "answer",
    "evidence",
    "kind",
    "unsure",
    "teacher_numbers",
    "numbers",
    "is_numeric",
    "evidence_found",
    "grounded",
    "fact_ids",
    "verify_notes",
    "status",
    "reviewer",
    "reviewed_at",
]


def save_teacher_calls(
    con: duckdb.DuckDBPyConnection, results: Sequence[tuple[dict[str, Any], Sequence[dict[str, Any]]]]
) -> int:
    """Store teacher calls and their verified rows in one transaction; returns the rows newly added.

    A call replaces an earlier failed attempt with the same key; rows already present are kept as they are
    (their review state must survive a re-run). Several chunks go in one transaction because each commit
    costs a flush to disk.
    """
    if not results:
        return 0
    calls = list({call["cache_key"]: call for call, _ in results}.values())  # a key once per transaction
    rows = {row["row_id"]: (call, row) for call, chunk_rows in results for row in chunk_rows}
    with transaction(con):
        keys = [c["cache_key"] for c in calls]
        con.execute("DELETE FROM teacher_calls WHERE cache_key IN (SELECT unnest(?))", [keys])
        bulk_insert(
            con,
            "teacher_calls",
            _CALL_COLUMNS,
            [
                [
                    c[k]
                    if k != "row_count"
                    else sum(1 for call, _ in rows.values() if call["cache_key"] == c["cache_key"])
                    for k in _CALL_COLUMNS
                ]
                for c in calls
            ],
        )
        existing = (
            {
                r
                for (r,) in con.execute(
                    "SELECT row_id FROM qa_rows WHERE row_id IN (SELECT unnest(?))", [list(rows)]
                ).fetchall()
            }
            if rows
            else set()
        )
        now = datetime.now()
        new = [
            [
                call["cache_key"],
                row["chunk_id"],
                row["doc_id"],
                call["teacher"],
                row["question"],
                row["answer"],
                row["evidence"],
                row["kind"],
                row["unsure"],
                row["teacher_numbers"],
                row["numbers"],
                row["is_numeric"],
                row["evidence_found"],
                row["grounded"],
                row["fact_ids"],
                row["verify_notes"],
                row["status"],
                row["reviewer"],
                now if row["reviewer"] else None,
            ]
            for row_id, (call, row) in rows.items()
            if row_id not in existing
        ]
        bulk_insert(
            con,
            "qa_rows",
            _ROW_COLUMNS,
            [
                [row_id, *values]
                for row_id, values in zip([r for r in rows if r not in existing], new, strict=True)
            ],
        )
        # A number OCR read under the confidence threshold is never trusted without a person.
        con.execute(
            "UPDATE qa_rows SET status = 'needs_review', reviewer = NULL, reviewed_at = NULL,"
            " verify_notes = verify_notes || CASE WHEN verify_notes = '' THEN '' ELSE '; ' END"
            "  || 'cites a number OCR read with low confidence'"
            f" WHERE status = 'auto_verified' AND list_contains(?, row_id) AND row_id IN ({LOW_CONFIDENCE_ROWS})",
            [[r for r in rows if r not in existing]],
        )
    return len(new)


def save_teacher_call(
    con: duckdb.DuckDBPyConnection, call: dict[str, Any], rows: Sequence[dict[str, Any]]
) -> int:
    """One chunk's call and rows (see ``save_teacher_calls``)."""
    return save_teacher_calls(con, [(call, rows)])


def list_rows(
    con: duckdb.DuckDBPyConnection, status: str | None = None, doc: str | None = None
) -> list[dict[str, Any]]:
    sql = (
        "SELECT r.row_id, d.name AS doc, r.chunk_id, r.teacher, r.question, r.answer, r.evidence, r.kind,"
        " r.unsure, r.numbers, r.is_numeric, r.evidence_found, r.grounded, r.fact_ids, r.verify_notes,"
        " r.status, r.reviewer FROM qa_rows r JOIN documents d USING (doc_id) WHERE true"
    )
    params: list[Any] = []
    if status:
        sql += " AND r.status = ?"
        params.append(status)
    if doc:
        sql += " AND (d.name = ? OR d.doc_id LIKE ?)"
        params += [doc, f"{doc}%"]
    sql += " ORDER BY d.name, r.created_at, r.row_id"
    cursor = con.execute(sql, params)
    return fetch_dicts(cursor)


def rows_summary(con: duckdb.DuckDBPyConnection, doc: str | None = None) -> dict[str, Any]:
    """Rows by status, numeric/grounded/unanswerable shares, and fact coverage, for all or one document."""
    where, params = "", []
    if doc:
        where = " AND (d.name = ? OR d.doc_id LIKE ?)"
        params = [doc, f"{doc}%"]
    by_status = dict(
        con.execute(
            f"SELECT r.status, count(*) FROM qa_rows r JOIN documents d USING (doc_id) WHERE true{where}"
            " GROUP BY 1 ORDER BY 1",
            params,
        ).fetchall()
    )
    shares = con.execute(
        "SELECT count(*), coalesce(avg(r.is_numeric::INT), 0), coalesce(avg(r.grounded::INT), 0),"
        " coalesce(avg((r.kind = 'unanswerable')::INT), 0)"
        f" FROM qa_rows r JOIN documents d USING (doc_id) WHERE true{where}",
        params,
    ).fetchone()
    coverage = con.execute(
        "SELECT count(DISTINCT f.fact_id) FILTER (WHERE EXISTS (SELECT 1 FROM qa_rows r"
        "   WHERE list_contains(r.fact_ids, f.fact_id))), count(DISTINCT f.fact_id)"
        f" FROM facts f JOIN documents d USING (doc_id) WHERE true{where}",
        params,
    ).fetchone()
    assert shares is not None and coverage is not None
    return {
        "rows": int(shares[0]),
        "by_status": by_status,
        "numeric_share": float(shares[1]),
        "grounded_share": float(shares[2]),
        "unanswerable_share": float(shares[3]),
        "facts_covered": int(coverage[0]),
        "facts_total": int(coverage[1]),
    }


def failed_calls(con: duckdb.DuckDBPyConnection, run_id: str | None = None) -> list[dict[str, Any]]:
    sql = (
        "SELECT t.chunk_id, t.teacher, t.error, left(coalesce(t.raw_text, ''), 200) AS raw_start"
        " FROM teacher_calls t WHERE t.status = 'failed'"
    )
    params: list[Any] = []
    if run_id:
        sql += " AND t.run_id = ?"
        params.append(run_id)
    cursor = con.execute(sql, params)
    return fetch_dicts(cursor)
