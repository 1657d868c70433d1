"""Queries for review outcomes: the auto policy now; Label Studio batches and sync build on the same columns."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import duckdb

from warehouse.db import fetch_dicts, transaction
from warehouse.ledger import LOW_CONFIDENCE_ROWS

AUTO_REVIEWER = "auto:ledger"


def auto_review(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """The `auto` review policy (demos and CI only): rows waiting for people are approved when grounded,
    with evidence, and in no conflict; every other waiting row is rejected. Rows citing a fact OCR read
    under the confidence threshold are left waiting for a person (``held``). Returns counts."""
    with transaction(con):
        held = {
            r
            for (r,) in con.execute(
                f"SELECT row_id FROM qa_rows WHERE status = 'needs_review' AND row_id IN ({LOW_CONFIDENCE_ROWS})"
            ).fetchall()
        }
        approved = con.execute(
            "UPDATE qa_rows SET status = 'approved', reviewer = ?, reviewed_at = current_timestamp"
            " WHERE status = 'needs_review' AND grounded AND (evidence_found OR kind = 'unanswerable')"
            "  AND NOT unsure AND row_id NOT IN (SELECT row_a FROM conflicts UNION"
            "   SELECT row_b FROM conflicts WHERE row_b IS NOT NULL) AND NOT list_contains(?, row_id) RETURNING row_id",
            [AUTO_REVIEWER, sorted(held)],
        ).fetchall()
        rejected = con.execute(
            "UPDATE qa_rows SET status = 'rejected', reviewer = ?, reviewed_at = current_timestamp,"
            " verify_notes = verify_notes || CASE WHEN verify_notes = '' THEN '' ELSE '; ' END"
            "  || 'rejected by the auto review policy'"
            " WHERE status = 'needs_review' AND NOT list_contains(?, row_id) RETURNING row_id",
            [AUTO_REVIEWER, sorted(held)],
        ).fetchall()
    return {"approved": len(approved), "rejected": len(rejected), "held": len(held)}


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
    fact_tasks: Sequence[Sequence[str]] = (),
    suggested: dict[str, str] | None = None,
) -> None:
    """Record a batch and its tasks together (task ids follow once Label Studio confirms the import): one
    row task per ``row_ids`` (with the ledger's suggested verdict, if any) and one fact task per entry of
    ``fact_tasks`` (the facts of one sentence, each its own review_tasks row sharing the task's group, the
    first fact's id). ``row_count`` is the number of tasks."""
    suggested = suggested or {}
    with transaction(con):
        con.execute(
            "INSERT INTO review_batches (batch_id, ls_project_id, flow_run_id, row_count, status)"
            " VALUES (?, ?, ?, ?, 'open')",
            [batch_id, ls_project_id, flow_run_id, len(row_ids) + len(fact_tasks)],
        )
        if row_ids:
            con.executemany(
                "INSERT INTO review_tasks (batch_id, row_id, kind, suggested) VALUES (?, ?, 'row', ?)",
                [[batch_id, r, suggested.get(r)] for r in row_ids],
            )
        facts = [[batch_id, f, f, task[0]] for task in fact_tasks for f in task]
        if facts:
            con.executemany(
                "INSERT INTO review_tasks (batch_id, row_id, kind, fact_id, task_group)"
                " VALUES (?, ?, 'fact', ?, ?)",
                facts,
            )


def task_count(con: duckdb.DuckDBPyConnection, batch_id: str) -> int:
    """Tasks of a batch, both kinds (the facts of one sentence are one task)."""
    found = con.execute(
        "SELECT count(DISTINCT coalesce(task_group, row_id)) FROM review_tasks WHERE batch_id = ?", [batch_id]
    ).fetchone()
    return int(found[0]) if found else 0


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
    """A batch's row tasks with the rows as they are now (and their chunk text, for checking corrections)."""
    return fetch_dicts(
        con.execute(
            "SELECT t.batch_id, t.row_id, t.ls_task_id, t.annotation_id, t.annotation_at, t.verdict, t.applied_at,"
            " t.suggested, r.reviewer, r.review_verdict,"
            " r.question, r.answer, r.original_answer, r.evidence, r.kind, r.numbers, r.verify_notes, r.status,"
            " r.chunk_id, r.doc_id, c.text AS chunk_text, c.heading_path, d.name AS doc_name,"
            " (SELECT max(b2.created_at) FROM review_tasks t2 JOIN review_batches b2 USING (batch_id)"
            "   WHERE t2.row_id = t.row_id) > b.created_at AS in_later_batch"
            " FROM review_tasks t JOIN review_batches b USING (batch_id) JOIN qa_rows r USING (row_id)"
            " JOIN chunks c ON c.chunk_id = r.chunk_id JOIN documents d ON d.doc_id = r.doc_id"
            " WHERE t.batch_id = ? AND coalesce(t.kind, 'row') = 'row' ORDER BY t.row_id",
            [batch_id],
        )
    )


def chunk_facts(con: duckdb.DuckDBPyConnection, chunk_ids: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """The ledger facts of each chunk (the fields of ``tasks.distill.teachers.base.FactRef``), in text order."""
    return _by_chunk(
        con,
        chunk_ids,
        "SELECT chunk_id, fact_id, value, value_max, unit, raw, qualifier, subject, context, span_start,"
        " span_end FROM facts WHERE chunk_id IN (SELECT unnest(?)) ORDER BY chunk_id, span_start",
    )


def _by_chunk(
    con: duckdb.DuckDBPyConnection, chunk_ids: Sequence[str], sql: str
) -> dict[str, list[dict[str, Any]]]:
    """The rows of ``sql`` (first column chunk_id, one parameter: the chunk ids) grouped by chunk, in the
    query's order; every chunk asked for is a key, with no rows where it has none."""
    out: dict[str, list[dict[str, Any]]] = {c: [] for c in chunk_ids}
    if chunk_ids:
        for row in fetch_dicts(con.execute(sql, [list(chunk_ids)])):
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
    fact_decisions: Sequence[dict[str, Any]] = (),
    then: Callable[[duckdb.DuckDBPyConnection], None] | None = None,
) -> str:
    """Write review outcomes to qa_rows and review_tasks, fact verdicts to fact_verdicts and the ledger,
    mark the export applied and update the batch's status, all in one transaction. Each decision carries
    the row's new values (None keeps a column). ``then`` runs last inside the same transaction (the ledger
    deciding the rows that cite the facts just verified). Returns the batch's new status."""
    with transaction(con):
        for f in fact_decisions:
            _apply_fact_decision(con, batch_id, f)
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
            if d.get("prediction_changed") is not None:
                con.execute(
                    "UPDATE review_tasks SET prediction_changed = ? WHERE batch_id = ? AND row_id = ?",
                    [d["prediction_changed"], batch_id, d["row_id"]],
                )
        if then is not None:
            then(con)
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


# ---------------------------------------------------------------------------------------------------------
# Fact-first review (issue #17): fact tasks, fact verdicts, and the state the ledger decides rows from.
# The logic (which rows a verified fact decides) is review/facts.py; the SQL is here.

_FACT_COLUMNS = ("value", "value_max", "unit", "qualifier", "subject")


def batch_fact_tasks(con: duckdb.DuckDBPyConnection, batch_id: str) -> list[dict[str, Any]]:
    """A batch's fact tasks with the fact as it is now, its chunk, document and page, and the task's state."""
    return fetch_dicts(
        con.execute(
            "SELECT t.batch_id, t.fact_id, t.task_group, t.ls_task_id, t.annotation_id, t.annotation_at,"
            " t.verdict, t.applied_at, f.doc_id, f.chunk_id, f.value, f.value_max, f.unit, f.raw, f.qualifier,"
            " f.subject, f.context, f.span_start, f.span_end, f.cell, c.text AS chunk_text, c.heading_path,"
            " d.name AS doc_name,"
            " (SELECT max(p.page_no) FROM pages p WHERE p.doc_id = f.doc_id"
            "   AND p.start_char <= c.start_char + f.span_start) AS page,"
            " (SELECT max(b2.created_at) FROM review_tasks t2 JOIN review_batches b2 USING (batch_id)"
            "   WHERE t2.fact_id = t.fact_id) > b.created_at AS in_later_batch"
            " FROM review_tasks t JOIN review_batches b USING (batch_id) JOIN facts f ON f.fact_id = t.fact_id"
            " JOIN chunks c ON c.chunk_id = f.chunk_id JOIN documents d ON d.doc_id = f.doc_id"
            " WHERE t.batch_id = ? AND t.kind = 'fact' ORDER BY d.name, c.seq, f.span_start, f.fact_id",
            [batch_id],
        )
    )


def _apply_fact_decision(con: duckdb.DuckDBPyConnection, batch_id: str, d: dict[str, Any]) -> None:
    """One fact task's annotation: record the verdict (None: flagged, the fact stays unverified), rewrite the
    ledger's fields for a correction, restore them for any other verdict; the ingested fields are kept."""
    kept = con.execute(
        "SELECT original_value, original_value_max, original_unit, original_qualifier, original_subject"
        " FROM fact_verdicts WHERE fact_id = ?",
        [d["fact_id"]],
    ).fetchone()
    if kept is None:
        kept = con.execute(
            "SELECT value, value_max, unit, qualifier, subject FROM facts WHERE fact_id = ?", [d["fact_id"]]
        ).fetchone()
    assert kept is not None, d["fact_id"]
    original = dict(zip(_FACT_COLUMNS, kept, strict=True))
    verdict = d["verdict"]
    now = {
        c: (d.get(c) if verdict == "corrected" and d.get(c) is not None else original[c])
        for c in _FACT_COLUMNS
    }
    if verdict == "corrected" and d.get("value") is not None:
        now["value_max"] = d.get("value_max")  # a corrected single value is no longer a range
    con.execute(
        "UPDATE facts SET value = ?, value_max = ?, unit = ?, qualifier = ?, subject = ? WHERE fact_id = ?",
        [*(now[c] for c in _FACT_COLUMNS), d["fact_id"]],
    )
    if verdict is None:
        con.execute("DELETE FROM fact_verdicts WHERE fact_id = ?", [d["fact_id"]])
    else:
        con.execute(
            "INSERT OR REPLACE INTO fact_verdicts (fact_id, verdict, value, value_max, unit, qualifier, subject,"
            " original_value, original_value_max, original_unit, original_qualifier, original_subject,"
            " annotator, decided_at, comment, batch_id, annotation_id, annotation_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                d["fact_id"],
                verdict,
                *(now[c] for c in _FACT_COLUMNS),
                *(original[c] for c in _FACT_COLUMNS),
                d["annotator"],
                d["decided_at"],
                d["comment"],
                batch_id,
                d["annotation_id"],
                d["annotation_at"],
            ],
        )
    con.execute(
        "UPDATE review_tasks SET annotation_id = ?, annotation_at = ?, verdict = ?, applied_at = current_timestamp"
        " WHERE batch_id = ? AND row_id = ?",
        [d["annotation_id"], d["annotation_at"], d["ls_verdict"], batch_id, d["fact_id"]],
    )


def fact_verdicts(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    return fetch_dicts(con.execute("SELECT * FROM fact_verdicts ORDER BY fact_id"))


def ledger_rows(
    con: duckdb.DuckDBPyConnection, row_ids: Sequence[str] | None = None, decidable_only: bool = True
) -> list[dict[str, Any]]:
    """Rows the verified ledger may decide: waiting for people and never touched by a person's row verdict,
    or decided by the ledger before (``ledger:*``, recomputed from the verdicts as they are now). Rows with a
    task in a batch not yet synced are a person's to decide and left out. With the chunk text and whether the
    row is in a conflict. ``decidable_only=False``: the rows ``row_ids`` whatever their state."""
    where = (
        " WHERE ((r.status = 'needs_review' AND r.review_verdict IS NULL) OR r.reviewer LIKE 'ledger:%')"
        "  AND r.row_id NOT IN (SELECT t.row_id FROM review_tasks t JOIN review_batches b USING (batch_id)"
        "   WHERE b.status <> 'synced' AND t.kind = 'row')"
        if decidable_only
        else " WHERE true"
    )
    sql = (
        "SELECT r.row_id, r.chunk_id, r.doc_id, r.question, r.answer, r.evidence, r.kind, r.unsure, r.status,"
        " r.reviewer, r.reviewed_at, r.numbers, r.is_numeric, r.evidence_found, r.grounded, r.fact_ids,"
        " r.verify_notes, r.review_verdict, c.text AS chunk_text,"
        " EXISTS (SELECT 1 FROM conflicts x WHERE x.row_a = r.row_id OR x.row_b = r.row_id) AS in_conflict"
        " FROM qa_rows r JOIN chunks c USING (chunk_id) JOIN documents d ON d.doc_id = r.doc_id" + where
    )
    params: list[Any] = []
    if row_ids is not None:
        sql += " AND r.row_id IN (SELECT unnest(?))"
        params.append(list(row_ids))
    return fetch_dicts(con.execute(sql + " ORDER BY d.name, c.seq, r.created_at, r.row_id", params))


def facts_with_verdicts(
    con: duckdb.DuckDBPyConnection, chunk_ids: Sequence[str]
) -> dict[str, list[dict[str, Any]]]:
    """The ledger facts of each chunk as they are now, each with its person's verdict (None: unverified),
    annotator and time, and whether a batch not yet synced holds a task for it."""
    return _by_chunk(
        con,
        chunk_ids,
        "SELECT f.chunk_id, f.fact_id, f.value, f.value_max, f.unit, f.raw, f.qualifier, f.subject,"
        " f.context, f.span_start, f.span_end, v.verdict, v.annotator, v.decided_at,"
        " EXISTS (SELECT 1 FROM review_tasks t JOIN review_batches b USING (batch_id)"
        "   WHERE t.fact_id = f.fact_id AND b.status <> 'synced' AND t.applied_at IS NULL) AS in_open_task"
        " FROM facts f LEFT JOIN fact_verdicts v USING (fact_id)"
        " WHERE f.chunk_id IN (SELECT unnest(?)) ORDER BY f.chunk_id, f.span_start",
    )


def update_rows(con: duckdb.DuckDBPyConnection, updates: Sequence[dict[str, Any]]) -> None:
    """Write the ledger's decisions on rows (the caller holds the transaction)."""
    for u in updates:
        con.execute(
            "UPDATE qa_rows SET status = ?, reviewer = ?, reviewed_at = ?, numbers = ?, is_numeric = ?,"
            " grounded = ?, fact_ids = ?, verify_notes = ? WHERE row_id = ?",
            [
                u["status"],
                u["reviewer"],
                u["reviewed_at"],
                list(u["numbers"]),
                u["is_numeric"],
                u["grounded"],
                list(u["fact_ids"]),
                u["verify_notes"],
                u["row_id"],
            ],
        )


def batch_economy(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """Per batch: fact tasks, row tasks, the rows those decide (row tasks' rows, and rows citing the
    batch's facts), how many pre-annotated row tasks were applied and how many a person changed."""
    return fetch_dicts(
        con.execute(
            "WITH bf AS (SELECT batch_id, list(fact_id) AS facts FROM review_tasks WHERE kind = 'fact'"
            "  GROUP BY batch_id),"
            " fact_rows AS (SELECT bf.batch_id, count(*) AS n FROM bf JOIN qa_rows r"
            "  ON list_has_any(r.fact_ids, bf.facts) WHERE r.row_id NOT IN"
            "   (SELECT row_id FROM review_tasks t WHERE t.batch_id = bf.batch_id) GROUP BY bf.batch_id)"
            " SELECT b.batch_id, b.status,"
            " count(DISTINCT coalesce(t.task_group, t.row_id)) FILTER (WHERE t.kind = 'fact') AS fact_tasks,"
            " count(t.row_id) FILTER (WHERE t.kind = 'fact') AS facts_asked,"
            " count(t.row_id) FILTER (WHERE coalesce(t.kind, 'row') = 'row') AS row_tasks,"
            " count(t.row_id) FILTER (WHERE coalesce(t.kind, 'row') = 'row') + coalesce(any_value(fr.n), 0)"
            "  AS rows_decided,"
            " count(t.row_id) FILTER (WHERE t.suggested IS NOT NULL AND t.applied_at IS NOT NULL) AS predicted,"
            " count(t.row_id) FILTER (WHERE t.prediction_changed) AS prediction_changed"
            " FROM review_batches b LEFT JOIN review_tasks t USING (batch_id)"
            " LEFT JOIN fact_rows fr ON fr.batch_id = b.batch_id"
            " GROUP BY b.batch_id, b.status, b.created_at ORDER BY b.created_at, b.batch_id"
        )
    )


def row_count(con: duckdb.DuckDBPyConnection) -> int:
    found = con.execute("SELECT count(*) FROM qa_rows").fetchone()
    return int(found[0]) if found else 0
