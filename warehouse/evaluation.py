"""Queries for evaluation: the ledger values numbers are checked against, and stored runs and items."""

from __future__ import annotations

import json
from collections import defaultdict
from decimal import Decimal
from typing import Any

import duckdb

from warehouse.db import bulk_insert, fetch_dicts, transaction


def ledger_values(con: duckdb.DuckDBPyConnection) -> tuple[set[Decimal], dict[str, set[Decimal]]]:
    """Every fact value (and range end) of every document, and per document name."""
    everything: set[Decimal] = set()
    per_doc: dict[str, set[Decimal]] = defaultdict(set)
    for name, value, value_max in con.execute(
        "SELECT d.name, f.value, f.value_max FROM facts f JOIN documents d USING (doc_id)"
    ).fetchall():
        for v in (value, value_max):
            if v is not None:
                everything.add(Decimal(v))
                per_doc[name].add(Decimal(v))
    return everything, dict(per_doc)


def save_eval_run(con: duckdb.DuckDBPyConnection, run: dict[str, Any], items: list[dict[str, Any]]) -> None:
    with transaction(con):
        con.execute(
            "INSERT INTO eval_runs (eval_run_id, model_label, model_id, mode, source, n, metrics)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                run["eval_run_id"],
                run["model_label"],
                run.get("model_id"),
                run["mode"],
                run["source"],
                run["n"],
                json.dumps(run["metrics"], ensure_ascii=False),
            ],
        )
        columns = [
            "eval_run_id",
            "item_id",
            "question",
            "type",
            "doc",
            "answer_given",
            "passed",
            "numbers_ok",
            "keyword_share",
            "invented",
            "abstained",
        ]
        bulk_insert(con, "eval_items", columns, [[i[c] for c in columns] for i in items])


def list_eval_runs(con: duckdb.DuckDBPyConnection, limit: int = 20) -> list[dict[str, Any]]:
    cursor = con.execute(
        "SELECT eval_run_id, model_label, model_id, mode, source, n, metrics, created_at FROM eval_runs"
        f" ORDER BY created_at DESC LIMIT {int(limit)}"
    )
    return fetch_dicts(cursor)
