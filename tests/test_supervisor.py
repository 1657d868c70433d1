"""The background-server supervisor (runtime/supervisor.py) with real processes: a tiny ``http.server`` on
127.0.0.1 and a free port. Every process a test starts is stopped in the fixture's finaliser, even when the
test fails."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from runtime import supervisor
from runtime.supervisor import Launch, Service

MARKER = "http.server"  # in every command line below: the service's marker against pid reuse
# A server that first does ``{before}`` (spawn children, sleep), then serves its cwd on the port in argv[1].
SERVE = """
import os, runpy, signal, subprocess, sys, time
{before}
sys.argv = ["http.server", "--bind", "127.0.0.1", sys.argv[1]]
runpy.run_module("http.server", run_name="__main__")
"""
# A grandchild that sleeps, writes its pid to argv[1] and ``{how}``.
SLEEPER = (
    "import os, signal, sys, time; {how}; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(600)"
)


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_for_file(path: Path, timeout_s: float = 20.0) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            return int(path.read_text())
        time.sleep(0.05)
    raise AssertionError(f"{path} never written")


class Harness:
    """Makes services in ``tmp_path``; remembers every service and pid so the finaliser can stop them."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.services: list[Service] = []
        self.pids: set[int] = set()

    def service(self, name: str = "web", markers: tuple[str, ...] = (MARKER,)) -> tuple[Service, int]:
        port = supervisor.free_port()
        service = Service(
            f"test {name}",
            self.tmp / f"{name}.pid",
            self.tmp / "logs" / f"{name}.log",
            f"http://127.0.0.1:{port}/",
            markers,
        )
        self.services.append(service)
        return service, port

    def serve(self, port: int, before: str = "", *extra: str) -> Launch:
        code = SERVE.format(before=before)
        return Launch([sys.executable, "-c", code, str(port), *extra], env=dict(os.environ), cwd=self.tmp)

    def track(self, pid: int | None) -> None:
        if pid:
            self.pids.add(pid)

    def cleanup(self) -> None:
        for service in self.services:
            with contextlib.suppress(Exception):
                self.track((service.record() or supervisor.PidRecord(0)).pid)
                service.stop(timeout_s=2.0)
        for pid in self.pids:  # whatever a failed stop left: the group, then the process itself
            for kill in (os.killpg, os.kill):
                with contextlib.suppress(OSError):
                    kill(pid, signal.SIGKILL)


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path)
    try:
        yield h
    finally:
        h.cleanup()


def test_start_waits_for_health_and_status_says_running(harness: Harness) -> None:
    service, port = harness.service()
    # The plain module first: start returns once it answers, with its pid in the pid file.
    launch = Launch([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)], cwd=harness.tmp)
    started = service.start(launch, timeout_s=30, port=port)
    harness.track(started.pid)
    assert started.running and started.started_now and started.pid and started.port == port
    assert supervisor.healthy(f"http://127.0.0.1:{port}/")
    now = service.status()
    assert (now.running, now.alive, now.pid, now.port) == (True, True, started.pid, port)
    record = json.loads(service.pid_file.read_text())
    assert record["pid"] == started.pid and record["port"] == port
    assert service.stop()

    # A server that takes a while to listen: start waited for it, it did not return at the spawn.
    slow = harness.serve(port, "time.sleep(1.5)")
    started = service.start(slow, timeout_s=30, port=port, poll_s=0.2)
    harness.track(started.pid)
    assert started.startup_s >= 1.5 and supervisor.healthy(f"http://127.0.0.1:{port}/")


def test_start_twice_is_safe(harness: Harness) -> None:
    service, port = harness.service()
    first = service.start(harness.serve(port), timeout_s=30, port=port)
    harness.track(first.pid)
    again = service.start(harness.serve(port), timeout_s=30, port=port)
    assert again.running and not again.started_now and again.pid == first.pid
    assert service.status().pid == first.pid
    # Only one server: nothing else of ours in the log said it could not bind.
    assert "Address already in use" not in service.log_file.read_text()


