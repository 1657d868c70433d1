"""Push rows waiting for people (status ``needs_review``) to Label Studio as a review batch.

One Label Studio project per batch, not one project with a batch field, because a batch is the unit
everything else works in:
- completeness: a paused flow run waits for *its* batch; with a project per batch, "every task of the project
  has an annotation" is the test, with no filter that a later push could get wrong;
- export and sync: a project export is exactly the batch (no filtering of a growing project on every sync);
- webhooks carry the project id, which maps to one batch and one flow run without reading task data;
- the labelling config is frozen with the batch, so changing the interface never alters an open batch;
- a finished batch can be archived in Label Studio without touching the ones still open.
The cost, many projects over months, is cheap in Label Studio and keeps each one small.

Idempotent: a row that already has a task in a batch not yet synced is not pushed again; the import into
Label Studio lists the project's tasks first and adds only the rows it lacks, so a push interrupted between
the import and the warehouse write, then repeated, creates no duplicate task.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import duckdb

from review.labeling import CONFIG_VERSION, label_config, task_for_row
from review.server import base_url, retrying, transient
from review.sync import unavailable
from runtime.config import Settings
from warehouse import review as queries

INSTRUCTION = (
    "<p>Check the answer against the highlighted source. Keys: <b>a</b> accept, <b>c</b> correct, <b>r</b>"
    " reject; Ctrl+Enter submits.</p><p>对照原文中高亮的数字核对答案。修改时填写完整的新答案和数字；"
    "原文中没有的数字不会被采纳。</p>"
)


@dataclass(frozen=True)
class BatchInfo:
    batch_id: str
    ls_project_id: int
    flow_run_id: str | None
    row_count: int  # rows in the batch
    new_tasks: int  # tasks imported into Label Studio by this call
    created: bool  # False: no new rows, the latest open batch is returned
    url: str  # where annotators work


def _batch_id(row_ids: list[str]) -> str:
    digest = hashlib.sha256("\x1f".join(sorted(row_ids)).encode()).hexdigest()[:8]
    return f"rb-{datetime.now(UTC):%Y%m%dT%H%M%S}-{digest}"


def project_url(settings: Settings, ls_project_id: int) -> str:
    return f"{base_url(settings)}/projects/{ls_project_id}/data"


def _task_row_id(task: Any) -> str | None:
    data = task.get("data") if isinstance(task, dict) else getattr(task, "data", None)
    return (data or {}).get("row_id")


def _task_id(task: Any) -> int:
    return int(task["id"] if isinstance(task, dict) else task.id)


def _list_tasks(client: Any, ls_project_id: int) -> dict[str, int]:
    found: dict[str, int] = {}
    for task in client.tasks.list(project=ls_project_id, fields="all"):
        row_id = _task_row_id(task)
        if row_id:
            found.setdefault(row_id, _task_id(task))
    return found


def existing_tasks(settings: Settings, client: Any, ls_project_id: int) -> dict[str, int]:
    """row_id -> Label Studio task id of the tasks already in a project."""
    return retrying(settings)(_list_tasks)(client, ls_project_id)


def _import_missing(
    con: duckdb.DuckDBPyConnection, settings: Settings, client: Any, batch: dict[str, Any]
) -> int:
    """Import the batch's rows that its project lacks, then record every task id. Returns tasks imported."""
    batch_id, project_id = batch["batch_id"], int(batch["ls_project_id"])
    rows = queries.batch_tasks(con, batch_id)
    imported = 0

    @retrying(settings)
    def sync_tasks() -> dict[str, int]:
        nonlocal imported
        present = _list_tasks(client, project_id)
        missing = [r for r in rows if r["row_id"] not in present]
        if missing:
            payload = [
                {
                    "data": task_for_row(
                        r,
                        {"text": r["chunk_text"], "heading_path": r["heading_path"]},
                        batch_id,
                        doc_name=r["doc_name"],
                    )
                }
                for r in missing
            ]
            client.projects.import_tasks(id=project_id, request=payload, return_task_ids=True)
            imported += len(missing)
            # Listing again (rather than trusting the response order) maps ids by row_id, whatever LS returns.
            present = _list_tasks(client, project_id)
        return present

    present = sync_tasks()
    queries.set_task_ids(
        con, batch_id, {r["row_id"]: present[r["row_id"]] for r in rows if r["row_id"] in present}
    )
    return imported


