"""Review policies: `labelstudio` sends risky rows to people; `auto` (demos and CI only) lets the ledger
decide and every report says so."""

from __future__ import annotations

import duckdb

from warehouse.review import auto_review

POLICIES = ("labelstudio", "auto")


def apply_auto_policy(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Approve grounded, conflict-free rows waiting for review; reject the rest (reviewer auto:ledger)."""
    return auto_review(con)