def test_stop_ends_the_whole_group_and_children_that_left_it(harness: Harness) -> None:
    service, port = harness.service()
    same_group = harness.tmp / "same_group.pid"
    own_session = harness.tmp / "own_session.pid"
    # One grandchild ignores SIGTERM (SIGKILL after the timeout), one starts its own session (not in the group).
    before = (
        f"subprocess.Popen([sys.executable, '-c', {SLEEPER.format(how='signal.signal(15, signal.SIG_IGN)')!r},"
        f" {str(same_group)!r}])\n"
        f"subprocess.Popen([sys.executable, '-c', {SLEEPER.format(how='pass')!r}, {str(own_session)!r}],"
        " start_new_session=True)"
    )
    started = service.start(harness.serve(port, before), timeout_s=30, port=port)
    harness.track(started.pid)
    children = [_wait_for_file(same_group), _wait_for_file(own_session)]
    for child in children:
        harness.track(child)
    assert started.pid is not None and os.getpgid(children[0]) == started.pid != os.getpgid(children[1])

    began = time.monotonic()
    assert service.stop(timeout_s=1.0)
    assert time.monotonic() - began < 10
    assert _gone(started.pid) and all(_gone(child) for child in children)
    assert not service.pid_file.exists() and not service.status().running
    assert not service.stop()  # stopping again: nothing was running


def test_stop_ends_children_left_behind_by_a_dead_leader(harness: Harness) -> None:
    service, port = harness.service()
    orphan = harness.tmp / "orphan.pid"
    sleeper = SLEEPER.format(how="pass")
    before = f"subprocess.Popen([sys.executable, '-c', {sleeper!r}, {str(orphan)!r}, {MARKER!r}])"
    started = service.start(harness.serve(port, before), timeout_s=30, port=port)
    assert started.pid is not None
    harness.track(started.pid)
    child = _wait_for_file(orphan)
    harness.track(child)
    os.kill(started.pid, signal.SIGKILL)  # the server crashes; its child lives on in its group
    deadline = time.monotonic() + 10
    while not _gone(started.pid) and time.monotonic() < deadline:
        service.status()  # reaps our child
        time.sleep(0.05)
    assert not service.status().alive and not _gone(child)
    assert service.stop(timeout_s=2.0)
    assert _gone(child)


def test_a_command_that_exits_at_once_names_the_log(harness: Harness) -> None:
    service, port = harness.service()
    launch = Launch([sys.executable, "-c", f"print('no {MARKER} today'); raise SystemExit(3)"])
    with pytest.raises(supervisor.ExitedEarly, match="exited \\(code 3\\)") as caught:
        service.start(launch, timeout_s=30, port=port)
    assert str(service.log_file) in str(caught.value) and caught.value.returncode == 3
    assert "no http.server today" in service.log_file.read_text()
    assert not service.pid_file.exists() and not service.status().alive


def test_a_launcher_that_exits_leaves_no_child_behind(harness: Harness) -> None:
    service, port = harness.service()
    child_file = harness.tmp / "child.pid"
    sleeper = SLEEPER.format(how="pass")
    code = (
        f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {sleeper!r}, {str(child_file)!r},"
        f" {MARKER!r}])\nwhile True:\n    try: open({str(child_file)!r}).read() and sys.exit(1)\n"
        "    except OSError: time.sleep(0.05)"
    )
    with pytest.raises(supervisor.ExitedEarly, match="code 1"):
        service.start(Launch([sys.executable, "-c", code]), timeout_s=30, port=port, poll_s=0.2)
    child = int(child_file.read_text())
    harness.track(child)
    assert _gone(child) and not service.pid_file.exists()


