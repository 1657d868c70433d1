"""A real Prefect server on loopback: deploy from prefect.yaml and read the nightly schedule back."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest

from deployments import server as prefect_server
from tasks.config import load_settings
from tests.reliability.scenarios_security import listening_addresses


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_deploy_and_read_back_the_nightly_schedule(tmp_path: Path) -> None:
    settings = load_settings(
        tmp_path / "ws", prefect_port=_free_port(), nightly_cron="30 1 * * *", timezone="Asia/Shanghai",
        work_pool="slm-test-pool",
    )
    try:
        info = prefect_server.start_server(settings)
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
    finally:
        prefect_server.stop(settings, "worker")
        prefect_server.stop(settings, "server")
    assert not prefect_server.status(settings)["server"].running
