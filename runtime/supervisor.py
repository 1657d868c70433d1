"""One supervisor for the servers we run in the background (Label Studio, the Prefect server and worker, ...).

A :class:`Service` is a process started detached in its own session (so its process group is exactly it and
its children, and it outlives the command that started it), with

- a pid file (JSON: pid, port, started_at; a bare pid number from older versions is read too),
- a log file taking its stdout and stderr (appended to, across starts),
- optionally a health URL that answers 200 once it serves.

``start`` is idempotent (a running service is returned as is) and waits for health; a process that exits or
never answers is reported with the log file's path, and one that never answers is stopped, not left behind.
``stop`` sends SIGTERM to the whole process group (and to any descendant that left it), then SIGKILL after a
timeout, and waits until none of them is left.

Secrets reach a service only through :attr:`Launch.env`, which is never shown (``repr``), written to the pid
file or put into an error message; :meth:`Service.log_tail` can hide given strings from what it returns.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from runtime import netbind

HOST = "127.0.0.1"
# Processes started by this process: polling them reaps them, so a dead child is not taken for a live zombie.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


class SupervisorError(RuntimeError):
    """A service could not be started; the message names the service and its log file."""

    def __init__(
        self, message: str, service: Service, *, pid: int | None = None, returncode: int | None = None
    ) -> None:
        super().__init__(message)
        self.service = service
        self.pid = pid  # NotAnswering: the live process
        self.returncode = returncode  # ExitedEarly: its exit status


class PortInUse(SupervisorError):
    """Something else listens on the port the service was to take."""


class NotAnswering(SupervisorError):
    """A process of this service is alive (``pid``) but its health URL does not answer: stop it first."""


class ExitedEarly(SupervisorError):
    """The process exited (``returncode``) before it answered."""


class StartTimeout(SupervisorError):
    """The process did not answer its health URL in time; it has been stopped."""


@dataclass(frozen=True)
class Launch:
    """How to run a service: the command line carries no secret, the environment may."""

    command: Sequence[str]
    env: dict[str, str] | None = field(default=None, repr=False)  # None: this process's environment
    cwd: Path | None = None


@dataclass(frozen=True)
class PidRecord:
    pid: int
    port: int | None = None
    started_at: float | None = None


@dataclass(frozen=True)
class ServiceStatus:
    pid: int | None
    alive: bool  # the recorded process (ours, not one that reused the number) exists
    running: bool  # alive and its health URL answers (alive, for a service without one)
    port: int | None = None
    started_now: bool = False  # False when start() found it already running
    startup_s: float = 0.0


@dataclass(frozen=True)
class Service:
    name: str  # how messages call it: "Label Studio", "prefect server"
    pid_file: Path
    log_file: Path
    health_url: str | None = None  # a full URL (".../health"); None: alive counts as running
    # Substrings of the command line that tell our process from an unrelated one that reused its pid.
    markers: tuple[str, ...] = ()
    health_timeout_s: float = 3.0

    # -- state ------------------------------------------------------------------------------------------

    def record(self) -> PidRecord | None:
        try:
            text = self.pid_file.read_text().strip()
        except OSError:
            return None
        try:
            data = json.loads(text)
        except ValueError:
            return None
        # A bare pid: the Prefect pid files before this supervisor.
        if isinstance(data, int) and not isinstance(data, bool):
            return PidRecord(data)
        if not isinstance(data, dict) or not isinstance(data.get("pid"), int):
            return None
        port = data.get("port")
        started = data.get("started_at")
        return PidRecord(
            data["pid"],
            port if isinstance(port, int) else None,
            float(started) if isinstance(started, int | float) else None,
        )

    def owns(self, pid: int) -> bool:
        """Whether ``pid`` is alive and still this service's process."""
        if not alive(pid):
            return False
        # Our own unreaped child cannot have lost its pid to another process (and /proc may show an empty
        # command line for an instant after exec).
        if not self.markers or pid in _CHILDREN:
            return True
        cmdline = _cmdline(pid)  # empty without /proc: only what we started ourselves counts then
        return any(marker in cmdline for marker in self.markers)

    def healthy(self, timeout_s: float | None = None) -> bool:
        if self.health_url is None:
            return True
        return healthy(self.health_url, self.health_timeout_s if timeout_s is None else timeout_s)

    def status(self) -> ServiceStatus:
        record = self.record()
        if record is None:
            return ServiceStatus(None, False, False)
        owned = self.owns(record.pid)
        return ServiceStatus(record.pid, owned, owned and self.healthy(), record.port)

    def log_tail(self, lines: int = 15, hide: Iterable[str] = ()) -> str:
        """The last ``lines`` of the log with every string of ``hide`` (passwords, tokens) masked."""
        try:
            text = self.log_file.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        tail = "\n".join(text)
        for secret in hide:
            if secret:
                tail = tail.replace(secret, "********")
        return tail

    # -- start ------------------------------------------------------------------------------------------

    def start(
        self,
        launch: Launch | Callable[[], Launch],
        *,
        timeout_s: float,
        port: int | None = None,
        host: str = HOST,
        watch: Callable[[], None] | None = None,
        poll_s: float = 1.0,
    ) -> ServiceStatus:
        """Start the service unless it runs, and wait until it answers its health URL.

        ``launch`` may be a function: it is called only once the checks passed (a port taken fails before a
        slow install). ``port`` is checked free on ``host`` first and kept in the pid file. ``watch`` runs at
        every poll and may raise to give up; the process is then stopped and the exception goes on.
        """
        current = self.status()
        if current.running:
            return current
        if current.alive and current.pid is not None:
            raise NotAnswering(
                f"a {self.name} process (pid {current.pid}) is running but not answering {self.health_url};"
                f" stop it first (log: {self.log_file})",
                self,
                pid=current.pid,
            )
        if port is not None and not port_free(port, host):
            raise PortInUse(f"port {port} on {host} is already in use", self)
        how = launch() if callable(launch) else launch
        started = time.monotonic()
        proc = self.spawn(how, port)
        try:
            self._wait(proc, started + timeout_s, watch, poll_s)
        except BaseException:
            self.stop()
            raise
        return ServiceStatus(proc.pid, True, True, port, True, time.monotonic() - started)

    def spawn(self, launch: Launch, port: int | None = None) -> subprocess.Popen[bytes]:
        """Start the process detached, output to the log, and write the pid file; does not wait."""
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(
                list(launch.command),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=launch.env,
                cwd=str(launch.cwd) if launch.cwd is not None else None,
                start_new_session=True,  # its own session and group: stop() signals exactly it and its children
            )
        _CHILDREN[proc.pid] = proc
        record = {"pid": proc.pid, "port": port, "started_at": time.time()}
        tmp = self.pid_file.with_name(self.pid_file.name + ".tmp")
        tmp.write_text(json.dumps(record))
        tmp.replace(self.pid_file)  # a reader never sees half a pid file
        return proc

    def _wait(
        self, proc: subprocess.Popen[bytes], deadline: float, watch: Callable[[], None] | None, poll_s: float
    ) -> None:
        while True:
            if proc.poll() is not None:  # start() then stops what it may have left in its group
                raise ExitedEarly(
                    f"{self.name} exited (code {proc.returncode}) while starting; see {self.log_file}",
                    self,
                    returncode=proc.returncode,
                )
            if watch is not None:
                watch()
            if self.health_url is None or healthy(self.health_url, min(2.0, self.health_timeout_s)):
                return
            if time.monotonic() >= deadline:
                raise StartTimeout(
                    f"{self.name} did not answer {self.health_url} in time; see {self.log_file}", self
                )
            time.sleep(poll_s)

    # -- stop -------------------------------------------------------------------------------------------

    def stop(self, timeout_s: float = 20.0, kill_wait_s: float = 5.0) -> bool:
        """SIGTERM to the process group (and descendants that left it), SIGKILL to what is left after
        ``timeout_s``; returns whether a running process was stopped. The pid file goes either way."""
        record = self.record()
        pid = record.pid if record is not None else None
        if pid is not None and self.owns(pid):
            # spawn() made it a group leader; never signal a group that is not its own (ours, say).
            try:
                group = os.getpgid(pid) == pid
            except ProcessLookupError:
                group = False
        elif pid is not None and self._orphans(pid):
            group = True  # the leader died but its children live on in its group: they are ours to stop
        else:
            self.pid_file.unlink(missing_ok=True)
            return False
        strays = _descendants(pid)  # children that started their own session are not in the group
        _signal(pid, signal.SIGTERM, group, strays)
        if not _wait_gone(pid, group, strays, time.monotonic() + timeout_s):
            _signal(pid, signal.SIGKILL, group, strays)
            _wait_gone(pid, group, strays, time.monotonic() + kill_wait_s)
        _CHILDREN.pop(pid, None)
        self.pid_file.unlink(missing_ok=True)
        return True

    def _orphans(self, pgid: int) -> bool:
        """Whether live processes of this service are left in group ``pgid`` after its leader died. A
        group's id is not reused while a member lives, so they are the old leader's children."""
        if pgid == os.getpgrp() or alive(pgid):  # a live leader that is not ours: a reused pid, hands off
            return False
        members = _group(pgid)
        if not self.markers:
            return bool(members)
        return any(any(m in _cmdline(member) for m in self.markers) for member in members)


