"""Queries for evaluation: the ledger values numbers are checked against, and stored runs and items."""

from __future__ import annotations

import json
from typing import Any

import duckdb

from warehouse.db import bulk_insert, fetch_dicts, transaction


def fact_values(con: duckdb.DuckDBPyConnection) -> list[tuple[str, Any, Any]]:
    """(document name, value, value_max) of every fact."""
    return con.execute(
        "SELECT d.name, f.value, f.value_max FROM facts f JOIN documents d USING (doc_id)"
    ).fetchall()


def document_texts(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    """The normalised text of every ingested document, by name (the scorer checks dates and articles in it)."""
    return {
        name: text
        for name, text in con.execute(
            "SELECT name, text FROM documents WHERE status = 'ok' AND text IS NOT NULL"
        ).fetchall()
    }


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
        columns = list(items[0]) if items else []
        bulk_insert(con, "eval_items", columns, [[i[c] for c in columns] for i in items])


def list_eval_runs(con: duckdb.DuckDBPyConnection, limit: int = 20) -> list[dict[str, Any]]:
    cursor = con.execute(
        "SELECT eval_run_id, model_label, model_id, mode, source, n, metrics, created_at FROM eval_runs"
        f" ORDER BY created_at DESC LIMIT {int(limit)}"
    )
    return fetch_dicts(cursor)


def recorded_drafts(
    con: duckdb.DuckDBPyConnection, model_label: str = "challenger", mode: str = "grounded"
) -> dict[str, str]:
    """Question -> the model's draft in the newest evaluation run of ``model_label`` in ``mode`` (every
    question set of that run); empty when there is none."""
    row = con.execute(
        "SELECT eval_run_id FROM eval_runs WHERE model_label = ? AND mode = ? ORDER BY created_at DESC LIMIT 1",
        [model_label, mode],
    ).fetchone()
    if row is None:
        return {}
    pairs = con.execute("SELECT question, draft FROM eval_items WHERE eval_run_id = ?", [row[0]]).fetchall()
    return {question: draft or "" for question, draft in pairs}
