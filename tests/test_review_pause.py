"""Pausing a flow for review and resuming it (Prefect's real pause/resume in a test harness).

Label Studio itself is exercised for real in test_review_labelstudio.py; here a stand-in client answers
``tasks.list`` so that completeness can be set per test.
"""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest
from prefect import flow
from prefect.client.schemas.objects import StateType
from prefect.runtime import flow_run
from prefect.testing.utilities import prefect_test_harness

from flows.build_dataset import ReviewTimedOut, wait_for_review
from review.resume import ResumeRefused, resume_batch
from runtime.config import Settings
from tasks.distill.distill import distill, make_teacher
from tasks.ingest.documents import ingest_file
from tests.conftest import SAMPLE_PDF
from warehouse import distill as distill_queries
from warehouse import review as review_queries
from warehouse.db import open_warehouse


@pytest.fixture(scope="module")
def prefect_server():
    with prefect_test_harness(server_startup_timeout=120):
        yield


class StandInTasks:
    """Label Studio's task listing for one project: ``annotated`` tasks carry an accept verdict."""

    def __init__(self, total: int) -> None:
        self.total, self.annotated = total, 0

    def list(self, project: int, fields: str = "all"):
        verdict = {"from_name": "verdict", "type": "choices", "value": {"choices": ["accept"]}}
        return [
            {
                "id": i,
                "data": {},
                "annotations": [{"id": i, "result": [verdict], "was_cancelled": False}]
                if i < self.annotated
                else [],
            }
            for i in range(self.total)
        ]


def _prepare(settings: Settings, rows: int = 3) -> tuple[str, StandInTasks]:
    with open_warehouse(settings.warehouse_path) as con:
        ingest_file(con, SAMPLE_PDF, settings)
        distill(con, settings, make_teacher(settings))
        row_ids = [r["row_id"] for r in distill_queries.list_rows(con, status="needs_review")[:rows]]
        review_queries.create_batch(con, "batch-1", 7, None, row_ids)
    return "batch-1", StandInTasks(rows)


@flow(name="review-pause")
def paused_flow(settings: Settings, batch_id: str) -> dict:
    with open_warehouse(settings.warehouse_path) as con:
        review_queries.set_flow_run(con, batch_id, str(flow_run.id))
    done = wait_for_review(settings, {"batch_id": batch_id, "ls_project_id": 7})
    return done.model_dump()


def _run_in_thread(settings: Settings, batch_id: str) -> dict:
    outcome: dict = {}

    def target() -> None:
        try:
            outcome["result"] = paused_flow(settings, batch_id)
        except Exception as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    outcome["thread"] = thread
    return outcome


def _wait_until_paused(settings: Settings, batch_id: str, timeout: float = 90.0) -> str:
    from prefect import get_client

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open_warehouse(settings.warehouse_path) as con:
            run_id = (review_queries.get_batch(con, batch_id) or {}).get("flow_run_id")
        if run_id:
            with get_client(sync_client=True) as client:
                if client.read_flow_run(run_id).state.type == StateType.PAUSED:
                    return run_id
        time.sleep(0.5)
    raise AssertionError("the flow never paused")


def test_resume_is_refused_until_complete_then_resumes(
    prefect_server, settings: Settings, monkeypatch
) -> None:
    monkeypatch.setattr("review.server.status", lambda s: SimpleNamespace(running=False))
    batch_id, tasks = _prepare(settings)
    client = SimpleNamespace(tasks=tasks)
    outcome = _run_in_thread(settings, batch_id)
    _wait_until_paused(settings, batch_id)
    tasks.annotated = 1
    with (
        open_warehouse(settings.warehouse_path) as con,
        pytest.raises(ResumeRefused, match="2 of 3 tasks remain"),
    ):
        resume_batch(con, settings, client, batch_id)
    tasks.annotated = 3
    with open_warehouse(settings.warehouse_path) as con:
        resume_batch(con, settings, client, batch_id)
    outcome["thread"].join(timeout=90)
    assert outcome.get("result") == {"batch_id": batch_id, "partial": False, "annotated": 3, "remaining": 0}


def test_forced_partial_resume(prefect_server, settings: Settings, monkeypatch) -> None:
    monkeypatch.setattr("review.server.status", lambda s: SimpleNamespace(running=False))
    batch_id, tasks = _prepare(settings)
    tasks.annotated = 1
    outcome = _run_in_thread(settings, batch_id)
    _wait_until_paused(settings, batch_id)
    with open_warehouse(settings.warehouse_path) as con:
        resume_batch(con, settings, SimpleNamespace(tasks=tasks), batch_id, partial=True)
    outcome["thread"].join(timeout=90)
    assert outcome["result"]["partial"] is True and outcome["result"]["remaining"] == 2


def test_timeout_fails_the_run_with_a_clear_message(prefect_server, settings: Settings, monkeypatch) -> None:
    monkeypatch.setattr("review.server.status", lambda s: SimpleNamespace(running=False))
    batch_id, _ = _prepare(settings)
    quick = settings.model_copy(update={"review_timeout_s": 3.0})
    with pytest.raises(ReviewTimedOut, match="not completed within 3 s"):
        paused_flow(quick, batch_id)
