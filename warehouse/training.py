"""Queries for training runs."""

from __future__ import annotations

import json
from typing import Any

import duckdb

from warehouse.db import fetch_dicts


def record_train_run(con: duckdb.DuckDBPyConnection, run: dict[str, Any]) -> None:
    columns = [
        "train_run_id",
        "dataset_id",
        "base_spec",
        "base_path",
        "base_hash",
        "profile",
        "config",
        "device",
        "wall_s",
        "tokens_per_s",
        "peak_rss_mb",
        "optimizer_steps",
        "final_train_loss",
        "final_eval_loss",
        "loss_curve",
        "adapter_path",
        "model_id",
    ]
    values = [
        json.dumps(run[c], ensure_ascii=False) if c in ("config", "loss_curve") else run.get(c)
        for c in columns
    ]
    con.execute(
        f"INSERT OR REPLACE INTO train_runs ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
        values,
    )


def list_train_runs(con: duckdb.DuckDBPyConnection, limit: int = 20) -> list[dict[str, Any]]:
    cursor = con.execute(
        "SELECT train_run_id, dataset_id, base_spec, profile, device, wall_s, tokens_per_s, peak_rss_mb,"
        f" optimizer_steps, final_eval_loss, adapter_path, model_id, created_at FROM train_runs"
        f" ORDER BY created_at DESC LIMIT {int(limit)}"
    )
    return fetch_dicts(cursor)
