"""Shared fixtures: a fresh workspace per test, and the paths of the sample and of ../shared/corpus.

Also the run's rules for real components and processes:

- :func:`require_or_skip`: a real component (Label Studio, the Prefect server) that cannot be installed or
  started skips the test on a developer's machine, with the reason; in CI (``CI`` set) it fails the test;
- :func:`stop_later`: a server is stopped by a finaliser registered before it starts, even when the test fails;
- at the end of the run, a process the tests started that is still alive fails the run (see
  :func:`pytest_sessionfinish`), and so does a run that collected no test.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import duckdb
import psutil
import pytest

from runtime.config import Settings, load_settings
from warehouse.db import connect

# Offline machine: no telemetry (it also causes "database is locked" on SQLite), and a slow first start.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
# Every process the tests start inherits this mark, even one that daemonises away from pytest's process tree.
RUN_MARK = "PYTEST_SLM_RUN"  # not SLM_*: the servers and commands start with SLM_* taken out
os.environ[RUN_MARK] = uuid.uuid4().hex
LEAK_GRACE_S = float(os.environ.get("SLM_TEST_LEAK_GRACE_S", "10"))

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SAMPLE_MD = EXAMPLES / "sample_rules.md"
SAMPLE_PDF = EXAMPLES / "sample_rules.pdf"
CORPUS = ROOT.parent / "shared" / "corpus"
EXPECTED = Path(__file__).parent / "data" / "corpus_expected"


def corpus_path(*parts: str) -> Path:
    """A file of ../shared/corpus; tests that need one skip, saying so, when the folder is absent."""
    path = CORPUS.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not present (the shared corpus lives beside the clone)")
    return path


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    for var in ("SLM_WORKSPACE", "SLM_MAX_PAGES", "SLM_CHUNK_SIZE", "SLM_GEMINI_API_KEYS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    return load_settings(tmp_path / "ws")


@pytest.fixture
def con(settings: Settings) -> Iterator[duckdb.DuckDBPyConnection]:
    connection = connect(settings.warehouse_path)
    try:
        yield connection
    finally:
        connection.close()


@pytest.fixture
def rules(
    request: pytest.FixtureRequest, con: duckdb.DuckDBPyConnection, settings: Settings, tmp_path: Path
) -> duckdb.DuckDBPyConnection:
    """The warehouse with the test module's hand-written ``RULES_FILE = (file name, text)`` ingested."""
    from tests.rules_text import ingest_rules  # imports the answering stage: only for the tests that ask

    name, text = request.module.RULES_FILE
    return ingest_rules(con, settings, tmp_path, name, text)


# ---------------------------------------------------------------------------------------------------------
# Real components: skip on a developer's machine, fail in CI


