"""Resuming a flow paused for review: only when the batch is complete, unless a partial resume is forced.

The three ways in (the webhook receiver, `slm review resume`, the Prefect UI form) all end in Prefect's
``resume_flow_run`` with the same typed input; the first two check completeness here first.
"""

from __future__ import annotations

from typing import Any

import duckdb

from review.sync import BatchProgress, batch_progress
from runtime.config import Settings
from warehouse import review as queries


class ResumeRefused(RuntimeError):
    """The batch is not complete (the message says how many tasks remain) or has no paused flow run."""


def resume_input(batch_id: str, progress: BatchProgress | None, partial: bool) -> dict[str, Any]:
    """The run input the paused flow waits for (flows.build_dataset.ReviewDone)."""
    return {
        "batch_id": batch_id,
        "partial": partial,
        "annotated": progress.annotated if progress else 0,
        "remaining": progress.remaining if progress else 0,
    }


def resume_flow(flow_run_id: str, run_input: dict[str, Any]) -> None:
    from prefect import resume_flow_run

    resume_flow_run(flow_run_id, run_input=run_input)


def resume_batch(
    con: duckdb.DuckDBPyConnection,
    settings: Settings,
    client: Any,
    batch_id: str | None = None,
    partial: bool = False,
) -> tuple[str, BatchProgress]:
    """Resume the flow run waiting on ``batch_id`` (default: the newest open batch). Returns (batch, progress)."""
    batches = queries.list_batches(con)
    open_batches = [b for b in batches if b["status"] != "synced"]
    batch = (
        next((b for b in batches if b["batch_id"] == batch_id), None)
        if batch_id
        else (open_batches[-1] if open_batches else None)
    )
    if batch is None:
        raise ResumeRefused(f"no review batch {batch_id!r}" if batch_id else "no open review batch")
    if not batch.get("flow_run_id"):
        raise ResumeRefused(f"batch {batch['batch_id']} has no paused flow run to resume")
    progress = batch_progress(con, settings, client, batch["batch_id"])
    if not progress.complete and not partial:
        raise ResumeRefused(
            f"batch {batch['batch_id']} is not complete: {progress.remaining} of {progress.tasks} tasks remain "
            "(use --partial to resume anyway; unreviewed rows then keep waiting and the release gate fails "
            "until they are reviewed)"
        )
    resume_flow(batch["flow_run_id"], resume_input(batch["batch_id"], progress, partial))
    return batch["batch_id"], progress
