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

import contextlib
import fcntl
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from runtime import netbind
from runtime.config import Settings

LS_VERSION = "1.23.2"
DEFAULT_VENV = Path.home() / ".cache" / "slm-factory" / "labelstudio-venv"
DEFAULT_PORT = 8089
HOST = "127.0.0.1"  # the default of the bind_host setting (runtime/netbind.py)
# Environment variables of ours that the server must not inherit (it needs none of our keys).
_SECRET_ENV = ("GEMINI_API_KEYS", "OPENAI_API_KEY", "PREFECT_API_KEY")
T = TypeVar("T")
_LISTEN_URL = re.compile(r"http://(?:\[[^\]]*\]|[^:/\s\[]+):(\d+)")  # the port in "... at http://host:port/"
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}  # servers started by this process, reaped on stop


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
# Process control


def _port_free(p: int, host: str = HOST) -> bool:
    """Whether a server could listen on ``host``:``p`` now. SO_REUSEADDR as the server itself sets it:
    connections in TIME_WAIT after a stop do not count, a listening socket does."""
    with socket.socket(netbind.family(host), socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, p))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A free loopback port (tests and the webhook receiver)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _alive(pid: int) -> bool:
    child = _CHILDREN.get(pid)
    if child is not None:
        return child.poll() is None  # also reaps it, so a dead child is not mistaken for a live zombie
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
            return False
    return True


def _is_label_studio(pid: int) -> bool:
    """Whether ``pid`` is still our server, not an unrelated process that reused the number."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return pid in _CHILDREN
    return b"label-studio" in cmdline or b"label_studio" in cmdline


def _read_pid(settings: Settings) -> dict[str, Any] | None:
    try:
        data = json.loads(pid_path(settings).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and "pid" in data else None


def healthy(url: str, timeout_s: float = 3.0) -> bool:
    try:
        response = httpx.get(f"{url}/health", timeout=timeout_s)
    except httpx.HTTPError:
        return False
    return response.status_code == 200


def status(settings: Settings) -> ServerInfo:
    """Whether our server is running (pid alive and ``/health`` answering on its port)."""
    record = _read_pid(settings)
    p = int(record["port"]) if record else port(settings)
    url = local_url(settings, p)
    pid = int(record["pid"]) if record else None
    running = bool(pid and _alive(pid) and _is_label_studio(pid) and healthy(url))
    return ServerInfo(url, p, pid, data_dir(settings), log_path(settings), running)


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


def _redact(text: str, creds: Credentials) -> str:
    for secret in (creds.password, creds.token):
        text = text.replace(secret, "********")
    return text


def _log_tail(settings: Settings, creds: Credentials, lines: int = 15) -> str:
    try:
        tail = log_path(settings).read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return _redact("\n".join(tail), creds)


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
    if current.pid and _alive(current.pid) and _is_label_studio(current.pid):
        raise LabelStudioError(
            f"a Label Studio process (pid {current.pid}) of this workspace is running but not answering on"
            f" {current.url}; run `slm review server stop` first (log: {current.log_path})"
        )
    p = port(settings)
    if not _port_free(p, host):
        raise LabelStudioError(
            f"port {p} on {host} is already in use; choose another with labelstudio_port (SLM_LABELSTUDIO_PORT)"
        )
    venv = ensure_installed(settings, say)
    creds = load_credentials(settings, create=True)
    assert creds is not None
    data = data_dir(settings)
    data.mkdir(parents=True, exist_ok=True)
    cmd = [
        str(venv / "bin" / "label-studio"),
        "start",
        "--no-browser",
        "--internal-host",
        host,
        "--port",
        str(p),
    ]
    started = time.monotonic()
    with open(log_path(settings), "ab") as log:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_server_env(settings, creds),
            cwd=str(data),
            start_new_session=True,  # detached: its own process group, not killed with our terminal
        )
    _CHILDREN[proc.pid] = proc
    pid_path(settings).write_text(json.dumps({"pid": proc.pid, "port": p, "started_at": time.time()}))
    url = local_url(settings, p)
    say(f"starting Label Studio on {url} (first start ~1 min: migrations); log: {log_path(settings)}")
    deadline = started + float(option(settings, "labelstudio_start_timeout_s", 240.0))
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pid_path(settings).unlink(missing_ok=True)
            raise LabelStudioError(
                f"Label Studio exited (code {proc.returncode}) while starting on port {p}; see"
                f" {log_path(settings)}:\n{_log_tail(settings, creds)}"
            )
        if _port_moved(settings, p):
            stop(settings)
            raise LabelStudioError(
                f"Label Studio did not get port {p} (taken while it started) and chose another; choose a free"
                " port with labelstudio_port"
            )
        if healthy(url, timeout_s=2.0):
            elapsed = time.monotonic() - started
            say(f"Label Studio is up on {url} after {elapsed:.0f} s")
            return ServerInfo(url, p, proc.pid, data, log_path(settings), True, True, elapsed)
        time.sleep(1.0)
    stop(settings)
    raise LabelStudioError(
        f"Label Studio did not answer {url}/health within the start timeout; see {log_path(settings)}:\n"
        f"{_log_tail(settings, creds)}"
    )


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
    record = _read_pid(settings)
    if not record:
        return False
    pid = int(record["pid"])
    if not (_alive(pid) and _is_label_studio(pid)):
        pid_path(settings).unlink(missing_ok=True)
        return False
    # start() made the server a session leader, so its group is exactly the server and its workers.
    try:
        group = os.getpgid(pid) == pid
    except ProcessLookupError:
        group = False
    _signal(pid, signal.SIGTERM, group)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.2)
    if _alive(pid):
        _signal(pid, signal.SIGKILL, group)
        while _alive(pid) and time.monotonic() < deadline + 5:
            time.sleep(0.1)
    _CHILDREN.pop(pid, None)
    pid_path(settings).unlink(missing_ok=True)
    return True


def _signal(pid: int, sig: signal.Signals, group: bool) -> None:
    with contextlib.suppress(ProcessLookupError):
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