def test_a_server_that_never_answers_is_stopped_with_the_log_named(harness: Harness) -> None:
    service, port = harness.service()
    launch = Launch([sys.executable, "-c", f"import time  # {MARKER}\ntime.sleep(600)"])
    spawned: set[int] = set()

    def watch() -> None:
        record = service.record()
        if record is not None:
            spawned.add(record.pid)
            harness.track(record.pid)

    with pytest.raises(supervisor.StartTimeout) as caught:
        service.start(launch, timeout_s=1.0, port=port, watch=watch, poll_s=0.2)
    assert str(service.log_file) in str(caught.value)
    assert len(spawned) == 1 and _gone(spawned.pop()) and not service.pid_file.exists()


def test_a_failing_watch_stops_the_process(harness: Harness) -> None:
    service, port = harness.service()
    launch = Launch([sys.executable, "-c", f"import time  # {MARKER}\ntime.sleep(600)"])
    spawned: list[int] = []

    def watch() -> None:
        record = service.record()
        assert record is not None
        spawned.append(record.pid)
        raise RuntimeError("the server chose another port")

    with pytest.raises(RuntimeError, match="another port"):
        service.start(launch, timeout_s=30, port=port, watch=watch)
    assert spawned and _gone(spawned[0]) and not service.pid_file.exists()


def test_stale_and_foreign_pid_files(harness: Harness) -> None:
    service, port = harness.service()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for stale in (json.dumps({"pid": dead.pid, "port": port}), str(dead.pid), "not a pid", ""):
        service.pid_file.write_text(stale)
        assert not service.status().alive and not service.status().running
        assert not service.stop() and not service.pid_file.exists()
    # A live process that is not ours (pid reused): neither counted as running nor signalled.
    stranger = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True
    )
    harness.track(stranger.pid)
    try:
        service.pid_file.write_text(json.dumps({"pid": stranger.pid, "port": port}))
        assert not service.status().alive
        assert not service.stop() and stranger.poll() is None
        # A stale pid file does not keep the service from starting.
        service.pid_file.write_text(str(dead.pid))
        started = service.start(harness.serve(port), timeout_s=30, port=port)
        harness.track(started.pid)
        assert started.started_now and started.pid != dead.pid and service.status().running
    finally:
        stranger.kill()
        stranger.wait()


def test_a_live_process_that_does_not_answer_is_not_started_twice(harness: Harness) -> None:
    service, port = harness.service()
    proc = service.spawn(Launch([sys.executable, "-c", f"import time  # {MARKER}\ntime.sleep(600)"]), port)
    harness.track(proc.pid)
    with pytest.raises(supervisor.NotAnswering, match=f"pid {proc.pid}") as caught:
        service.start(harness.serve(port), timeout_s=30, port=port)
    assert caught.value.pid == proc.pid and str(service.log_file) in str(caught.value)
    assert service.stop() and _gone(proc.pid)


def test_a_busy_port_fails_before_the_launch(harness: Harness) -> None:
    service, _ = harness.service()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        busy = sock.getsockname()[1]
        calls: list[int] = []

        def launch() -> Launch:
            calls.append(1)
            return harness.serve(busy)

        with pytest.raises(supervisor.PortInUse, match=f"port {busy} on 127.0.0.1 is already in use"):
            service.start(launch, timeout_s=30, port=busy)
    assert calls == [] and not service.pid_file.exists()


def test_secrets_stay_out_of_repr_pid_file_and_log_tail(harness: Harness) -> None:
    service, port = harness.service()
    secret = "s3cr3t-token-value"
    code = SERVE.format(before="print('token is', os.environ['TEST_TOKEN'], flush=True)")
    launch = Launch([sys.executable, "-c", code, str(port)], env={**os.environ, "TEST_TOKEN": secret})
    assert secret not in repr(launch)
    started = service.start(launch, timeout_s=30, port=port)
    harness.track(started.pid)
    assert secret not in service.pid_file.read_text()
    assert secret in service.log_file.read_text()  # the server printed it ...
    tail = service.log_tail(hide=[secret])
    assert secret not in tail and "token is ********" in tail  # ... and the tail masks it
