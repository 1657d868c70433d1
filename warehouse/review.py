"""Queries for review outcomes: the auto policy now; Label Studio batches and sync build on the same columns."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import duckdb

from warehouse.db import fetch_dicts, transaction

AUTO_REVIEWER = "auto:ledger"


def auto_review(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """The `auto` review policy (demos and CI only): rows waiting for people are approved when grounded,
    with evidence, and in no conflict; every other waiting row is rejected. Returns counts."""
    with transaction(con):
        approved = con.execute(
            "UPDATE qa_rows SET status = 'approved', reviewer = ?, reviewed_at = current_timestamp"
            " WHERE status = 'needs_review' AND grounded AND (evidence_found OR kind = 'unanswerable')"
            "  AND NOT unsure AND row_id NOT IN (SELECT row_a FROM conflicts UNION"
            "   SELECT row_b FROM conflicts WHERE row_b IS NOT NULL) RETURNING row_id",
            [AUTO_REVIEWER],
        ).fetchall()
        rejected = con.execute(
            "UPDATE qa_rows SET status = 'rejected', reviewer = ?, reviewed_at = current_timestamp,"
            " verify_notes = verify_notes || CASE WHEN verify_notes = '' THEN '' ELSE '; ' END"
            "  || 'rejected by the auto review policy'"
            " WHERE status = 'needs_review' RETURNING row_id",
            [AUTO_REVIEWER],
        ).fetchall()
    return {"approved": len(approved), "rejected": len(rejected)}


def review_sources(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Approved or corrected rows by who decided (a person's name, or AUTO_REVIEWER for the auto policy);
    rows the ledger verified without review are "ledger-verified"."""
    rows = con.execute(
        "SELECT CASE WHEN status = 'auto_verified' THEN 'ledger-verified' ELSE coalesce(reviewer, '?') END,"
        " count(*) FROM qa_rows WHERE status IN ('approved', 'corrected', 'auto_verified') GROUP BY 1"
    ).fetchall()
    return {who: n for who, n in rows}


# ---------------------------------------------------------------------------------------------------------
# Label Studio review batches (see review/push.py and review/sync.py). A row is "in review" while it has a
# task in a batch that is not yet synced; a row flagged back to needs_review after a sync can go out again.


