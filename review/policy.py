"""Review policies: `labelstudio` sends risky rows to people; `auto` (demos and CI only) lets the ledger
decide and every report says so."""

from __future__ import annotations

import duckdb

from warehouse.gates import detect_conflicts
from warehouse.review import auto_review

POLICIES = ("labelstudio", "auto")


def apply_auto_policy(con: duckdb.DuckDBPyConnection, similarity_threshold: float = 0.8) -> dict[str, int]:
    """Approve grounded, conflict-free rows waiting for review; reject the rest (reviewer auto:ledger).

    Conflicts are computed first: a row is only conflict-free against the current rows."""
    detect_conflicts(con, similarity_threshold)
    return auto_review(con)
