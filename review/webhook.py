"""Resume the paused flow when its review batch is complete: a small webhook receiver for Label Studio.

Label Studio posts ANNOTATION_CREATED / ANNOTATION_UPDATED (payload keys: action, annotation, task,
project) but has no "task completed" or "project completed" event, so on every event the receiver asks
Label Studio again whether *every* task of that project's batch has a non-cancelled annotation, and calls
the injected ``resume`` callback once when it has. The real callback resumes the Prefect flow run recorded
with the batch (``resume_flow_run(flow_run_id, run_input=run_input(progress))``); tests pass a recorder.

Why the work happens off the request thread: Label Studio sends webhooks synchronously with a 1 s timeout
(``WEBHOOK_TIMEOUT``), possibly before the annotation it reports is visible to other requests. The
handler answers at once and a worker thread checks a moment later, and once more after a pause, so the
annotation that completes a batch is never missed.

Bound to the ``bind_host`` setting, 127.0.0.1 unless remote binding is allowed explicitly
(``runtime.netbind``). Each receiver has a random secret that Label Studio sends back as a header
(``register_webhook(..., secret=receiver.secret)``); posts without it are refused. The payload is never
trusted for completeness anyway: it only names the project to check. Neither the payload nor the headers
are logged (annotations are the institution's data; the header is the secret).
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import duckdb

from review.server import retrying
from review.sync import BatchProgress, batch_progress
from runtime import netbind
from runtime.config import Settings
from warehouse import review as queries
from warehouse.db import open_warehouse

log = logging.getLogger(__name__)

SECRET_HEADER = "X-Slm-Webhook-Secret"
ACTIONS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED")
# Seconds after an event to check (again): the first lets Label Studio finish the request that sent it.
RECHECK_DELAYS = (0.3, 2.0)

ResumeCallback = Callable[[str | None, str, BatchProgress], None]  # (flow_run_id, batch_id, progress)


def run_input(progress: BatchProgress) -> dict[str, Any]:
    """What the resumed flow receives (fields of its RunInput model)."""
    return {
        "batch_id": progress.batch_id,
        "tasks": progress.tasks,
        "accepted": progress.accepted,
        "corrected": progress.corrected,
        "rejected": progress.rejected,
    }


def register_webhook(
    client: Any, project_id: int, url: str, secret: str | None = None, settings: Settings | None = None
) -> int:
    """Have Label Studio post annotation events of ``project_id`` to ``url``; returns the webhook id.

    Idempotent: an existing webhook of the project with the same URL is updated, not duplicated."""
    headers = {SECRET_HEADER: secret} if secret else {}
    actions = ["ANNOTATION_CREATED", "ANNOTATION_UPDATED"]

    def call() -> int:
        for hook in client.webhooks.list(project=str(project_id)):
            if getattr(hook, "url", None) == url and getattr(hook, "project", None) == project_id:
                client.webhooks.update(
                    id=hook.id, url=url, actions=actions, headers=headers, send_payload=True, is_active=True
                )
                return int(hook.id)
        hook = client.webhooks.create(
            url=url, project=project_id, send_payload=True, actions=actions, headers=headers, is_active=True
        )
        return int(hook.id)

    return retrying(settings)(call)() if settings is not None else call()


class WebhookReceiver:
    """``with WebhookReceiver(con, settings, client, resume) as rx: register_webhook(client, pid, rx.url,
    rx.secret)``. ``check(batch_id)`` runs the same completeness test by hand (``slm review resume``)."""

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection | None,
        settings: Settings,
        client: Any,
        resume: ResumeCallback,
        port: int = 0,
        recheck_delays: tuple[float, ...] = RECHECK_DELAYS,
    ) -> None:
        self.host = netbind.bind_host(settings, "the review webhook receiver")  # refused before binding
        self._con = con
        self._settings = settings
        self._client = client
        self._resume = resume
        self._delays = recheck_delays
        self.secret = secrets.token_urlsafe(24)
        self.resumed: set[str] = set()  # batches whose flow run was resumed by this receiver
        self.events = 0
        self._lock = threading.Lock()
        self._queue: queue.Queue[tuple[float, int] | None] = queue.Queue()
        server_class = type("_Server", (ThreadingHTTPServer,), {"address_family": netbind.family(self.host)})
        self._server = server_class((self.host, port), self._handler_class())
        self._server.daemon_threads = True
        self._threads: list[threading.Thread] = []

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{netbind.url_host(self.host)}:{self.port}/webhook"

    def start(self) -> WebhookReceiver:
        serve = threading.Thread(target=self._server.serve_forever, name="ls-webhook-http", daemon=True)
        work = threading.Thread(target=self._work, name="ls-webhook-check", daemon=True)
        self._threads = [serve, work]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout=10)

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- events ------------------------------------------------------------------------------------------

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                # As bytes: compare_digest raises TypeError on a str header with non-ASCII characters.
                sent = self.headers.get(SECRET_HEADER, "").encode("latin-1", "replace")
                if not secrets.compare_digest(sent, receiver.secret.encode()):
                    self._answer(HTTPStatus.FORBIDDEN)
                    return
                try:
                    length = int(self.headers.get("Content-Length") or 0)
                    payload = json.loads(self.rfile.read(length) or b"{}")
                except ValueError:
                    self._answer(HTTPStatus.BAD_REQUEST)
                    return
                self._answer(HTTPStatus.OK)  # first: Label Studio waits at most 1 s
                receiver.accept_event(payload)

            def _answer(self, status: HTTPStatus) -> None:
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("webhook %s", format % args)

        return Handler

    def accept_event(self, payload: Any) -> None:
        """Queue the completeness checks for the project an event names (ignores other actions, and
        payloads of another shape: they come from outside)."""
        if not isinstance(payload, dict) or payload.get("action") not in ACTIONS:
            return
        project = payload.get("project") or {}
        project_id = project.get("id") if isinstance(project, dict) else project
        task = payload.get("task")
        if project_id is None and isinstance(task, dict):
            project_id = task.get("project")
        try:
            project_number = int(project_id)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return
        self.events += 1
        now = time.monotonic()
        for delay in self._delays:
            self._queue.put((now + delay, project_number))

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            due, project_id = item
            time.sleep(max(0.0, due - time.monotonic()))
            try:
                self.check_project(project_id)
            except Exception:  # a failed check (LS restarting, resume refused) must not stop the receiver
                log.exception("review webhook: checking project %s failed", project_id)

    @contextlib.contextmanager
    def _cursor(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A cursor on the shared connection (one per thread), or, with none given, the warehouse opened for
        this check only: a flow paused for days must not hold the file's lock."""
        if self._con is not None:
            cur = self._con.cursor()
            try:
                yield cur
            finally:
                cur.close()
        else:
            with open_warehouse(self._settings.warehouse_path) as con:
                yield con

    def check_project(self, project_id: int) -> bool:
        with self._cursor() as cur:
            batch = queries.batch_for_project(cur, project_id)
        return bool(batch) and self.check(batch["batch_id"])

    def check(self, batch_id: str) -> bool:
        """Resume the batch's flow run if the batch is complete and not resumed yet; returns whether it
        was resumed (now or before)."""
        with self._lock:  # events arrive on several threads; one resume per batch
            if batch_id in self.resumed:
                return True
            with self._cursor() as cur:
                progress = batch_progress(cur, self._settings, self._client, batch_id)
                if not progress.complete:
                    return False
                batch = queries.get_batch(cur, batch_id)
            assert batch is not None
            self._resume(batch["flow_run_id"], batch_id, progress)
            self.resumed.add(batch_id)
            log.info("review batch %s complete: flow run %s resumed", batch_id, batch["flow_run_id"])
            return True


def serve_forever(receiver: WebhookReceiver) -> None:
    """Run a receiver until interrupted (for a standalone ``slm review webhook`` process)."""
    receiver.start()
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            time.sleep(3600)
    receiver.stop()
