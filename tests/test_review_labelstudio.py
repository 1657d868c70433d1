"""Human review through Label Studio.

Fast tests check the sync logic on archived exports (no server) and the webhook receiver's guard. The slow
test runs a REAL Label Studio server (installed in its own venv, see review/server.py) on a free loopback
port: push a batch of real rows, push again, annotate through the API as an annotator would, watch the
webhook resume callback fire once, sync with the server stopped between export and apply, sync again.
"""

from __future__ import annotations

import json
import socket
import stat
import time
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest

from review import push, server, sync, webhook
from review.labeling import COMMENT, CORRECTED_ANSWER, CORRECTED_NUMBERS, VERDICT
from runtime.config import Settings, load_settings
from tasks.distill.distill import distill, make_teacher
from tasks.ingest.documents import ingest_file
from tests.conftest import SAMPLE_PDF, quick_labelstudio_settings, require_labelstudio
from tests.reliability.scenarios_security import listening_addresses
from warehouse import review as queries
from warehouse.db import connect

ADMIN = "admin@slm-factory.local"


def _result(verdict: str, answer: str = "", numbers: str = "", comment: str = "") -> list[dict[str, Any]]:
    out = [{"from_name": VERDICT, "to_name": "answer", "type": "choices", "value": {"choices": [verdict]}}]
    for name, text in ((CORRECTED_ANSWER, answer), (CORRECTED_NUMBERS, numbers), (COMMENT, comment)):
        if text:
            out.append(
                {"from_name": name, "to_name": "answer", "type": "textarea", "value": {"text": [text]}}
            )
    return out


def _review_rows(con: duckdb.DuckDBPyConnection, settings: Settings, count: int) -> list[dict[str, Any]]:
    """Real rows: the sample PDF ingested and distilled; numeric rows waiting for review."""
    assert ingest_file(con, SAMPLE_PDF, settings).status == "added"
    distill(con, settings, make_teacher(settings))
    rows = [r for r in queries.review_candidates(con) if r["numbers"] and r["kind"] != "unanswerable"]
    facts = queries.chunk_facts(con, sorted({r["chunk_id"] for r in rows}))
    picked, chunks = [], set()
    for row in rows:  # different chunks, so each verdict is about a different piece of source
        if row["chunk_id"] not in chunks and facts[row["chunk_id"]]:
            picked.append(row)
            chunks.add(row["chunk_id"])
        if len(picked) == count:
            break
    assert len(picked) == count
    return picked


def _snapshot(con: duckdb.DuckDBPyConnection, ids: list[str]) -> list[tuple[Any, ...]]:
    return con.execute(
        "SELECT row_id, status, reviewer, reviewed_at, answer, original_answer, numbers, corrected_answer,"
        " corrected_numbers, verify_notes, review_comment FROM qa_rows WHERE row_id IN (SELECT unnest(?))"
        " ORDER BY row_id",
        [ids],
    ).fetchall()


def _row(con: duckdb.DuckDBPyConnection, row_id: str) -> dict[str, Any]:
    cur = con.execute("SELECT * FROM qa_rows WHERE row_id = ?", [row_id])
    names = [c[0] for c in cur.description]
    return dict(zip(names, cur.fetchone(), strict=True))


# ---------------------------------------------------------------------------------------------------------
# Fast: no server


