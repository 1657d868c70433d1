"""Prefect task wrappers: thin edges around the plain functions, each opening the warehouse for its own
work only (a flow paused for review must not hold the DuckDB file), returning small JSON-able summaries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.config import Settings
from warehouse.db import open_warehouse


class IngestFailed(RuntimeError):
    """Some files could not be ingested; the message has one line per file and reason."""


@task(name="ingest", cache_policy=NO_CACHE, retries=1)
def ingest_task(settings: Settings, paths: list[str], allow_failures: bool = False) -> dict[str, Any]:
    from tasks.ingest import ingest_paths

    with open_warehouse(settings.warehouse_path) as con:
        results = ingest_paths(con, [Path(p) for p in paths], settings)
    failed = [r.message for r in results if r.status == "failed"]
    if failed and not allow_failures:
        raise IngestFailed("\n".join(failed))
    return {
        "added": sum(r.status == "added" for r in results),
        "unchanged": sum(r.status == "unchanged" for r in results),
        "failed": failed,
        "facts": sum(r.facts for r in results),
    }


@task(name="distill", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10)
def distill_task(settings: Settings) -> dict[str, Any]:
    """Retries are cheap: finished chunks are cached in the warehouse and not billed again."""
    from tasks.distill import distill, make_teacher

    with open_warehouse(settings.warehouse_path) as con:
        summary = distill(con, settings, make_teacher(settings))
    return {
        "run_id": summary.run_id,
        "teacher": summary.teacher,
        "chunks": summary.chunks,
        "cached": summary.cached,
        "failed": summary.failed,
        "rows_added": summary.rows_added,
        "calls": summary.usage.calls,
        "cost_usd": summary.usage.cost_usd,
        **summary.totals,
    }


@task(name="auto-review", cache_policy=NO_CACHE)
def auto_review_task(settings: Settings) -> dict[str, int]:
    from review.policy import apply_auto_policy

    with open_warehouse(settings.warehouse_path) as con:
        return apply_auto_policy(con)


@task(name="push-review-batch", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=5)
def push_review_task(settings: Settings, flow_run_id: str | None) -> dict[str, Any] | None:
    from review import server
    from review.push import push_batch

    with open_warehouse(settings.warehouse_path) as con:
        batch = push_batch(con, settings, server.client_for(settings), flow_run_id)
    return (
        None
        if batch is None
        else {
            "batch_id": batch.batch_id,
            "ls_project_id": batch.ls_project_id,
            "rows": batch.row_count,
            "new_tasks": batch.new_tasks,
            "url": batch.url,
        }
    )


@task(name="sync-review-batch", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=10)
def sync_review_task(settings: Settings, batch_id: str) -> dict[str, Any]:
    """Idempotent: a retry after Label Studio went down applies the archived export, loses nothing."""
    from review import server
    from review.sync import sync_batch

    with open_warehouse(settings.warehouse_path) as con:
        result = sync_batch(con, settings, server.client_for(settings), batch_id)
    return {
        "batch_id": batch_id,
        "applied": result.applied,
        "flagged": len(result.flagged),
        "status": result.status,
    }


@task(name="freeze-dataset", cache_policy=NO_CACHE)
def freeze_task(settings: Settings, gate_run_id: str) -> dict[str, Any]:
    from tasks.dataset import freeze_dataset

    with open_warehouse(settings.warehouse_path) as con:
        info = freeze_dataset(con, settings, gate_run_id)
    return {
        "dataset_id": info.dataset_id,
        "path": str(info.path),
        "rows": info.row_count,
        "train": info.train_count,
        "valid": info.valid_count,
        "numeric_share": info.numeric_share,
        "created": info.created,
    }
