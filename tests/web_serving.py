"""Serving the web app in tests, benches and fault scenarios: a planted scripted model, a workspace with the
bundled sample PDF ingested, and the app under a real uvicorn on a free loopback port (in a thread).

Shared by ``tests/test_guarded_api.py`` (through its fixtures, stopped by ``stop_later``) and
``tests/reliability/scenarios_web.py`` (plain functions: the server is stopped by the context manager).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from runtime.config import Settings, load_settings

MEAL = "出差伙食补助费每人每天多少钱？"
RIGHT = "伙食补助费每人每天100元。"
INVENTED = "伙食补助费每人每天999元。"
START_TIMEOUT_S = 30.0


class Planted:
    """A scripted model: ``reply`` for every call (after ``delay_s``), recording the calls and the most that
    ever ran at once (the app must serialise them)."""

    def __init__(self, reply: str, delay_s: float = 0.0) -> None:
        self.reply = reply
        self.delay_s = delay_s
        self.calls = 0
        self.running = 0
        self.most_at_once = 0
        self._lock = threading.Lock()

    def __call__(self, messages: list[dict[str, str]], max_tokens: int, grammar: Any = None) -> str:
        with self._lock:
            self.calls += 1
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            if self.delay_s:
                time.sleep(self.delay_s)
            return self.reply
        finally:
            with self._lock:
                self.running -= 1


def sample_workspace(folder: Path, sample_pdf: Path) -> Settings:
    """Settings for a workspace under ``folder`` with ``sample_pdf`` ingested (and the retrieval caches of an
    earlier workspace cleared)."""
    from tasks.answer.fact_retrieve import clear_cache as clear_fact_cache
    from tasks.answer.retrieve import clear_cache
    from tasks.ingest.documents import ingest_file
    from warehouse.db import open_warehouse

    settings = load_settings(folder / "ws")
    with open_warehouse(settings.warehouse_path) as con:
        result = ingest_file(con, sample_pdf, settings)
        if result.status != "added":
            raise RuntimeError(f"the sample was not ingested: {result.message}")
    clear_cache()
    clear_fact_cache()
    return settings


@contextlib.contextmanager
def served(app: Any) -> Iterator[str]:
    """``app`` under uvicorn on a free 127.0.0.1 port, in a thread; yields its base URL and stops it on exit
    (``AssertionError`` when it does not start or stop)."""
    import uvicorn

    from webapp.server import listening_socket

    sock = listening_socket("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="web-app")
    try:
        thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
        assert not thread.is_alive(), "uvicorn did not stop"
