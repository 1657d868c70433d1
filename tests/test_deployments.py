"""A real Prefect server on loopback: deploy from prefect.yaml, read the nightly schedule back, and run the
build-dataset deployment through a worker: it pauses for review in a real Label Studio and resumes when the
annotators finish (Label Studio's webhook)."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import httpx
import prefect
import pytest

from deployments import server as prefect_server
from review import server as labelstudio
from runtime.config import load_settings
from tests.conftest import SAMPLE_MD, require_labelstudio
from tests.reliability.scenarios_deps import start_from_template
from tests.reliability.scenarios_security import listening_addresses
from tests.test_review_labelstudio import _result
from warehouse import review as review_queries
from warehouse.db import open_warehouse


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _state(api: str, flow_run_id: str) -> str:
    return httpx.get(f"{api}/flow_runs/{flow_run_id}", timeout=30).json()["state"]["type"]


def _wait_for_state(api: str, flow_run_id: str, wanted: str, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    state = ""
    while time.monotonic() < deadline:
        state = _state(api, flow_run_id)
        if state == wanted or state in {"FAILED", "CRASHED", "CANCELLED"}:
            return state
        time.sleep(2.0)
    return state


@pytest.mark.slow
def test_deploy_read_back_the_schedule_and_run_build_dataset_through_a_pause(
    tmp_path: Path, stop_later
) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    # In the workspace's slm.toml, not as overrides: the flow run (a worker's subprocess) reads it too.
    (workspace / "slm.toml").write_text(
        f"prefect_port = {_free_port()}\nlabelstudio_port = {labelstudio.free_port()}\n"
        f"review_webhook_port = {labelstudio.free_port()}\nnightly_cron = '30 1 * * *'\n"
        "timezone = 'Asia/Shanghai'\nwork_pool = 'slm-test-pool'\nreview_policy = 'labelstudio'\nper_fact = 1\n",
        encoding="utf-8",
    )
    settings = load_settings(workspace)
    require_labelstudio(settings)
    # Registered before anything starts: whatever fails, nothing this test started outlives it.
    stop_later(lambda: prefect_server.stop(settings, "server"))
    stop_later(lambda: prefect_server.stop(settings, "worker"))
    stop_later(lambda: labelstudio.stop(settings))
    try:
        start_from_template(
            f"prefect-{prefect.__version__}",
            prefect_server.prefect_home(settings),
            lambda: prefect_server.start_server(settings),
            lambda: prefect_server.stop(settings, "server"),
        )
        info = prefect_server.status(settings)["server"]
        assert info.running and info.url.startswith("http://127.0.0.1:")
        # Loopback only: every listening socket on the port is 127.0.0.1 (issue #10, part 5).
        assert listening_addresses(settings.prefect_port) == {"127.0.0.1"}
        names = prefect_server.deploy(settings)
        assert "nightly" in names
        api = prefect_server.api_url(settings)
        found = httpx.post(f"{api}/deployments/filter", json={}, timeout=30).json()
        by_name = {d["name"]: d for d in found}
        assert set(names) <= set(by_name)
        schedules = by_name["nightly"]["schedules"]
        assert schedules[0]["schedule"]["cron"] == "30 1 * * *"
        assert schedules[0]["schedule"]["timezone"] == "Asia/Shanghai"
        assert by_name["build-dataset"]["work_pool_name"] == "slm-test-pool"
        assert prefect_server.status(settings)["worker"].running

        start_from_template(
            f"labelstudio-{settings.labelstudio_version}",
            labelstudio.data_dir(settings),
            lambda: labelstudio.start(settings),
            lambda: labelstudio.stop(settings),
        )
        run = httpx.post(
            f"{api}/deployments/{by_name['build-dataset']['id']}/create_flow_run",
            json={"parameters": {"paths": [str(SAMPLE_MD)], "workspace": str(workspace)}},
            timeout=30,
        ).json()
        state = _wait_for_state(api, run["id"], "PAUSED", 420)
        assert state == "PAUSED", _worker_log(settings)
        batch = _batch_of(settings, run["id"])
        _annotate_all(settings, batch)  # Label Studio's webhook then resumes the run in the worker
        state = _wait_for_state(api, run["id"], "COMPLETED", 300)
        assert state == "COMPLETED", _worker_log(settings)
        with open_warehouse(settings.warehouse_path, read_only=True) as con:
            datasets = con.execute("SELECT count(*) FROM datasets").fetchone()[0]
            by_person, by_ledger, waiting = con.execute(
                "SELECT count(*) FILTER (WHERE reviewer LIKE '%@%' AND reviewer NOT LIKE 'ledger:%'),"
                " count(*) FILTER (WHERE reviewer LIKE 'ledger:%@%'),"
                " count(*) FILTER (WHERE status = 'needs_review') FROM qa_rows"
            ).fetchone()
            row_tasks = con.execute(
                "SELECT count(*) FROM review_tasks WHERE batch_id = ? AND coalesce(kind, 'row') = 'row'",
                [batch["batch_id"]],
            ).fetchone()[0]
        # Every row task was decided by the person, every other waiting row by the facts the person verified.
        assert datasets == 1 and by_person == row_tasks and by_ledger > 0 and waiting == 0
    finally:
        labelstudio.stop(settings)
        prefect_server.stop(settings, "worker")
        prefect_server.stop(settings, "server")
    assert not prefect_server.status(settings)["server"].running


def _batch_of(settings: Any, flow_run_id: str) -> dict[str, Any]:
    with open_warehouse(settings.warehouse_path, read_only=True) as con:
        batches = [b for b in review_queries.list_batches(con) if b.get("flow_run_id") == flow_run_id]
    assert len(batches) == 1
    return batches[0]


def _annotate_all(settings: Any, batch: dict[str, Any]) -> None:
    """A careful reviewer: confirms every fact task (the ledger's numbers of the sample are right), accepts
    the row tasks whose numbers the ledger backs and rejects the others (accepting those would fail the
    release gate, which wants every numeric row grounded)."""
    client = labelstudio.client_for(settings)
    tasks = list(client.tasks.list(project=batch["ls_project_id"], fields="all"))
    assert len(tasks) == batch["row_count"] > 4
    with open_warehouse(settings.warehouse_path, read_only=True) as con:
        grounded = dict(con.execute("SELECT row_id, grounded OR NOT is_numeric FROM qa_rows").fetchall())
    kinds = set()
    for task in tasks:
        row_id = task.data.get("row_id")
        kinds.add("row" if row_id else "fact")
        verdict = "accept" if row_id is None or grounded[row_id] else "reject"
        client.annotations.create(id=task.id, result=_result(verdict))
    assert "fact" in kinds  # fact-first review: the batch asks about ledger facts, not every row


def _worker_log(settings: Any) -> str:
    log = prefect_server.prefect_home(settings) / "worker.log"
    return log.read_text(encoding="utf-8", errors="replace")[-3000:] if log.exists() else "(no worker log)"
