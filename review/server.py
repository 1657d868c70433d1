"""Label Studio as a real server that we run: install, start, stop, status, and a client for it.

Label Studio cannot share a virtual environment with Prefect (python-json-logger pins clash), so the server
lives in its own venv (default ``~/.cache/slm-factory/labelstudio-venv``, about 1 GB) and we talk to it over
HTTP with ``label-studio-sdk``. The server binds 127.0.0.1 only and keeps its data (SQLite) under
``<workspace>/labelstudio``, next to:

- ``credentials.json`` (mode 0600): the admin user, password and API token generated on first start. It sits
  with the data because the token is only valid for that database: deleting the folder resets both. An
  explicit ``labelstudio_token`` setting (secrets file or environment) wins for an external server.
- ``server.pid`` (JSON: pid, port) and ``server.log`` (the server's stdout and stderr).

Secrets reach the server through its environment, never its command line, and are never printed or logged.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import httpx
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from runtime import netbind, supervisor
from runtime.config import Settings

LS_VERSION = "1.23.2"
DEFAULT_VENV = Path.home() / ".cache" / "slm-factory" / "labelstudio-venv"
DEFAULT_PORT = 8089
HOST = "127.0.0.1"  # the default of the bind_host setting (runtime/netbind.py)
# Environment variables of ours that the server must not inherit (it needs none of our keys).
_SECRET_ENV = ("GEMINI_API_KEYS", "OPENAI_API_KEY", "PREFECT_API_KEY")
T = TypeVar("T")
_LISTEN_URL = re.compile(r"http://(?:\[[^\]]*\]|[^:/\s\[]+):(\d+)")  # the port in "... at http://host:port/"


class LabelStudioError(RuntimeError):
    """The Label Studio server cannot be installed, started or reached; the message says what to do."""


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str
    token: str

    def __repr__(self) -> str:  # never show the secrets, even in a traceback's locals
        return f"Credentials(username={self.username!r}, password='********', token='********')"


@dataclass(frozen=True)
class ServerInfo:
    url: str
    port: int
    pid: int | None
    data_dir: Path
    log_path: Path
    running: bool
    started_now: bool = False  # False when start() found it already running
    startup_s: float = 0.0


def option(settings: Settings, name: str, default: Any) -> Any:
    """A review setting, or its default while the Settings field does not exist yet."""
    value = getattr(settings, name, None)
    return default if value is None else value


def venv_dir(settings: Settings) -> Path:
    return Path(option(settings, "labelstudio_venv", DEFAULT_VENV)).expanduser()


def data_dir(settings: Settings) -> Path:
    return settings.workspace / "labelstudio"


def log_path(settings: Settings) -> Path:
    return data_dir(settings) / "server.log"


def pid_path(settings: Settings) -> Path:
    return data_dir(settings) / "server.pid"


def credentials_path(settings: Settings) -> Path:
    return data_dir(settings) / "credentials.json"


def install_log_path(settings: Settings) -> Path:
    return venv_dir(settings).parent / "labelstudio-install.log"


def port(settings: Settings) -> int:
    return int(option(settings, "labelstudio_port", DEFAULT_PORT))


def local_url(settings: Settings, p: int | None = None) -> str:
    """Our own server's URL on this machine (``bind_host``, wildcards reached through loopback)."""
    host = netbind.url_host(str(option(settings, "bind_host", HOST)))
    return f"http://{host}:{port(settings) if p is None else p}"


def base_url(settings: Settings) -> str:
    return str(option(settings, "labelstudio_url", None) or local_url(settings)).rstrip("/")


# ---------------------------------------------------------------------------------------------------------
# Installation


def is_installed(settings: Settings) -> bool:
    """Whether the venv has the wanted label-studio (pip writes the dist-info last, so a broken install
    is not taken for a finished one)."""
    venv = venv_dir(settings)
    version = str(option(settings, "labelstudio_version", LS_VERSION))
    dist = list(venv.glob(f"lib/python3*/site-packages/label_studio-{version}.dist-info/RECORD"))
    return (venv / "bin" / "label-studio").exists() and bool(dist)