def test_archived_export_applies_offline_and_idempotently(
    con: duckdb.DuckDBPyConnection, settings: Settings
) -> None:
    rows = _review_rows(con, settings, 4)
    ids = [r["row_id"] for r in rows]
    queries.create_batch(con, "rb-offline", 999, "flow-x", ids)
    queries.set_task_ids(con, "rb-offline", {r: i + 1 for i, r in enumerate(ids)})
    fact = queries.chunk_facts(con, [rows[1]["chunk_id"]])[rows[1]["chunk_id"]][0]

    def task(i: int, result: list[dict[str, Any]], stamp: str, cancelled: bool = False) -> dict[str, Any]:
        annotation = {
            "id": 100 + i,
            "completed_by": 7,
            "result": result,
            "was_cancelled": cancelled,
            "updated_at": stamp,
        }
        return {
            "id": i + 1,
            "data": {"row_id": ids[i], "batch_id": "rb-offline"},
            "annotations": [annotation],
        }

    archive = {
        "users": {"7": "ann@example.org"},
        "tasks": [
            task(0, _result("accept"), "2026-01-01T10:00:00Z"),
            task(1, _result("correct", f"标准为{fact['raw']}。", fact["raw"]), "2026-01-01T10:01:00Z"),
            task(2, _result("correct", "标准为987654元。", "987654元"), "2026-01-01T10:02:00Z"),
            task(3, _result("reject"), "2026-01-01T10:03:00Z", cancelled=True),  # skipped: not a verdict
        ],
    }
    first = sync.apply_export(con, "rb-offline", archive, None)
    assert first.applied == {"accept": 1, "correct": 1, "flagged": 1}
    assert first.progress is not None and first.progress.remaining == 1 and first.status == "open"
    assert _row(con, ids[0])["status"] == "approved" and _row(con, ids[0])["reviewer"] == "ann@example.org"
    corrected = _row(con, ids[1])
    assert corrected["status"] == "corrected" and corrected["original_answer"] == rows[1]["answer"]
    assert fact["value"] in corrected["numbers"]
    flagged = _row(con, ids[2])
    assert flagged["status"] == "needs_review" and flagged["answer"] == rows[2]["answer"]
    assert "correction states 987654元 which is not in the source" in flagged["verify_notes"]
    assert flagged["corrected_answer"] == "标准为987654元。"

    before = _snapshot(con, ids)
    again = sync.apply_export(con, "rb-offline", archive, None)
    assert again.applied == {} and again.unchanged == 3 and _snapshot(con, ids) == before

    # The annotator changes their mind: the updated annotation is applied, the original answer restored.
    archive["tasks"][1] = task(1, _result("reject", comment="wrong article"), "2026-01-02T09:00:00Z")
    archive["tasks"][3] = task(3, _result("accept"), "2026-01-02T09:01:00Z")
    third = sync.apply_export(con, "rb-offline", archive, None)
    assert third.applied == {"reject": 1, "accept": 1} and third.status == "synced"
    changed = _row(con, ids[1])
    assert changed["status"] == "rejected" and changed["answer"] == rows[1]["answer"]
    assert changed["review_comment"] == "wrong article"


def test_parse_corrected_numbers_uses_the_one_parser() -> None:
    values, bad = sync.parse_corrected_numbers("800元; 1,200元")
    assert [str(v) for _, v in values] == ["800", "1200"] and not bad
    values, bad = sync.parse_corrected_numbers("三 5万 abc")
    assert sorted(str(v) for _, v in values) == ["3", "50000"] and bad == ["abc"]


