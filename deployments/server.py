"""Our Prefect server and worker: on ``bind_host`` (127.0.0.1; another address only with allow_remote_bind),
SQLite under the workspace, analytics off; started and stopped by `slm server up|down|status` together with
Label Studio, and `slm deploy` registers the flows."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from runtime import netbind
from runtime.config import Settings

PROJECT_DIR = Path(__file__).resolve().parents[1]
PREFECT_YAML = Path(__file__).resolve().parent / "prefect.yaml"


class PrefectServerError(RuntimeError):
    """Our Prefect server or worker could not be started; the message says why and where the log is."""


@dataclass(frozen=True)
class ServiceInfo:
    name: str
    running: bool
    pid: int | None
    url: str | None
    log: Path


def prefect_home(settings: Settings) -> Path:
    return (settings.workspace / "prefect").resolve()


def api_url(settings: Settings) -> str:
    return f"http://{netbind.url_host(settings.bind_host)}:{settings.prefect_port}/api"


def prefect_env(settings: Settings, with_api: bool = True) -> dict[str, str]:
    """The environment our Prefect processes run with (and the one `slm` uses when the server is up)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        {
            "PREFECT_HOME": str(prefect_home(settings)),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_API_HOST": settings.bind_host,
            "PREFECT_SERVER_API_PORT": str(settings.prefect_port),
            "PREFECT_UI_API_URL": api_url(settings),
            "SLM_WORKSPACE": str(settings.workspace.resolve()),
        }
    )
    if with_api:
        env["PREFECT_API_URL"] = api_url(settings)
    return env


def _pid_file(settings: Settings, name: str) -> Path:
    return prefect_home(settings) / f"{name}.pid"


def _log_file(settings: Settings, name: str) -> Path:
    return prefect_home(settings) / f"{name}.log"


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _read_pid(settings: Settings, name: str) -> int | None:
    path = _pid_file(settings, name)
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _healthy(settings: Settings) -> bool:
    try:
        return httpx.get(api_url(settings) + "/health", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def _prefect_cli() -> list[str]:
    executable = Path(sys.executable).with_name("prefect")
    return [str(executable)] if executable.exists() else [shutil.which("prefect") or "prefect"]


def _spawn(settings: Settings, name: str, args: list[str]) -> int:
    home = prefect_home(settings)
    home.mkdir(parents=True, exist_ok=True)
    log = _log_file(settings, name).open("ab")
    env = prefect_env(settings, with_api=name != "server")
    if name == "worker":
        # Flow runs inherit the worker's environment. A run paused for review waits days; Prefect's client
        # gives up on a server it cannot reach after 5 retries (about a minute), which would crash the run if
        # the server restarts. 10 exponential retries ride out a restart of up to about half an hour.
        env["PREFECT_CLIENT_MAX_RETRIES"] = "10"
    process = subprocess.Popen(
        args,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=PROJECT_DIR,
        start_new_session=True,  # outlives this command
    )
    _pid_file(settings, name).write_text(str(process.pid))
    return process.pid


def start_server(settings: Settings, timeout_s: float = 120.0) -> ServiceInfo:
    """Start the Prefect server on ``bind_host`` (idempotent) and wait until its API answers. A non-loopback
    address without ``allow_remote_bind`` is refused (``netbind.RemoteBindRefused``) before anything starts."""
    host = netbind.bind_host(settings, "the Prefect server")
    pid = _read_pid(settings, "server")
    if _alive(pid) and _healthy(settings):
        return status(settings)["server"]
    target = netbind.connect_host(host)
    with socket.socket(netbind.family(target)) as probe:
        if probe.connect_ex((target, settings.prefect_port)) == 0:
            raise PrefectServerError(
                f"port {settings.prefect_port} on {host} is already in use; choose another with prefect_port"
            )
    pid = _spawn(
        settings,
        "server",
        [*_prefect_cli(), "server", "start", "--host", host, "--port", str(settings.prefect_port)],
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _healthy(settings):
            return status(settings)["server"]
        if not _alive(pid):
            break
        time.sleep(1.0)
    raise PrefectServerError(
        f"Prefect server did not answer on {api_url(settings)}; see {_log_file(settings, 'server')}"
    )


def deploy(settings: Settings) -> list[str]:
    """Register every deployment of prefect.yaml against our server, create the work pool if missing, and
    start a worker for it. Returns the deployment names."""
    env = prefect_env(settings)
    env.update(
        {
            "SLM_PROJECT_DIR": str(PROJECT_DIR),
            "SLM_WORK_POOL": settings.work_pool,
            "SLM_NIGHTLY_CRON": settings.nightly_cron,
            "SLM_TIMEZONE": settings.timezone,
        }
    )
    cli = _prefect_cli()
    subprocess.run(
        [*cli, "work-pool", "create", settings.work_pool, "--type", "process", "--overwrite"],
        env=env,
        cwd=PROJECT_DIR,
        check=True,
        capture_output=True,
        timeout=120,
    )
    done = subprocess.run(
        [*cli, "--no-prompt", "deploy", "--all", "--prefect-file", str(PREFECT_YAML)],
        env=env,
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        raise PrefectServerError(f"prefect deploy failed: {done.stdout[-800:]} {done.stderr[-800:]}")
    if not _alive(_read_pid(settings, "worker")):
        _spawn(settings, "worker", [*cli, "worker", "start", "--pool", settings.work_pool])
    return ["build-dataset", "train-and-evaluate", "export", "nightly"]


def stop(settings: Settings, name: str, timeout_s: float = 20.0) -> bool:
    pid = _read_pid(settings, name)
    if not _alive(pid):
        _pid_file(settings, name).unlink(missing_ok=True)
        return False
    assert pid is not None
    try:
        os.killpg(pid, signal.SIGTERM)
    except OSError:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.3)
    if _alive(pid):
        os.killpg(pid, signal.SIGKILL)
    _pid_file(settings, name).unlink(missing_ok=True)
    return True


def status(settings: Settings) -> dict[str, ServiceInfo]:
    server_pid, worker_pid = _read_pid(settings, "server"), _read_pid(settings, "worker")
    return {
        "server": ServiceInfo(
            "prefect server",
            _alive(server_pid) and _healthy(settings),
            server_pid,
            api_url(settings).removesuffix("/api"),
            _log_file(settings, "server"),
        ),
        "worker": ServiceInfo(
            "prefect worker", _alive(worker_pid), worker_pid, None, _log_file(settings, "worker")
        ),
    }
