"""End to end with a real Label Studio: the dataset flow pauses after distillation, annotators work through
the SDK, the webhook resumes the flow, sync applies the verdicts, and the release gate judges the result."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from prefect.client.schemas.objects import StateType
from prefect.testing.utilities import prefect_test_harness

from flows.build_dataset import build_dataset
from flows.gates import GateFailed
from review import server
from runtime.config import load_settings
from tests.conftest import SAMPLE_PDF, require_labelstudio
from tests.test_review_labelstudio import _result
from warehouse import review as review_queries
from warehouse.db import open_warehouse


@pytest.mark.slow
def test_flow_pauses_for_people_and_the_webhook_resumes_it(tmp_path: Path, stop_later) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "slm.toml").write_text(
        f"labelstudio_port = {server.free_port()}\nreview_webhook_port = {server.free_port()}\n"
        "per_fact = 1\nreview_policy = 'labelstudio'\nlabelstudio_attempts = 3\nlabelstudio_backoff_s = 0.2\n",
        encoding="utf-8",
    )
    settings = load_settings(workspace)
    require_labelstudio(settings)
    stop_later(lambda: server.stop(settings))  # before the start: a start that fails half way is stopped too
    server.start(settings)
    outcome: dict = {}
    try:
        with prefect_test_harness(server_startup_timeout=120):
            thread = threading.Thread(
                target=lambda: _run(outcome, [str(SAMPLE_PDF)], str(workspace)), daemon=True
            )
            thread.start()
            batch = _wait_for_pause(settings, outcome)
            client = server.client_for(settings)
            every = list(client.tasks.list(project=batch["ls_project_id"], fields="all"))
            assert len(every) == batch["row_count"] > 4
            # Fact-first (#17): fact tasks are all marked correct here; the verdicts below are on row tasks.
            tasks = [t for t in every if t.data.get("kind") != "fact"]
            assert len(tasks) >= 3 and len(every) > len(tasks)
            by_row = {t.data["row_id"]: t for t in tasks}
            first = tasks[0]
            with open_warehouse(settings.warehouse_path) as con:
                chunk_id = con.execute(
                    "SELECT chunk_id FROM qa_rows WHERE row_id = ?", [first.data["row_id"]]
                ).fetchone()[0]
                facts = review_queries.chunk_facts(con, [chunk_id])
            fact = (facts.get(chunk_id) or [{"raw": "100元"}])[0]
            plan = {
                tasks[0].id: _result("correct", f"按规定，标准为{fact['raw']}。", fact["raw"], "reworded"),
                tasks[1].id: _result("correct", "按规定，标准为987654元。", "987654元"),
                tasks[2].id: _result("reject", comment="unclear question"),
            }
            for task in every:
                client.annotations.create(id=task.id, result=plan.get(task.id, _result("accept")))
            thread.join(timeout=240)
            assert not thread.is_alive(), "the webhook did not resume the flow"
    finally:
        server.stop(settings)
    # The correction stating a number the source does not contain went back to review, so release fails.
    error = outcome.get("error")
    assert isinstance(error, GateFailed) and "none pending review" in str(error)
    with open_warehouse(settings.warehouse_path) as con:
        status = dict(
            con.execute(
                "SELECT row_id, status FROM qa_rows WHERE row_id IN (SELECT unnest(?))", [list(by_row)]
            ).fetchall()
        )
        notes = con.execute(
            "SELECT verify_notes FROM qa_rows WHERE row_id = ?", [tasks[1].data["row_id"]]
        ).fetchone()
        gate = con.execute(
            "SELECT success FROM gate_runs WHERE gate = 'release' ORDER BY created_at DESC"
        ).fetchone()
    assert status[tasks[0].data["row_id"]] == "corrected"
    assert status[tasks[1].data["row_id"]] == "needs_review" and "987654" in notes[0]
    assert status[tasks[2].data["row_id"]] == "rejected"
    assert sum(s == "approved" for s in status.values()) == len(tasks) - 3
    assert gate == (False,)
    with open_warehouse(settings.warehouse_path) as con:  # the fact verdicts decided the other rows
        ledger = con.execute("SELECT count(*) FROM qa_rows WHERE reviewer LIKE 'ledger:%'").fetchone()[0]
        verified = con.execute("SELECT count(*) FROM fact_verdicts WHERE verdict = 'correct'").fetchone()[0]
    asked = sum(len(t.data["fact_ids"]) for t in every if t.data.get("kind") == "fact")  # one task a sentence
    assert ledger > 0 and verified == asked > len(every) - len(tasks)


def _run(outcome: dict, paths: list[str], workspace: str) -> None:
    try:
        outcome["result"] = build_dataset(paths, workspace=workspace)
    except Exception as exc:
        outcome["error"] = exc


def _wait_for_pause(settings, outcome: dict, timeout: float = 300.0) -> dict:
    from prefect import get_client

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "error" in outcome:
            raise AssertionError(f"the flow failed before pausing: {outcome['error']}")
        try:
            with open_warehouse(settings.warehouse_path, read_only=True) as con:
                batches = review_queries.list_batches(con)
        except Exception:
            batches = []
        if batches and batches[-1].get("flow_run_id"):
            with get_client(sync_client=True) as client:
                if client.read_flow_run(batches[-1]["flow_run_id"]).state.type == StateType.PAUSED:
                    return batches[-1]
        time.sleep(1.0)
    raise AssertionError("the flow never paused for review")