def push_batch(
    con: duckdb.DuckDBPyConnection,
    settings: Settings,
    client: Any,
    flow_run_id: str | None = None,
    *,
    limit: int | None = None,
    row_ids: list[str] | None = None,
) -> BatchInfo | None:
    """Make the rows waiting for people (at most ``limit``, or only ``row_ids``) a review batch.

    Returns the new batch; when every waiting row is already in an open batch, the latest open batch (its
    flow run id replaced by ``flow_run_id`` when given: the run now waiting is the one to resume); None when
    nothing waits for review at all. Raises ``LabelStudioUnavailable`` (naming the server) when Label Studio
    stops answering; pushing again after it is back completes the batch.
    """
    try:
        return _push(con, settings, client, flow_run_id, limit=limit, row_ids=row_ids)
    except Exception as exc:
        if not transient(exc):
            raise
        # What was recorded is safe: a batch whose import was not confirmed is finished by the next push,
        # which lists the project's tasks first and so imports nothing twice.
        raise unavailable(
            settings, "pushing a review batch", "push again: nothing is lost or duplicated", exc
        ) from exc


def _push(
    con: duckdb.DuckDBPyConnection,
    settings: Settings,
    client: Any,
    flow_run_id: str | None,
    *,
    limit: int | None,
    row_ids: list[str] | None,
) -> BatchInfo | None:
    # A push interrupted after the batch was recorded but before Label Studio confirmed the import.
    finished: tuple[dict[str, Any], int] | None = None
    for unfinished in queries.batches_missing_task_ids(con):
        batch = queries.get_batch(con, unfinished)
        if batch is not None:
            finished = (batch, _import_missing(con, settings, client, batch))
    if finished is not None and row_ids is None:
        # Pushing again after a crash completes the batch the interrupted push made, and stops there: an
        # uninterrupted `push --limit N` makes one batch of N rows, so the re-run must not add a second one.
        batch, imported = finished
        if flow_run_id and flow_run_id != batch["flow_run_id"]:
            queries.set_flow_run(con, batch["batch_id"], flow_run_id)
        project_id = int(batch["ls_project_id"])
        return BatchInfo(
            batch["batch_id"],
            project_id,
            flow_run_id or batch["flow_run_id"],
            int(batch["row_count"]),
            imported,
            True,
            project_url(settings, project_id),
        )

    candidates = queries.review_candidates(con, limit=limit, row_ids=row_ids)
    if not candidates:
        open_batches = [b for b in queries.list_batches(con) if b["status"] != "synced"]
        if row_ids is not None:  # the batch those rows are in, not just the newest one
            holding = set(queries.batches_of_rows(con, row_ids))
            open_batches = [b for b in open_batches if b["batch_id"] in holding]
        if not open_batches:
            return None
        latest = open_batches[-1]
        if flow_run_id and flow_run_id != latest["flow_run_id"]:
            queries.set_flow_run(con, latest["batch_id"], flow_run_id)
        return BatchInfo(
            latest["batch_id"],
            int(latest["ls_project_id"]),
            flow_run_id or latest["flow_run_id"],
            int(latest["row_count"]),
            0,
            False,
            project_url(settings, int(latest["ls_project_id"])),
        )

    ids = [r["row_id"] for r in candidates]
    batch_id = _batch_id(ids)

    @retrying(settings)
    def create_project() -> int:
        project = client.projects.create(
            title=f"slm review {batch_id}",
            description=f"{len(ids)} rows; config {CONFIG_VERSION}; flow run {flow_run_id or '-'}",
            label_config=label_config(),
            expert_instruction=INSTRUCTION,
            show_instruction=True,
            show_skip_button=False,  # a skipped task never completes the batch; reject says "not usable"
            maximum_annotations=1,
        )
        return int(project.id)

    # The project first: if this process dies now, an empty project is left over, never a lost row.
    project_id = create_project()
    queries.create_batch(con, batch_id, project_id, flow_run_id, ids)
    batch = queries.get_batch(con, batch_id)
    assert batch is not None
    imported = _import_missing(con, settings, client, batch)
    return BatchInfo(
        batch_id, project_id, flow_run_id, len(ids), imported, True, project_url(settings, project_id)
    )
