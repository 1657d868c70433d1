"""Queries for the model registry and the GGUF exports. All SQL for the ``models`` and ``exports`` tables.

There is at most one champion: promoting a model retires the previous champion in the same transaction.
"""

from __future__ import annotations

import json
from typing import Any

import duckdb

from warehouse.db import fetch_dicts, transaction

KINDS = ("base", "challenger", "champion", "retired", "rejected")

_MODEL_COLUMNS = (
    "model_id, kind, base_spec, adapter_path, dataset_id, train_metrics, eval_metrics, status, created_at,"
    " promoted_at, note"
)
_EXPORT_COLUMNS = "export_id, model_id, path, quant, size_bytes, sha256, source, created_at"


def _json(value: dict[str, Any] | None) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False, default=str)


def _rows(cursor: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    out = []
    for record in fetch_dicts(cursor):
        for key in ("train_metrics", "eval_metrics"):
            if isinstance(record.get(key), str):
                record[key] = json.loads(record[key])
        out.append(record)
    return out


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"model kind must be one of {', '.join(KINDS)}, not {kind!r}")


def register_model(
    con: duckdb.DuckDBPyConnection,
    model_id: str,
    kind: str,
    base_spec: str,
    *,
    adapter_path: str | None = None,
    dataset_id: str | None = None,
    train_metrics: dict[str, Any] | None = None,
    eval_metrics: dict[str, Any] | None = None,
    status: str = "registered",
    note: str | None = None,
) -> None:
    """Add a model, or update the given fields of one registered before. An existing model keeps its kind
    unless ``kind`` is champion; kinds change through :func:`set_status`, which keeps one champion."""
    _check_kind(kind)
    con.execute(
        f"INSERT INTO models ({_MODEL_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, current_timestamp, NULL, ?)"
        " ON CONFLICT (model_id) DO UPDATE SET base_spec = excluded.base_spec,"
        " adapter_path = coalesce(excluded.adapter_path, models.adapter_path),"
        " dataset_id = coalesce(excluded.dataset_id, models.dataset_id),"
        " train_metrics = coalesce(excluded.train_metrics, models.train_metrics),"
        " eval_metrics = coalesce(excluded.eval_metrics, models.eval_metrics),"
        " status = excluded.status, note = coalesce(excluded.note, models.note)",
        [
            model_id,
            "challenger" if kind == "champion" else kind,  # set_status below promotes it properly
            base_spec,
            adapter_path,
            dataset_id,
            _json(train_metrics),
            _json(eval_metrics),
            status,
            note,
        ],
    )
    if kind == "champion":
        set_status(con, model_id, "champion", note=note)


def set_status(
    con: duckdb.DuckDBPyConnection,
    model_id: str,
    kind: str,
    *,
    status: str | None = None,
    note: str | None = None,
    eval_metrics: dict[str, Any] | None = None,
) -> None:
    """Change a model's kind (and optionally status, note, eval metrics). Making it champion retires the
    current champion and stamps ``promoted_at``, all in one transaction."""
    _check_kind(kind)
    if get_model(con, model_id) is None:
        raise KeyError(f"no registered model {model_id}")
    with transaction(con):
        if kind == "champion":
            con.execute(
                "UPDATE models SET kind = 'retired', note = coalesce(note, '') || ?"
                " WHERE kind = 'champion' AND model_id <> ?",
                [f" [retired: {model_id} promoted]", model_id],
            )
        con.execute(
            "UPDATE models SET kind = ?, status = coalesce(?, status), note = coalesce(?, note),"
            " eval_metrics = coalesce(?, eval_metrics),"
            " promoted_at = CASE WHEN ? = 'champion' AND kind <> 'champion' THEN current_timestamp"
            " ELSE promoted_at END WHERE model_id = ?",
            [kind, status, note, _json(eval_metrics), kind, model_id],
        )


def get_model(con: duckdb.DuckDBPyConnection, model_id: str) -> dict[str, Any] | None:
    rows = _rows(con.execute(f"SELECT {_MODEL_COLUMNS} FROM models WHERE model_id = ?", [model_id]))
    return rows[0] if rows else None


def get_champion(con: duckdb.DuckDBPyConnection) -> dict[str, Any] | None:
    """The current champion, or None before the first promotion."""
    rows = _rows(
        con.execute(
            f"SELECT {_MODEL_COLUMNS} FROM models WHERE kind = 'champion' ORDER BY promoted_at DESC LIMIT 1"
        )
    )
    return rows[0] if rows else None


def list_models(con: duckdb.DuckDBPyConnection, kind: str | None = None) -> list[dict[str, Any]]:
    """Registered models, newest first; ``kind`` filters."""
    sql = f"SELECT {_MODEL_COLUMNS} FROM models"
    params: list[Any] = []
    if kind is not None:
        _check_kind(kind)
        sql += " WHERE kind = ?"
        params.append(kind)
    return _rows(con.execute(sql + " ORDER BY created_at DESC, model_id", params))


def record_export(
    con: duckdb.DuckDBPyConnection,
    *,
    model_id: str,
    path: str,
    quant: str,
    size_bytes: int,
    sha256: str,
    source: str,
) -> str:
    """Record an exported file (the same bytes again only update the path); returns the export id."""
    export_id = sha256
    con.execute(
        f"INSERT INTO exports ({_EXPORT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, current_timestamp)"
        " ON CONFLICT (export_id) DO UPDATE SET path = excluded.path, model_id = excluded.model_id",
        [export_id, model_id, path, quant, size_bytes, sha256, source],
    )
    return export_id


def list_exports(con: duckdb.DuckDBPyConnection, model_id: str | None = None) -> list[dict[str, Any]]:
    sql = f"SELECT {_EXPORT_COLUMNS} FROM exports"
    params: list[Any] = []
    if model_id is not None:
        sql += " WHERE model_id = ?"
        params.append(model_id)
    return _rows(con.execute(sql + " ORDER BY created_at DESC, path", params))
