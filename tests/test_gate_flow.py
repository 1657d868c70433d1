"""The gate as a Prefect task: a failing gate fails the flow with its message and publishes an artifact."""

from __future__ import annotations

import asyncio

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.testing.utilities import prefect_test_harness

from flows.gates import GateFailed, gate_task
from runtime.config import Settings
from tasks.distill.distill import distill, make_teacher
from tasks.ingest.documents import ingest_file
from tests.conftest import SAMPLE_PDF
from warehouse.db import open_warehouse


@pytest.fixture(scope="module")
def prefect_server():
    with prefect_test_harness(server_startup_timeout=120):
        yield


@flow(name="gate-only")
def gate_flow(settings: Settings, gate: str) -> dict:
    return gate_task(settings, gate)


def test_failing_gate_fails_the_flow_and_publishes_the_report(prefect_server, settings: Settings) -> None:
    with open_warehouse(settings.warehouse_path) as con:
        ingest_file(con, SAMPLE_PDF, settings)
        distill(con, settings, make_teacher(settings))
    passed = gate_flow(settings, "pre_review")
    assert passed["success"]
    with pytest.raises(GateFailed, match=r"gate release failed: .*none pending review"):
        gate_flow(settings, "release")

    async def artifacts():
        async with get_client() as client:
            return await client.read_artifacts()

    found = {a.key: a for a in asyncio.run(artifacts())}
    assert "gate-release" in found and "FAILED" in found["gate-release"].data
    assert "gate-pre-review" in found and "Review policy" in found["gate-pre-review"].data