def in_ci() -> bool:
    """Whether this run is CI's: ``CI`` is set to anything but empty, 0, false or no."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_or_skip(reason: str) -> NoReturn:
    """A real component the test needs cannot be installed or started (``reason`` says which and why).

    On a developer's machine the test is skipped with the reason. In CI it fails: a green CI must mean the
    component was really exercised, never that every test needing it skipped."""
    if in_ci():
        pytest.fail(f"{reason} (CI is set: a component that cannot start fails the test)", pytrace=False)
    pytest.skip(reason)


def require_labelstudio(settings: Settings, on_progress: Callable[[str], None] | None = None) -> None:
    """Label Studio installed for ``settings`` (minutes the first time), or the test skipped (failed in CI)
    saying why it could not be."""
    from review import server  # not at module level: most tests never need Label Studio

    try:
        server.ensure_installed(settings, on_progress=on_progress)
    except (server.LabelStudioError, OSError) as exc:
        require_or_skip(f"Label Studio {server.LS_VERSION} cannot be installed here: {exc}")


def quick_labelstudio_settings(tmp_path: Path) -> Settings:
    """A workspace under ``tmp_path`` whose Label Studio has a free port and gives up quickly."""
    from review import server

    update = {
        "labelstudio_port": server.free_port(),
        "labelstudio_attempts": 2,
        "labelstudio_backoff_s": 0.05,
    }
    return load_settings(tmp_path / "ws").model_copy(update=update)


_importorskip = pytest.importorskip


def import_or_require(modname: str, *args: Any, **kwargs: Any) -> Any:
    """``pytest.importorskip``, except that in CI a missing package fails the test (as ``require_or_skip``):
    every package a test imports is a declared dependency, so a skip there would hide a broken install."""
    try:
        return _importorskip(modname, *args, **kwargs)
    except pytest.skip.Exception as exc:
        if in_ci():
            pytest.fail(f"{exc} (CI is set: a package the tests need must be installed)", pytrace=False)
        raise


# One rule for every test module, including the module-level calls made while collecting them.
pytest.importorskip = import_or_require  # type: ignore[assignment]


@pytest.fixture
def stop_later() -> Iterator[Callable[[Callable[[], Any]], None]]:
    """``stop_later(stop)`` registers ``stop`` to run when the test ends, passed or failed (last registered
    first). Register a server's stop *before* starting it, so a start that fails half way is cleaned up too;
    every stop runs even if another raises."""
    stops: list[Callable[[], Any]] = []
    yield stops.append
    errors = []
    for stop in reversed(stops):
        try:
            stop()
        except Exception as exc:  # the other servers must still be stopped
            errors.append(f"{getattr(stop, '__name__', stop)}: {exc!r}")
    if errors:
        pytest.fail("stopping servers failed: " + "; ".join(errors), pytrace=False)


# ---------------------------------------------------------------------------------------------------------
# The end of the run: no process the tests started is left alive; a run with no test fails

_BEFORE: set[tuple[int, float]] = set()


def _key(proc: psutil.Process) -> tuple[int, float] | None:
    try:
        return proc.pid, proc.create_time()
    except psutil.Error:
        return None


def started_by_this_run() -> list[psutil.Process]:
    """Processes alive now that this run started: descendants of this process, and processes carrying this
    run's mark in their environment (a server that daemonised itself is no longer a descendant)."""
    me = psutil.Process()
    found: dict[int, psutil.Process] = {}
    try:
        for child in me.children(recursive=True):
            found[child.pid] = child
    except psutil.Error:
        pass
    mark = os.environ[RUN_MARK]
    for proc in psutil.process_iter():
        if proc.pid == me.pid or proc.pid in found:
            continue
        try:
            if proc.environ().get(RUN_MARK) == mark:
                found[proc.pid] = proc
        except psutil.Error:  # gone, a zombie, or not ours to read
            continue
    return [p for p in found.values() if _alive(p) and _key(p) not in _BEFORE and not _library_helper(p)]


# Helpers Python's multiprocessing starts on first use and keeps for the life of the interpreter (torch and
# the data loaders use it): they end with pytest itself, they are not servers a test forgot.
_LIBRARY_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver", "semaphore_tracker")


def _library_helper(proc: psutil.Process) -> bool:
    try:
        command = " ".join(proc.cmdline())
    except psutil.Error:
        return False
    return any(helper in command for helper in _LIBRARY_HELPERS)


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def leftover_processes(grace_s: float) -> list[psutil.Process]:
    """The processes this run started that are still alive after ``grace_s`` seconds of waiting for them."""
    deadline = time.monotonic() + grace_s
    left = started_by_this_run()
    while left and time.monotonic() < deadline:
        _, left = psutil.wait_procs(left, timeout=min(1.0, max(0.05, deadline - time.monotonic())))
        left = [p for p in left if _alive(p)]
    return left


def describe(proc: psutil.Process) -> str:
    try:
        return f"pid {proc.pid}: {' '.join(proc.cmdline())[:300]}"
    except psutil.Error:
        return f"pid {proc.pid}"


def pytest_sessionstart(session: pytest.Session) -> None:
    # Children alive before any test ran (a plugin's helper, say) are not the tests' to stop.
    with contextlib.suppress(psutil.Error):
        _BEFORE.update(k for k in map(_key, psutil.Process().children(recursive=True)) if k)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if session.testscollected == 0 and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.NO_TESTS_COLLECTED  # a run that ran nothing passes nothing
    if session.config.option.collectonly:
        return
    left = leftover_processes(LEAK_GRACE_S)
    if not left:
        return
    lines = [
        f"{len(left)} process(es) started by the tests are still alive {LEAK_GRACE_S:g} s after the run:"
    ]
    lines += [f"  {describe(p)}" for p in left]
    lines.append(
        "A fixture finaliser (see stop_later in tests/conftest.py) must stop every server a test starts."
    )
    print("\n" + "\n".join(lines), file=sys.stderr)
    for proc in left:  # after reporting them, leave the machine clean
        with contextlib.suppress(psutil.Error):
            proc.kill()
    if session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
