"""Queries for review outcomes: the auto policy now; Label Studio batches and sync build on the same columns."""

from __future__ import annotations

import duckdb

from warehouse.db import transaction

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
