"""Our Prefect server and worker: on ``bind_host`` (127.0.0.1; another address only with allow_remote_bind),
SQLite under the workspace, analytics off; started and stopped by `slm server up|down|status` together with
Label Studio, and `slm deploy` registers the flows."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from runtime import netbind, supervisor
from runtime.config import Settings

PROJECT_DIR = Path(__file__).resolve().parents[1]
PREFECT_YAML = Path(__file__).resolve().parent / "prefect.yaml"
WORKERS = ("worker", "worker-gpu")  # the CPU (or only) pool's worker, and the GPU pool's


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


def _service(settings: Settings, name: str) -> supervisor.Service:
    """The server (health: the API's /health) or a worker (alive is running) as the supervisor sees it."""
    home = prefect_home(settings)
    health = api_url(settings) + "/health" if name == "server" else None
    return supervisor.Service(
        f"prefect {name}", home / f"{name}.pid", home / f"{name}.log", health, ("prefect",), 2.0
    )


def _prefect_cli() -> list[str]:
    executable = Path(sys.executable).with_name("prefect")
    return [str(executable)] if executable.exists() else [shutil.which("prefect") or "prefect"]


def _launch(settings: Settings, name: str, args: list[str]) -> supervisor.Launch:
    env = prefect_env(settings, with_api=name != "server")
    if name in WORKERS:
        # Flow runs inherit the worker's environment. A run paused for review waits days; Prefect's client
        # gives up on a server it cannot reach after 5 retries (about a minute), which would crash the run if
        # the server restarts. 10 exponential retries ride out a restart of up to about half an hour.
        env["PREFECT_CLIENT_MAX_RETRIES"] = "10"
    return supervisor.Launch(args, env=env, cwd=PROJECT_DIR)


def start_server(settings: Settings, timeout_s: float = 120.0) -> ServiceInfo:
    """Start the Prefect server on ``bind_host`` (idempotent) and wait until its API answers. A non-loopback
    address without ``allow_remote_bind`` is refused (``netbind.RemoteBindRefused``) before anything starts."""
    host = netbind.bind_host(settings, "the Prefect server")
    args = [*_prefect_cli(), "server", "start", "--host", host, "--port", str(settings.prefect_port)]
    service = _service(settings, "server")
    try:
        service.start(
            _launch(settings, "server", args), timeout_s=timeout_s, port=settings.prefect_port, host=host
        )
    except supervisor.PortInUse:
        raise PrefectServerError(
            f"port {settings.prefect_port} on {host} is already in use; choose another with prefect_port"
        ) from None
    except supervisor.NotAnswering as exc:
        raise PrefectServerError(
            f"a Prefect server (pid {exc.pid}) of this workspace is running but not answering on"
            f" {api_url(settings)}; run `slm server down` first (log: {service.log_file})"
        ) from None
    except supervisor.SupervisorError:  # exited, or no answer in time (then stopped, not left behind)
        raise PrefectServerError(
            f"Prefect server did not answer on {api_url(settings)}; see {service.log_file}"
        ) from None
    return status(settings)["server"]


@dataclass(frozen=True)
class GitSource:
    """Where a worker's pull step clones the project from, and at which commit."""

    repository: str
    commit: str


def git_source(settings: Settings) -> GitSource:
    """``deploy_repository`` and ``deploy_commit``, or this checkout (a file:// URL) and its HEAD. Flow runs
    use the committed code: an uncommitted change is not in the clone."""
    repository = settings.deploy_repository or PROJECT_DIR.as_uri()
    commit = settings.deploy_commit
    if commit is None:
        found = subprocess.run(
            ["git", "rev-parse", "--verify", "HEAD^{commit}"],
            cwd=PROJECT_DIR,
            capture_output=True,
            text=True,
            timeout=30,
        )
        if found.returncode != 0:
            raise PrefectServerError(
                f"{PROJECT_DIR} is not a git checkout with a commit, which the workers' pull step clones;"
                " set deploy_repository and deploy_commit"
            )
        commit = found.stdout.strip()
    return GitSource(repository, commit)


def pools(settings: Settings, pool_per_stage: bool) -> dict[str, str]:
    """Worker service name -> work pool: one pool for all, or the CPU pool and the GPU pool."""
    if pool_per_stage:
        return {"worker": settings.work_pool, "worker-gpu": settings.gpu_work_pool}
    return {"worker": settings.work_pool}


def deployment_names() -> list[str]:
    import yaml

    return [d["name"] for d in yaml.safe_load(PREFECT_YAML.read_text(encoding="utf-8"))["deployments"]]


def deploy(settings: Settings, pool_per_stage: bool = False) -> list[str]:
    """Register every deployment of prefect.yaml against our server, create the work pools if missing, and
    start a worker for each (supervised, in the background; `slm server down` stops them). Each flow run
    clones the project at the deployed commit (``git_source``). With ``pool_per_stage`` the GPU stages go to
    ``gpu_work_pool``, else everything to ``work_pool``. Returns the deployment names."""
    source = git_source(settings)
    by_worker = pools(settings, pool_per_stage)
    env = prefect_env(settings)
    env.update(
        {
            "SLM_PROJECT_DIR": str(PROJECT_DIR),
            "SLM_CPU_POOL": settings.work_pool,
            "SLM_GPU_POOL": by_worker.get("worker-gpu", settings.work_pool),
            "SLM_GIT_REPOSITORY": source.repository,
            "SLM_GIT_COMMIT": source.commit,
            "SLM_NIGHTLY_CRON": settings.nightly_cron,
            "SLM_TIMEZONE": settings.timezone,
        }
    )
    cli = _prefect_cli()
    for pool in dict.fromkeys(by_worker.values()):
        subprocess.run(
            [*cli, "work-pool", "create", pool, "--type", "process", "--overwrite"],
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
    for name, pool in by_worker.items():
        worker = _service(settings, name)
        if not worker.status().running:
            worker.spawn(_launch(settings, name, [*cli, "worker", "start", "--pool", pool]))
    return deployment_names()


def stop(settings: Settings, name: str, timeout_s: float = 20.0) -> bool:
    """Stop the server or a worker: SIGTERM to its process group, SIGKILL after ``timeout_s``."""
    return _service(settings, name).stop(timeout_s)


def status(settings: Settings) -> dict[str, ServiceInfo]:
    found = {}
    for name in ("server", *WORKERS):
        service = _service(settings, name)
        now = service.status()
        url = api_url(settings).removesuffix("/api") if name == "server" else None
        found[name] = ServiceInfo(service.name, now.running, now.pid, url, service.log_file)
    return found