def ensure_installed(settings: Settings, on_progress: Callable[[str], None] | None = None) -> Path:
    """Create the server's venv and ``pip install label-studio==<version>`` unless already done; returns
    the venv folder. Idempotent; takes minutes and about 1 GB the first time (pip output goes to
    ``install_log_path``). A file lock keeps two processes from installing at once."""
    venv = venv_dir(settings)
    version = str(option(settings, "labelstudio_version", LS_VERSION))
    say = on_progress or (lambda _msg: None)
    if is_installed(settings):
        return venv
    venv.parent.mkdir(parents=True, exist_ok=True)
    log = install_log_path(settings)
    with open(venv.parent / "labelstudio-install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second installer waits here, then finds the work done
        if is_installed(settings):
            return venv
        started = time.monotonic()
        with open(log, "a", encoding="utf-8") as out:
            if not (venv / "bin" / "python").exists():
                say(f"creating {venv}")
                _run_logged([sys.executable, "-m", "venv", str(venv)], out)
            say(f"installing label-studio=={version} into {venv} (minutes, ~1 GB); log: {log}")
            proc = subprocess.Popen(
                [
                    str(venv / "bin" / "pip"),
                    "install",
                    "--disable-pip-version-check",
                    f"label-studio=={version}",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            assert proc.stdout is not None
            for line in proc.stdout:
                out.write(line)
                if line.startswith(("Collecting", "Installing collected", "Successfully")):
                    say(line.strip()[:120])
            if proc.wait() != 0:
                raise LabelStudioError(f"pip install label-studio=={version} failed; see {log}")
        say(f"label-studio {version} installed in {time.monotonic() - started:.0f} s")
    return venv


def _run_logged(cmd: list[str], out: Any) -> None:
    if subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=False).returncode != 0:
        raise LabelStudioError(f"{' '.join(cmd)} failed; see {out.name}")


# ---------------------------------------------------------------------------------------------------------
# Credentials


def load_credentials(settings: Settings, create: bool = False) -> Credentials | None:
    """The generated admin credentials (``None`` when there are none and ``create`` is false)."""
    path = credentials_path(settings)
    if path.is_file():
        if path.stat().st_mode & 0o077:
            raise LabelStudioError(f"{path}: credentials are readable by others; run `chmod 600 {path}`")
        data = json.loads(path.read_text(encoding="utf-8"))
        return Credentials(data["username"], data["password"], data["token"])
    if not create:
        return None
    creds = Credentials("admin@slm-factory.local", secrets.token_urlsafe(18), secrets.token_hex(20))
    path.parent.mkdir(parents=True, exist_ok=True)
    # O_EXCL + mode: the file never exists, even for an instant, with wider permissions.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump({"username": creds.username, "password": creds.password, "token": creds.token}, fh)
    return creds


def api_token(settings: Settings) -> str:
    """The token for the API: the ``labelstudio_token`` setting, else the generated one."""
    if settings.labelstudio_token is not None and settings.labelstudio_token.get_secret_value():
        return settings.labelstudio_token.get_secret_value()
    creds = load_credentials(settings)
    if creds is None:
        raise LabelStudioError(
            f"no Label Studio token: start the server (`slm review up`) or set labelstudio_token"
            f" in {settings.workspace / 'secrets.toml'}"
        )
    return creds.token


def client_for(settings: Settings, timeout_s: float = 60.0) -> Any:
    """A ``label_studio_sdk.LabelStudio`` client for the configured server."""
    from label_studio_sdk import LabelStudio

    return LabelStudio(base_url=base_url(settings), api_key=api_token(settings), timeout=timeout_s)


# ---------------------------------------------------------------------------------------------------------
# Retries: Label Studio restarting or briefly down must cost a wait, not an error (nor a lost annotation).


def transient(exc: BaseException) -> bool:
    """Connection failures, timeouts and 5xx/429 answers are worth retrying; a 4xx is our mistake."""
    if isinstance(exc, httpx.TransportError):
        return True
    code = getattr(exc, "status_code", None)
    return isinstance(code, int) and (code >= 500 or code == 429)


def retrying(settings: Settings) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """A decorator retrying Label Studio calls with exponential backoff: ``retrying(settings)(fn)(*args)``."""
    return Retrying(
        retry=retry_if_exception(transient),
        stop=stop_after_attempt(int(option(settings, "labelstudio_attempts", 5))),
        wait=wait_exponential(multiplier=float(option(settings, "labelstudio_backoff_s", 1.0)), max=30),
        reraise=True,
    ).wraps


# ---------------------------------------------------------------------------------------------------------
# Process control (runtime/supervisor.py: pid file, detached start, health wait, stop of the process group)


def free_port() -> int:
    """A free loopback port (tests and the webhook receiver)."""
    return supervisor.free_port(HOST)


def healthy(url: str, timeout_s: float = 3.0) -> bool:
    return supervisor.healthy(f"{url}/health", timeout_s)


def _service(settings: Settings, p: int | None = None) -> supervisor.Service:
    """Our server as the supervisor sees it, answering on port ``p`` (default: the port in the pid file,
    else the configured one)."""
    service = supervisor.Service(
        "Label Studio", pid_path(settings), log_path(settings), markers=("label-studio", "label_studio")
    )
    if p is None:
        record = service.record()
        p = record.port if record is not None and record.port else port(settings)
    return replace(service, health_url=f"{local_url(settings, p)}/health")


def status(settings: Settings) -> ServerInfo:
    """Whether our server is running (pid alive and ``/health`` answering on its port)."""
    now = _service(settings).status()
    p = now.port or port(settings)
    return ServerInfo(local_url(settings, p), p, now.pid, data_dir(settings), log_path(settings), now.running)


def _server_env(settings: Settings, creds: Credentials) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLM_") and k not in _SECRET_ENV}
    env.update(
        {
            "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir(settings).resolve()),
            "LABEL_STUDIO_USERNAME": creds.username,
            "LABEL_STUDIO_PASSWORD": creds.password,
            "LABEL_STUDIO_USER_TOKEN": creds.token,
            "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",  # else the token above gets 401
            "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
            "SSRF_PROTECTION_ENABLED": "false",  # webhooks go to our receiver on 127.0.0.1
            "LATEST_VERSION_CHECK": "false",
            "SENTRY_DSN": "",
            "FRONTEND_SENTRY_DSN": "",
            "COLLECT_ANALYTICS": "false",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.pop("VIRTUAL_ENV", None)
    return env


def _not_answering(pid: int | None, current: ServerInfo) -> LabelStudioError:
    return LabelStudioError(
        f"a Label Studio process (pid {pid}) of this workspace is running but not answering on"
        f" {current.url}; run `slm review server stop` first (log: {current.log_path})"
    )


def start(settings: Settings, on_progress: Callable[[str], None] | None = None) -> ServerInfo:
    """Start the server detached (it outlives this process) and wait for ``/health`` on the asked port.

    Idempotent: a server of this workspace already running is returned as is. Fails clearly when the port
    is taken: Label Studio would otherwise silently pick another port (unless --debug).
    """
    say = on_progress or (lambda _msg: None)
    host = netbind.bind_host(settings, "Label Studio")  # refuses a non-loopback address before anything
    current = status(settings)
    if current.running:
        return current
    if current.pid and _service(settings).owns(current.pid):
        raise _not_answering(current.pid, current)
    p = port(settings)
    url = local_url(settings, p)
    data = data_dir(settings)
    hide: list[str] = []  # the generated secrets, masked in the log tail of an error

    def launch() -> supervisor.Launch:  # after the port check: a busy port fails before a long install
        venv = ensure_installed(settings, say)
        creds = load_credentials(settings, create=True)
        assert creds is not None
        hide.extend((creds.password, creds.token))
        data.mkdir(parents=True, exist_ok=True)
        say(f"starting Label Studio on {url} (first start ~1 min: migrations); log: {log_path(settings)}")
        cmd = [str(venv / "bin" / "label-studio"), "start", "--no-browser", "--internal-host", host]
        return supervisor.Launch([*cmd, "--port", str(p)], env=_server_env(settings, creds), cwd=data)

    def watch() -> None:
        if _port_moved(settings, p):
            raise LabelStudioError(
                f"Label Studio did not get port {p} (taken while it started) and chose another; choose a free"
                " port with labelstudio_port"
            )

    service = _service(settings, p)
    timeout_s = float(option(settings, "labelstudio_start_timeout_s", 240.0))
    try:
        started = service.start(launch, timeout_s=timeout_s, port=p, host=host, watch=watch)
    except supervisor.PortInUse:
        raise LabelStudioError(
            f"port {p} on {host} is already in use; choose another with labelstudio_port (SLM_LABELSTUDIO_PORT)"
        ) from None
    except supervisor.NotAnswering as exc:
        raise _not_answering(exc.pid, current) from None
    except supervisor.ExitedEarly as exc:
        raise LabelStudioError(
            f"Label Studio exited (code {exc.returncode}) while starting on port {p}; see"
            f" {log_path(settings)}:\n{service.log_tail(hide=hide)}"
        ) from None
    except supervisor.StartTimeout:
        raise LabelStudioError(
            f"Label Studio did not answer {url}/health within the start timeout; see {log_path(settings)}:\n"
            f"{service.log_tail(hide=hide)}"
        ) from None
    say(f"Label Studio is up on {url} after {started.startup_s:.0f} s")
    return ServerInfo(url, p, started.pid, data, log_path(settings), True, True, started.startup_s)


def _port_moved(settings: Settings, asked: int) -> bool:
    """Whether the log says the server is listening on a port other than the one asked for."""
    try:
        text = log_path(settings).read_text(encoding="utf-8", errors="replace")[-20000:]
    except OSError:
        return False
    if f"Port {asked} is in use" in text:
        return True
    for line in text.splitlines():
        if "Starting development server at" in line or "Listening at" in line:
            found = _LISTEN_URL.search(line)
            if found and int(found.group(1)) != asked:
                return True
    return False


def stop(settings: Settings, timeout_s: float = 30.0) -> bool:
    """Stop the server of this workspace (SIGTERM to its process group, SIGKILL after ``timeout_s``).

    Returns whether a running server was stopped."""
    return _service(settings).stop(timeout_s)