def review_candidates(
    con: duckdb.DuckDBPyConnection, limit: int | None = None, row_ids: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """Rows waiting for people and in no unsynced batch, with their chunk and document, in document order."""
    sql = (
        "SELECT r.row_id, r.question, r.answer, r.evidence, r.kind, r.numbers, r.verify_notes, r.chunk_id,"
        " c.text AS chunk_text, c.heading_path, d.name AS doc_name"
        " FROM qa_rows r JOIN chunks c USING (chunk_id) JOIN documents d ON d.doc_id = r.doc_id"
        " WHERE r.status = 'needs_review' AND r.row_id NOT IN ("
        "   SELECT t.row_id FROM review_tasks t JOIN review_batches b USING (batch_id) WHERE b.status <> 'synced')"
    )
    params: list[Any] = []
    if row_ids is not None:
        sql += " AND r.row_id IN (SELECT unnest(?))"
        params.append(list(row_ids))
    sql += " ORDER BY d.name, c.seq, r.created_at, r.row_id"
    if limit:
        sql += f" LIMIT {int(limit)}"
    return fetch_dicts(con.execute(sql, params))


def create_batch(
    con: duckdb.DuckDBPyConnection,
    batch_id: str,
    ls_project_id: int,
    flow_run_id: str | None,
    row_ids: Sequence[str],
) -> None:
    """Record a batch and its rows together (task ids follow once Label Studio confirms the import)."""
    with transaction(con):
        con.execute(
            "INSERT INTO review_batches (batch_id, ls_project_id, flow_run_id, row_count, status)"
            " VALUES (?, ?, ?, ?, 'open')",
            [batch_id, ls_project_id, flow_run_id, len(row_ids)],
        )
        con.executemany(
            "INSERT INTO review_tasks (batch_id, row_id) VALUES (?, ?)", [[batch_id, r] for r in row_ids]
        )


def set_task_ids(con: duckdb.DuckDBPyConnection, batch_id: str, task_ids: dict[str, int]) -> None:
    with transaction(con):
        con.executemany(
            "UPDATE review_tasks SET ls_task_id = ? WHERE batch_id = ? AND row_id = ?",
            [[task_id, batch_id, row_id] for row_id, task_id in task_ids.items()],
        )


def set_flow_run(con: duckdb.DuckDBPyConnection, batch_id: str, flow_run_id: str) -> None:
    con.execute("UPDATE review_batches SET flow_run_id = ? WHERE batch_id = ?", [flow_run_id, batch_id])


def get_batch(con: duckdb.DuckDBPyConnection, batch_id: str) -> dict[str, Any] | None:
    found = fetch_dicts(con.execute("SELECT * FROM review_batches WHERE batch_id = ?", [batch_id]))
    return found[0] if found else None


def batch_for_project(con: duckdb.DuckDBPyConnection, ls_project_id: int) -> dict[str, Any] | None:
    found = fetch_dicts(con.execute("SELECT * FROM review_batches WHERE ls_project_id = ?", [ls_project_id]))
    return found[0] if found else None


def list_batches(con: duckdb.DuckDBPyConnection, status: str | None = None) -> list[dict[str, Any]]:
    sql = "SELECT * FROM review_batches"
    params: list[Any] = []
    if status:
        sql += " WHERE status = ?"
        params.append(status)
    return fetch_dicts(con.execute(sql + " ORDER BY created_at, batch_id", params))


def batches_missing_task_ids(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Batches whose import into Label Studio was not confirmed (a push interrupted half-way)."""
    return [
        b
        for (b,) in con.execute(
            "SELECT DISTINCT batch_id FROM review_tasks WHERE ls_task_id IS NULL ORDER BY batch_id"
        ).fetchall()
    ]


def batches_of_rows(con: duckdb.DuckDBPyConnection, row_ids: Sequence[str]) -> list[str]:
    """Batches holding any of ``row_ids``, oldest first."""
    return [
        b
        for b, _ in con.execute(
            "SELECT DISTINCT t.batch_id, b.created_at FROM review_tasks t JOIN review_batches b USING (batch_id)"
            " WHERE t.row_id IN (SELECT unnest(?)) ORDER BY b.created_at, t.batch_id",
            [list(row_ids)],
        ).fetchall()
    ]


def batch_tasks(con: duckdb.DuckDBPyConnection, batch_id: str) -> list[dict[str, Any]]:
    """A batch's tasks with the rows as they are now (and their chunk text, for checking corrections)."""
    return fetch_dicts(
        con.execute(
            "SELECT t.batch_id, t.row_id, t.ls_task_id, t.annotation_id, t.annotation_at, t.verdict, t.applied_at,"
            " r.question, r.answer, r.original_answer, r.evidence, r.kind, r.numbers, r.verify_notes, r.status,"
            " r.chunk_id, r.doc_id, c.text AS chunk_text, c.heading_path, d.name AS doc_name,"
            " (SELECT max(b2.created_at) FROM review_tasks t2 JOIN review_batches b2 USING (batch_id)"
            "   WHERE t2.row_id = t.row_id) > b.created_at AS in_later_batch"
            " FROM review_tasks t JOIN review_batches b USING (batch_id) JOIN qa_rows r USING (row_id)"
            " JOIN chunks c ON c.chunk_id = r.chunk_id JOIN documents d ON d.doc_id = r.doc_id"
            " WHERE t.batch_id = ? ORDER BY t.row_id",
            [batch_id],
        )
    )


def chunk_facts(con: duckdb.DuckDBPyConnection, chunk_ids: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """The ledger facts of each chunk (the fields of ``tasks.distill.teachers.base.FactRef``), in text order."""
    out: dict[str, list[dict[str, Any]]] = {c: [] for c in chunk_ids}
    if not chunk_ids:
        return out
    rows = fetch_dicts(
        con.execute(
            "SELECT chunk_id, fact_id, value, value_max, unit, raw, qualifier, subject, context, span_start,"
            " span_end FROM facts WHERE chunk_id IN (SELECT unnest(?)) ORDER BY chunk_id, span_start",
            [list(chunk_ids)],
        )
    )
    for row in rows:
        out[row.pop("chunk_id")].append(row)
    return out


def export_path(con: duckdb.DuckDBPyConnection, export_id: str) -> str | None:
    """Where an export with this content was archived, if it was."""
    found = con.execute("SELECT path FROM review_exports WHERE export_id = ?", [export_id]).fetchone()
    return str(found[0]) if found else None


def record_export(
    con: duckdb.DuckDBPyConnection, export_id: str, batch_id: str, path: str, task_count: int
) -> None:
    """Remember an archived export as pending (not yet applied); a re-archived one gets its new path."""
    con.execute(
        "INSERT INTO review_exports (export_id, batch_id, path, task_count) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (export_id) DO UPDATE SET path = excluded.path",
        [export_id, batch_id, path, task_count],
    )


def pending_exports(con: duckdb.DuckDBPyConnection, batch_id: str) -> list[dict[str, Any]]:
    """Archived exports of a batch not yet applied (the server or the process died in between)."""
    return fetch_dicts(
        con.execute(
            "SELECT * FROM review_exports WHERE batch_id = ? AND applied_at IS NULL ORDER BY exported_at, path",
            [batch_id],
        )
    )


def apply_decisions(
    con: duckdb.DuckDBPyConnection,
    batch_id: str,
    export_id: str | None,
    decisions: Sequence[dict[str, Any]],
    complete: bool,
) -> str:
    """Write review outcomes to qa_rows and review_tasks, mark the export applied and update the batch's
    status, all in one transaction. Each decision carries the row's new values (None keeps a column).
    Returns the batch's new status."""
    with transaction(con):
        for d in decisions:
            con.execute(
                "UPDATE qa_rows SET status = ?, reviewer = ?, reviewed_at = ?, review_verdict = ?,"
                " review_comment = ?, review_batch_id = ?, verify_notes = ?,"
                " original_answer = CASE WHEN ? THEN coalesce(original_answer, answer) ELSE original_answer END,"
                " answer = coalesce(?, answer), numbers = coalesce(?, numbers),"
                " is_numeric = coalesce(?, is_numeric), grounded = coalesce(?, grounded),"
                " fact_ids = coalesce(?, fact_ids), corrected_answer = ?, corrected_numbers = ?"
                " WHERE row_id = ?",
                [
                    d["status"],
                    d["reviewer"],
                    d["reviewed_at"],
                    d["verdict"],
                    d["comment"],
                    batch_id,
                    d["verify_notes"],
                    d["answer"] is not None,
                    d["answer"],
                    d["numbers"],
                    d["is_numeric"],
                    d["grounded"],
                    d["fact_ids"],
                    d["corrected_answer"],
                    d["corrected_numbers"],
                    d["row_id"],
                ],
            )
            con.execute(
                "UPDATE review_tasks SET annotation_id = ?, annotation_at = ?, verdict = ?,"
                " applied_at = current_timestamp WHERE batch_id = ? AND row_id = ?",
                [d["annotation_id"], d["annotation_at"], d["verdict"], batch_id, d["row_id"]],
            )
        if export_id is not None:
            con.execute(
                "UPDATE review_exports SET applied_at = current_timestamp WHERE export_id = ?", [export_id]
            )
        return _refresh_batch_status(con, batch_id, complete)


def _refresh_batch_status(con: duckdb.DuckDBPyConnection, batch_id: str, complete: bool) -> str:
    counts = con.execute(
        "SELECT count(*), count(applied_at) FROM review_tasks WHERE batch_id = ?", [batch_id]
    ).fetchone()
    assert counts is not None
    current = get_batch(con, batch_id)
    assert current is not None
    status = current["status"]
    if complete and counts[0] and counts[1] == counts[0]:
        status = "synced"
    elif complete and status == "open":
        status = "complete"
    if status != current["status"]:
        con.execute(
            "UPDATE review_batches SET status = ?,"
            " completed_at = coalesce(completed_at, current_timestamp),"
            " synced_at = CASE WHEN ? = 'synced' THEN current_timestamp ELSE synced_at END WHERE batch_id = ?",
            [status, status, batch_id],
        )
    return status


def mark_batch_complete(con: duckdb.DuckDBPyConnection, batch_id: str) -> None:
    """Every task has an annotation (seen by progress or the webhook); sync moves it on to synced."""
    con.execute(
        "UPDATE review_batches SET status = 'complete', completed_at = coalesce(completed_at, current_timestamp)"
        " WHERE batch_id = ? AND status = 'open'",
        [batch_id],
    )
