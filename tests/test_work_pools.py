"""Work pools that split the work (issue #20, part 3): `slm deploy --pool-per-stage` registers the CPU pool
(ingest, distil, gates, review) and the GPU pool (train-and-evaluate, export, device-check) on a real Prefect
server, each served by its own local worker; every deployment clones the project at the deployed commit.
A small flow on each pool runs through that pool's worker, from the clone, and completes."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from uuid import UUID

import prefect
import pytest
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.client.schemas.objects import FlowRun
from prefect.settings import PREFECT_API_URL, temporary_settings

from deployments import server as prefect_server
from runtime.config import load_settings
from runtime.supervisor import free_port
from tests.conftest import ROOT, SAMPLE_MD
from tests.reliability.scenarios_deps import start_from_template
from warehouse.db import open_warehouse

CPU_STAGES = {"build-dataset", "ingest", "distill", "gate"}
GPU_STAGES = {"train-and-evaluate", "export", "nightly", "device-check"}


def _finished(client: SyncPrefectClient, run_ids: list[UUID], timeout_s: float) -> dict[UUID, FlowRun]:
    """The flow runs once none is scheduled, pending or running any more (or at the timeout)."""
    deadline = time.monotonic() + timeout_s
    while True:
        runs = {r: client.read_flow_run(r) for r in run_ids}
        if all(run.state is not None and run.state.is_final() for run in runs.values()):
            return runs
        if time.monotonic() > deadline:
            return runs
        time.sleep(2.0)


def _run_logs(client: SyncPrefectClient, run_id: UUID) -> str:
    logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])), limit=200)
    return "\n".join(entry.message for entry in logs)


def _logged_line(client: SyncPrefectClient, run_id: UUID, prefix: str, timeout_s: float = 30.0) -> str:
    """The first line of the run's logs that starts with ``prefix`` (logs reach the server shortly after)."""
    deadline = time.monotonic() + timeout_s
    while True:
        logs = _run_logs(client, run_id)
        found = [line for line in logs.splitlines() if line.startswith(prefix)]
        if found:
            return found[0]
        assert time.monotonic() < deadline, f"no {prefix!r} line in the logs of {run_id}:\n{logs}"
        time.sleep(1.0)


@pytest.mark.slow
def test_pool_per_stage_runs_a_flow_on_each_pool_through_its_own_worker(tmp_path: Path, stop_later) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "slm.toml").write_text(
        f"prefect_port = {free_port()}\nwork_pool = 'slm-test-cpu'\ngpu_work_pool = 'slm-test-gpu'\n",
        encoding="utf-8",
    )
    settings = load_settings(workspace)
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    # Registered before anything starts: whatever fails, nothing this test started outlives it.
    stop_later(lambda: prefect_server.stop(settings, "server"))
    for worker in prefect_server.WORKERS:
        stop_later(lambda worker=worker: prefect_server.stop(settings, worker))
    start_from_template(
        f"prefect-{prefect.__version__}",
        prefect_server.prefect_home(settings),
        lambda: prefect_server.start_server(settings),
        lambda: prefect_server.stop(settings, "server"),
    )
    names = prefect_server.deploy(settings, pool_per_stage=True)
    assert set(names) == CPU_STAGES | GPU_STAGES
    # Prefect's own client, as users' tools talk to the server: it retries what the server says to retry (a
    # 503 while its SQLite database is locked under load), which a bare HTTP call would take for an answer.
    with (
        temporary_settings({PREFECT_API_URL: prefect_server.api_url(settings)}),
        get_client(sync_client=True) as client,
    ):
        for pool in ("slm-test-cpu", "slm-test-gpu"):
            assert client.read_work_pool(pool).type == "process"
        by_name = {d.name: d for d in client.read_deployments()}
        assert {n: by_name[n].work_pool_name for n in names} == {
            **dict.fromkeys(CPU_STAGES, "slm-test-cpu"),
            **dict.fromkeys(GPU_STAGES, "slm-test-gpu"),
        }
        # Every deployment clones this checkout at the commit it was deployed from.
        clone = (by_name["ingest"].pull_steps or [{}])[0]["prefect.deployments.steps.git_clone"]
        assert (clone["repository"], clone["commit_sha"]) == (ROOT.as_uri(), head)
        status = prefect_server.status(settings)
        assert status["worker"].running and status["worker-gpu"].running

        runs = {
            name: client.create_flow_run_from_deployment(by_name[name].id, parameters=params).id
            for name, params in {
                "ingest": {"paths": [str(SAMPLE_MD)], "workspace": str(workspace)},
                "device-check": {},
            }.items()
        }
        finished = _finished(client, list(runs.values()), 420)
        worker_logs = {
            w: status[w].log.read_text(encoding="utf-8", errors="replace") for w in prefect_server.WORKERS
        }
        for name, run_id in runs.items():
            state = finished[run_id].state
            assert state is not None and state.is_completed(), (name, _run_logs(client, run_id), worker_logs)
        # Each ran on its pool, picked up by that pool's worker and not the other's.
        assert finished[runs["ingest"]].work_pool_name == "slm-test-cpu"
        assert finished[runs["device-check"]].work_pool_name == "slm-test-gpu"
        ingest, check = str(runs["ingest"]), str(runs["device-check"])
        assert ingest in worker_logs["worker"] and ingest not in worker_logs["worker-gpu"]
        assert check in worker_logs["worker-gpu"] and check not in worker_logs["worker"]
        # The flow ran from the worker's clone of the project, not from this folder.
        flow_file = _logged_line(client, runs["device-check"], "flow_file: ")
    assert flow_file.endswith("flows/stages.py") and str(ROOT) not in flow_file
    with open_warehouse(settings.warehouse_path, read_only=True) as con:
        assert con.execute("SELECT count(*) FROM documents WHERE status = 'ok'").fetchone()[0] == 1

    for worker in prefect_server.WORKERS:
        assert prefect_server.stop(settings, worker)
    prefect_server.stop(settings, "server")
    assert not any(s.running for s in prefect_server.status(settings).values())