def test_start_refuses_a_busy_port(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        busy = sock.getsockname()[1]
        settings = load_settings(tmp_path / "ws").model_copy(update={"labelstudio_port": busy})
        with pytest.raises(server.LabelStudioError, match=f"port {busy} "):
            server.start(settings)


def test_webhook_receiver_refuses_posts_without_its_secret(
    con: duckdb.DuckDBPyConnection, settings: Settings
) -> None:
    calls: list[Any] = []
    with webhook.WebhookReceiver(con, settings, client=None, resume=lambda *a: calls.append(a)) as rx:
        event = {"action": "ANNOTATION_CREATED", "project": {"id": 1}}
        assert httpx.post(rx.url, json=event).status_code == 403
        ok = httpx.post(
            rx.url, json={"action": "PROJECT_UPDATED"}, headers={webhook.SECRET_HEADER: rx.secret}
        )
        assert ok.status_code == 200 and rx.events == 0
    assert calls == []


# ---------------------------------------------------------------------------------------------------------
# Slow: a real Label Studio server


def _wait(predicate: Any, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return bool(predicate())


@pytest.mark.slow
def test_review_round_trip_with_a_real_label_studio(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], stop_later
) -> None:
    settings = quick_labelstudio_settings(tmp_path)
    require_labelstudio(settings, on_progress=print)
    stop_later(lambda: server.stop(settings))  # also when the test fails before its own finally
    con = connect(settings.warehouse_path)
    calls: list[tuple[str | None, str, sync.BatchProgress]] = []
    receiver = None
    try:
        started = time.monotonic()
        info = server.start(settings, on_progress=print)
        print(f"first start: {time.monotonic() - started:.0f} s")
        assert info.running and info.port == settings.labelstudio_port
        # Loopback only: every listening socket on the port is 127.0.0.1 (issue #10, part 5).
        assert listening_addresses(info.port) == {"127.0.0.1"}, listening_addresses(info.port)
        creds = server.credentials_path(settings)
        assert stat.S_IMODE(creds.stat().st_mode) == 0o600
        client = server.client_for(settings)

        rows = _review_rows(con, settings, 6)
        ids = [r["row_id"] for r in rows]
        batch = push.push_batch(con, settings, client, "flow-A", row_ids=ids)
        assert batch is not None and batch.created and batch.new_tasks == 6
        again = push.push_batch(con, settings, client, "flow-B", row_ids=ids)
        assert again is not None and not again.created and again.new_tasks == 0
        assert again.batch_id == batch.batch_id
        tasks = {t.data["row_id"]: t.id for t in client.tasks.list(project=batch.ls_project_id, fields="all")}
        assert sorted(tasks) == sorted(ids)  # no duplicate task in Label Studio
        assert len(queries.batch_tasks(con, batch.batch_id)) == 6

        receiver = webhook.WebhookReceiver(con, settings, client, lambda *a: calls.append(a)).start()
        assert listening_addresses(receiver.port) == {"127.0.0.1"}
        webhook.register_webhook(client, batch.ls_project_id, receiver.url, receiver.secret, settings)

        fact = queries.chunk_facts(con, [rows[2]["chunk_id"]])[rows[2]["chunk_id"]][0]
        right = f"按规定，标准为{fact['raw']}。"
        plan = [
            _result("accept"),
            _result("accept", comment="ok"),
            _result("correct", right, fact["raw"], "rephrased"),
            _result("correct", "按规定，标准为987654元。", "987654元"),
            _result("reject", comment="question is unclear"),
        ]
        for row, result in zip(rows, plan, strict=False):
            client.annotations.create(id=tasks[row["row_id"]], result=result)
        progress = sync.batch_progress(con, settings, client, batch.batch_id)
        assert (progress.annotated, progress.remaining, progress.complete) == (5, 1, False)
        assert (progress.accepted, progress.corrected, progress.rejected) == (2, 2, 1)
        time.sleep(2.5)  # the receiver's re-checks have run
        assert calls == [] and receiver.events >= 5

        last = client.annotations.create(id=tasks[ids[5]], result=_result("accept"))
        assert _wait(lambda: calls, 15), "the webhook receiver never saw the batch complete"
        client.annotations.update(id=last.id, result=_result("accept", comment="still fine"))  # UPDATED event
        time.sleep(2.5)
        assert len(calls) == 1
        flow_run_id, batch_id, done = calls[0]
        assert (flow_run_id, batch_id, done.complete, done.tasks) == ("flow-B", batch.batch_id, True, 6)

        # The server dies between export and apply: the archive is applied on the next run, offline.
        path, _, _ = sync.export_batch(con, settings, client, batch.batch_id)
        assert path.is_file() and path.parent == settings.workspace / "review" / "exports"
        assert [_row(con, i)["status"] for i in ids] == ["needs_review"] * 6
        assert server.stop(settings)
        with pytest.raises(sync.LabelStudioUnavailable):
            sync.sync_batch(con, settings, client, batch.batch_id)
        statuses = [_row(con, i)["status"] for i in ids]
        assert statuses == ["approved", "approved", "corrected", "needs_review", "rejected", "approved"]
        assert _row(con, ids[0])["reviewer"] == ADMIN and _row(con, ids[0])["reviewed_at"] is not None
        corrected = _row(con, ids[2])
        assert corrected["answer"] == right and corrected["original_answer"] == rows[2]["answer"]
        assert fact["value"] in corrected["numbers"] and corrected["review_comment"] == "rephrased"
        flagged = _row(con, ids[3])
        assert flagged["answer"] == rows[3]["answer"]
        assert "correction states 987654元 which is not in the source" in flagged["verify_notes"]
        assert _row(con, ids[5])["review_comment"] == "still fine"
        assert queries.get_batch(con, batch.batch_id)["status"] == "synced"

        # Back up: syncing again changes nothing, twice.
        started = time.monotonic()
        server.start(settings)
        print(f"restart: {time.monotonic() - started:.0f} s")
        before = _snapshot(con, ids)
        for _ in range(2):
            result = sync.sync_batch(con, settings, client, batch.batch_id)
            assert result.applied == {} and result.unchanged == 6 and result.status == "synced"
            assert _snapshot(con, ids) == before

        # The flagged correction goes back to people in a new batch.
        retry = push.push_batch(con, settings, client, "flow-C", row_ids=[ids[3]])
        assert (
            retry is not None and retry.created and retry.row_count == 1 and retry.batch_id != batch.batch_id
        )
    finally:
        if receiver is not None:
            receiver.stop()
        server.stop(settings)
        con.close()

    token = json.loads(server.credentials_path(settings).read_text())["token"]
    password = json.loads(server.credentials_path(settings).read_text())["password"]
    out, err = capfd.readouterr()
    assert token not in out + err and password not in out + err
    for path in settings.workspace.rglob("*"):
        if path.is_file() and path.name != "credentials.json" and path.suffix in (".log", ".json", ".pid"):
            text = path.read_text(encoding="utf-8", errors="replace")
            assert token not in text and password not in text, path