def healthy(url: str, timeout_s: float = 3.0) -> bool:
    """Whether ``url`` answers 200 now."""
    try:
        return httpx.get(url, timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (our own children are reaped on the way)."""
    child = _CHILDREN.get(pid)
    if child is not None:
        return child.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _state(pid) not in ("Z", "X")


def port_free(port: int, host: str = HOST) -> bool:
    """Whether a server could listen on ``host``:``port`` now. SO_REUSEADDR as servers set it: connections in
    TIME_WAIT after a stop do not count, a listening socket does."""
    with socket.socket(netbind.family(host), socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = HOST) -> int:
    """A port free on ``host`` (loopback by default) right now."""
    with socket.socket(netbind.family(host), socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------------------------------------------------
# Process groups, from /proc (Linux); elsewhere only the leader and kill(0) are known.


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name: state, ppid, pgrp, ..."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _state(pid: int) -> str | None:
    fields = _stat(pid)
    return fields[0] if fields else None


def _processes() -> list[tuple[int, int, int]]:
    """(pid, ppid, pgrp) of every live (not zombie) process."""
    found = []
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                fields = _stat(int(entry.name))
                if fields and fields[0] not in ("Z", "X"):
                    found.append((int(entry.name), int(fields[1]), int(fields[2])))
    return found


def _descendants(pid: int) -> set[int]:
    procs = _processes()
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {p for p, parent, _ in procs if parent in frontier and p not in found}
        found |= frontier
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _group(pgid: int) -> list[int]:
    """The live processes of group ``pgid`` (without /proc: the leader, while the group exists)."""
    if os.path.isdir("/proc"):
        return [pid for pid, _, group in _processes() if group == pgid]
    try:
        os.killpg(pgid, 0)
    except OSError:
        return []
    return [pgid]


def _signal(pid: int, sig: signal.Signals, group: bool, strays: set[int]) -> None:
    with contextlib.suppress(ProcessLookupError):
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    for stray in strays:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(stray, sig)


def _wait_gone(pid: int, group: bool, strays: set[int], deadline: float) -> bool:
    """Wait until the leader, its group and ``strays`` are gone; whether they are by ``deadline``."""
    while True:
        left = alive(pid) or (group and bool(_group(pid))) or any(alive(s) for s in strays)
        if not left:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)
