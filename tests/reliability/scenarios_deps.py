"""Dead and slow dependencies (issue #10, part 2): teacher endpoints that fail in random order, Label Studio
stopped in the middle of a push and of a sync, and the Prefect server restarted under a paused flow.

Each scenario is a plain function ``(empty work dir) -> FaultOutcome`` so that ``bench/faults.py`` can run it
and ``tests/reliability/test_deps.py`` can assert on it. What a scenario checks beyond the lost counts goes
to ``DepsOutcome.problems`` (one line each; empty when all held) and its measurements to ``details``.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from runtime.config import Settings, load_settings
from tasks.distill.distill import distill, make_teacher
from tasks.ingest.documents import ingest_file
from tests.fakes import (
    HANG,
    HOPELESS,
    MALFORMED,
    OK,
    RATE_LIMIT,
    SERVER_ERROR,
    TRUNCATED,
    FakeServer,
    Reply,
    model_answer,
    random_faults,
)
from tests.reliability.outcome import FaultOutcome
from warehouse.db import connect


@dataclass
class DepsOutcome(FaultOutcome):
    """A FaultOutcome with the scenario's own checks: ``problems`` lists every property that did not hold."""

    problems: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def check(self, ok: bool, problem: str) -> bool:
        if not ok:
            self.problems.append(problem)
        return ok


# A server's first start on an empty data folder spends minutes in database migrations (Label Studio,
# Prefect); what these scenarios test is the restart, so a freshly migrated folder is kept here and copied.
TEMPLATES = Path.home() / ".cache" / "slm-factory" / "test-templates"
_NOT_TEMPLATE = ("*.log", "*.pid", "export")


def seed_from_template(name: str, target: Path) -> bool:
    """Copy template ``name`` into ``target``; False when there is none yet (the caller makes it)."""
    template = TEMPLATES / name
    if not template.is_dir():
        return False
    shutil.copytree(template, target, dirs_exist_ok=True)  # copy2: credentials keep mode 0600
    return True


def save_template(name: str, source: Path) -> None:
    """Keep ``source`` (a stopped server's freshly migrated data folder) as template ``name``."""
    if (TEMPLATES / name).exists():
        return
    TEMPLATES.mkdir(parents=True, exist_ok=True)
    staging = TEMPLATES / f".{name}.{os.getpid()}"
    shutil.copytree(source, staging, ignore=shutil.ignore_patterns(*_NOT_TEMPLATE))
    try:
        staging.rename(TEMPLATES / name)  # atomic: a concurrent run sees the whole template or none
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)  # another run saved it first


def start_from_template(name: str, folder: Path, start: Callable[[], Any], stop: Callable[[], Any]) -> float:
    """Start a server whose data lives in ``folder``, seeded from template ``name`` (made on the first run:
    start, stop, save, start again). Returns the seconds the start of the seeded or new folder took."""
    fresh = not seed_from_template(name, folder)
    started = time.monotonic()
    start()
    elapsed = time.monotonic() - started
    if fresh:
        stop()
        save_template(name, folder)
        start()
    return round(elapsed, 1)


# ---------------------------------------------------------------------------------------------------------
# Teachers: a fake endpoint with a seeded fault schedule

# Per call; HTTP faults are retried (up to TEACHER_ATTEMPTS), bad JSON is repaired, prose fails the chunk.
TEACHER_FAULTS = {
    RATE_LIMIT: 0.10,
    SERVER_ERROR: 0.08,
    HANG: 0.01,
    MALFORMED: 0.08,
    TRUNCATED: 0.08,
    HOPELESS: 0.03,
}
TEACHER_ATTEMPTS = 3
TEACHER_TIMEOUT_S = 10.0  # a scheduled hang costs this much of one of the 8 workers; an answer, milliseconds
HANG_S = TEACHER_TIMEOUT_S + 5.0
DOCS, ARTICLES = 6, 140  # 846 chunks: about 1,000 calls in the first run with the faults above
_ANSWERING = (OK, TRUNCATED, MALFORMED, HOPELESS)  # outcomes that answer 200 with usage
_LOCATION = re.compile(r"^文件：(?P<doc>.+)\n位置：(?P<where>.+)$", re.MULTILINE)


def synthetic_rules(folder: Path, docs: int = DOCS, articles: int = ARTICLES) -> list[Path]:
    """Small rule documents, one number per article, every article's text unique (so no two chunks share a
    teacher cache key)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for d in range(docs):
        lines = [f"# 测试学院{d + 1}号经费管理办法", "", "## 第一章　总则", ""]
        for a in range(articles):
            amount = 100 + d * 1000 + a * 5
            lines += [
                f"第{a + 1}条　第{d + 1}类第{a + 1}项补助标准为每人每天不超过{amount}元，由财务处审核。",
                "",
            ]
        path = folder / f"rules_{d + 1:02d}.md"
        path.write_text("\n".join(lines), encoding="utf-8")
        paths.append(path)
    return paths


def _teacher_settings(work: Path, teacher: str) -> Settings:
    # Zero latency, tiny backoffs: the schedule, not the clock, makes the faults. The client's timeout is far
    # above what an answer takes even on a loaded machine (an answer that timed out would be one the server
    # counted and the client did not: an unscheduled fault); a hang lasts longer still (HANG_S).
    return load_settings(
        work / "ws",
        teacher=teacher,
        gemini_api_keys="fake-key-1,fake-key-2,fake-key-3",
        openai_api_key="fake-key",
        teacher_timeout_s=TEACHER_TIMEOUT_S,
        teacher_max_attempts=TEACHER_ATTEMPTS,
        teacher_backoff_s=0.005,
        key_cooldown_s=0.02,
        distill_concurrency=8,
    )


def _fake(teacher: str, schedule: Any) -> FakeServer:
    if teacher == "gemini":
        from tests.fakes.gemini_server import FakeGeminiServer

        return FakeGeminiServer(schedule, hang_s=HANG_S)
    from tests.fakes.openai_server import FakeOpenAIServer

    return FakeOpenAIServer(schedule, hang_s=HANG_S)


def _prompt(teacher: str, body: dict[str, Any]) -> str:
    if teacher == "gemini":
        from tests.fakes.gemini_server import user_prompt
    else:
        from tests.fakes.openai_server import user_prompt
    return user_prompt(body)


def _server_usage(teacher: str, server: FakeServer) -> tuple[int, int, int]:
    """(calls, prompt tokens, completion tokens) as the fake server counted and reported them."""
    prompt_tokens = completion_tokens = 0
    for call, body in zip(server.calls, server.bodies, strict=True):
        if call.outcome in _ANSWERING:
            _, prompt_n, text_n = model_answer(Reply(outcome=call.outcome), _prompt(teacher, body))
            prompt_tokens += prompt_n
            completion_tokens += text_n
    return len(server.calls), prompt_tokens, completion_tokens


def _chunk_of_calls(
    teacher: str, server: FakeServer, chunk_by_location: dict[tuple[str, str], str]
) -> set[str]:
    """The chunks the server was asked about (each prompt names its document and heading path)."""
    asked = set()
    for body in server.bodies:
        match = _LOCATION.search(_prompt(teacher, body))
        if match:
            asked.add(chunk_by_location.get((match["doc"], match["where"]), "?"))
    return asked


def _call_states(con: duckdb.DuckDBPyConnection, teacher: str) -> dict[str, tuple[str, int]]:
    """chunk_id -> (status, row_count) of the teacher's recorded call."""
    rows = con.execute(
        "SELECT chunk_id, status, row_count FROM teacher_calls WHERE teacher = ?", [teacher]
    ).fetchall()
    return {chunk_id: (status, int(count or 0)) for chunk_id, status, count in rows}


def _teacher_run(
    con: duckdb.DuckDBPyConnection,
    settings: Settings,
    teacher: str,
    schedule: Any,
    outcome: DepsOutcome,
    label: str,
    chunk_by_location: dict[tuple[str, str], str],
) -> tuple[Any, set[str]]:
    """One distillation run against a fresh fake server; checks its cost accounting against the server."""
    with _fake(teacher, schedule) as server:
        key = "gemini_base_url" if teacher == "gemini" else "openai_base_url"
        run_settings = settings.model_copy(update={key: server.base_url})
        summary = distill(con, run_settings, make_teacher(run_settings))
        recorded = con.execute("SELECT calls FROM distill_runs WHERE run_id = ?", [summary.run_id]).fetchone()
        server.settle(at_least=int(recorded[0]) if recorded else 0)
        server_calls = list(server.calls)
        calls, prompt_tokens, completion_tokens = _server_usage(teacher, server)
        asked = _chunk_of_calls(teacher, server, chunk_by_location)
    for kind, count in Counter(c.outcome for c in server_calls).items():
        if kind != OK:
            outcome.add_fault(kind, count)
    outcome.details[f"{label}_calls"] = calls
    run = con.execute(
        "SELECT calls, prompt_tokens, completion_tokens, cost_usd, finished_at FROM distill_runs WHERE run_id = ?",
        [summary.run_id],
    ).fetchone()
    per_chunk = con.execute(
        "SELECT coalesce(sum(calls), 0), coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0),"
        " coalesce(sum(cost_usd), 0) FROM teacher_calls WHERE run_id = ? AND teacher = ?",
        [summary.run_id, teacher],
    ).fetchone()
    assert run is not None and per_chunk is not None
    cost = (
        prompt_tokens * settings.price_input_per_mtok + completion_tokens * settings.price_output_per_mtok
    ) / 1e6
    server_side = (calls, prompt_tokens, completion_tokens)
    outcome.check(run[4] is not None, f"{label}: the run was not marked finished")
    outcome.check(
        tuple(run[:3]) == server_side,
        f"{label}: run recorded calls/tokens {tuple(run[:3])}, the server saw {server_side}",
    )
    outcome.check(
        tuple(per_chunk[:3]) == server_side,
        f"{label}: teacher calls recorded {tuple(per_chunk[:3])}, the server saw {server_side}",
    )
    outcome.check(
        abs(run[3] - cost) < 1e-9 and abs(per_chunk[3] - cost) < 1e-9,
        f"{label}: recorded cost {run[3]:.6f}/{per_chunk[3]:.6f} USD, expected {cost:.6f}",
    )
    return summary, asked


def _rows_by_chunk(con: duckdb.DuckDBPyConnection, teacher: str) -> Counter[str]:
    return Counter(
        c for (c,) in con.execute("SELECT chunk_id FROM qa_rows WHERE teacher = ?", [teacher]).fetchall()
    )


def _duplicate_rows(con: duckdb.DuckDBPyConnection) -> int:
    found = con.execute(
        "SELECT coalesce(sum(n - 1), 0) FROM (SELECT count(*) AS n FROM qa_rows"
        " GROUP BY chunk_id, question, answer HAVING count(*) > 1)"
    ).fetchone()
    return int(found[0]) if found else 0


def teacher_faults(work: Path, teacher: str, seed: int = 10) -> DepsOutcome:
    """Distil ~780 small chunks against a fake ``teacher`` endpoint answering 429, 500, hangs, malformed,
    truncated and hopeless text in a seeded random order; then re-run twice (faulty, then clean) and once
    more (nothing left to do).

    Holds when: every chunk has rows or a recorded failure after every run; each run's recorded calls,
    tokens and cost equal what the server saw and reported; a re-run asks only about the chunks that failed
    and adds no duplicate row; the last run makes no call at all."""
    outcome = DepsOutcome(f"teacher endpoint faults ({teacher})")
    settings = _teacher_settings(work, teacher)
    con = connect(settings.warehouse_path)
    try:
        for path in synthetic_rules(work / "docs"):
            ingest_file(con, path, settings)
        chunks = {
            (doc, where or "（前言）"): chunk_id
            for chunk_id, doc, where in con.execute(
                "SELECT c.chunk_id, d.name, c.heading_path FROM chunks c JOIN documents d USING (doc_id)"
            ).fetchall()
        }
        all_chunks = set(chunks.values())
        outcome.details["chunks"] = len(all_chunks)
        schedules = [
            ("first run", random_faults(seed, TEACHER_FAULTS)),
            ("re-run with faults", random_faults(seed + 1, TEACHER_FAULTS)),
            ("clean re-run", None),
            ("nothing left", None),
        ]
        failed: set[str] | None = None
        for label, schedule in schedules:
            rows_before = _rows_by_chunk(con, teacher)
            summary, asked = _teacher_run(con, settings, teacher, schedule, outcome, label, chunks)
            states = _call_states(con, teacher)
            rows = _rows_by_chunk(con, teacher)
            if failed is not None:  # a re-run: only what failed before is asked again
                outcome.check(
                    asked == failed,
                    f"{label}: asked about {len(asked)} chunks, {len(failed)} had failed"
                    f" ({len(asked - failed)} asked needlessly, {len(failed - asked)} not retried)",
                )
                changed = {c for c in all_chunks - failed if rows[c] != rows_before[c]}
                outcome.check(
                    not changed, f"{label}: rows changed for {len(changed)} chunks that had not failed"
                )
            silent = [c for c in all_chunks if c not in states or (states[c][0] == "ok" and rows[c] == 0)]
            outcome.rows_lost += len(silent)
            outcome.check(
                not silent, f"{label}: {len(silent)} chunks have neither rows nor a recorded failure"
            )
            failed = {c for c, (status, _) in states.items() if status == "failed"}
            outcome.check(
                summary.failed == len(failed),
                f"{label}: the run reported {summary.failed} failures, {len(failed)} are recorded",
            )
            outcome.details[f"{label}_failed"] = len(failed)
            outcome.runs_completed += 1
        outcome.check(not failed, f"{len(failed or ())} chunks still failed after a clean re-run")
        outcome.check(outcome.details["nothing left_calls"] == 0, "the last re-run called the teacher again")
        outcome.check(
            outcome.details["first run_calls"] >= 1000,
            f"only {outcome.details['first run_calls']} calls in the first run (want 1,000)",
        )
        outcome.duplicates = _duplicate_rows(con)
        outcome.details["rows"] = sum(_rows_by_chunk(con, teacher).values())
    finally:
        con.close()
    outcome.notes = (
        f"{outcome.details['chunks']} chunks, {outcome.details['first run_calls']} calls then "
        f"{outcome.details['re-run with faults_calls']} + {outcome.details['clean re-run_calls']} on "
        f"re-runs; {outcome.details['first run_failed']} chunks failed first"
    )
    return outcome


def gemini_teacher_faults(work: Path) -> FaultOutcome:
    """The Gemini teacher (google-genai) against a faulty fake Gemini API."""
    return teacher_faults(work, "gemini", seed=10)


def openai_teacher_faults(work: Path) -> FaultOutcome:
    """The OpenAI-compatible teacher (openai client) against a faulty fake endpoint."""
    return teacher_faults(work, "openai", seed=20)


# ---------------------------------------------------------------------------------------------------------
# Label Studio stopped in the middle of a push and of a sync

BATCH_ROWS = 6


class Tripwire:
    """Wraps an SDK client: the first call of ``path`` (``"projects.import_tasks"``) runs ``hook`` before it
    (or after it returns, with ``after=True``). Gives a fault an observable moment instead of a sleep."""

    def __init__(
        self,
        target: Any,
        path: str,
        hook: Callable[[], None],
        *,
        after: bool = False,
        _prefix: str = "",
        _state: dict[str, bool] | None = None,
    ) -> None:
        self._target, self._path, self._hook, self._after = target, path, hook, after
        self._prefix = _prefix
        self._state = _state if _state is not None else {"fired": False}

    @property
    def fired(self) -> bool:
        return self._state["fired"]

    def _fire(self) -> None:
        if not self._state["fired"]:
            self._state["fired"] = True
            self._hook()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        full = self._prefix + name
        if full == self._path:

            def tripped(*args: Any, **kwargs: Any) -> Any:
                if not self._after:
                    self._fire()
                result = attr(*args, **kwargs)
                if self._after:
                    self._fire()
                return result

            return tripped
        if self._path.startswith(full + "."):
            return Tripwire(
                attr, self._path, self._hook, after=self._after, _prefix=full + ".", _state=self._state
            )
        return attr


def _slm(work: Path, *args: str) -> tuple[int, str]:
    """``slm --workspace <ws> ARGS`` in a subprocess, as a user runs it: (exit status, stdout + stderr)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("SLM_")}
    env["COLUMNS"] = "200"  # one line per message, whatever the terminal
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "--workspace", str(work / "ws"), *args],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, done.stdout + done.stderr


def _annotate(client: Any, project_id: int, verdicts: list[str]) -> dict[str, tuple[int, str]]:
    """One annotation per task, verdicts in turn: row_id -> (annotation id, verdict)."""
    from tests.test_review_labelstudio import _result

    done = {}
    tasks = sorted(client.tasks.list(project=project_id, fields="all"), key=lambda t: t.id)
    for task, verdict in zip(tasks, verdicts * len(tasks), strict=False):
        annotation = client.annotations.create(id=task.id, result=_result(verdict, comment=f"{verdict} ok"))
        done[task.data["row_id"]] = (int(annotation.id), verdict)
    return done


def _ls_duplicates(client: Any, project_ids: list[int]) -> int:
    """Tasks for the same row in one project, beyond the first."""
    extra = 0
    for project_id in project_ids:
        rows = Counter(t.data["row_id"] for t in client.tasks.list(project=project_id, fields="all"))
        extra += sum(n - 1 for n in rows.values())
    return extra


def _review_state(con: duckdb.DuckDBPyConnection) -> list[tuple[Any, ...]]:
    return con.execute(
        "SELECT row_id, status, reviewer, answer, review_comment FROM qa_rows ORDER BY row_id"
    ).fetchall()


def labelstudio_stopped(work: Path) -> DepsOutcome:
    """A real Label Studio server dies while a push and a sync are both in flight, then comes back.

    Batch A is pushed and annotated. Then batch B is pushed; right after Label Studio accepted B's tasks (and
    before the push could record their ids) a sync of A starts, and once A's export has been read the server
    is stopped: the sync fails before archiving anything, the push before recording task ids. `slm review
    push` and `slm review sync` then fail with one line naming the server. After a restart, pushing again
    completes B without a duplicate task, and syncing applies every annotation of A and B exactly once."""
    from review import server

    outcome = DepsOutcome("Label Studio stopped during push and sync")
    ws = work / "ws"
    ws.mkdir(parents=True, exist_ok=True)
    (ws / "slm.toml").write_text(
        f"labelstudio_port = {server.free_port()}\nlabelstudio_attempts = 2\nlabelstudio_backoff_s = 0.05\n",
        encoding="utf-8",
    )
    settings = load_settings(ws)
    url = server.base_url(settings)
    server.ensure_installed(settings)
    try:
        return _labelstudio_stopped(work, settings, url, outcome)
    finally:  # the scenario stops and restarts the server; whatever fails, it is not left running
        server.stop(settings)


def _labelstudio_stopped(work: Path, settings: Settings, url: str, outcome: DepsOutcome) -> DepsOutcome:
    from review import push, server, sync
    from warehouse import review as review_queries

    con = connect(settings.warehouse_path)
    try:
        for path in synthetic_rules(work / "docs", docs=1, articles=20):
            ingest_file(con, path, settings)
        distill(con, settings, make_teacher(settings))
        outcome.details["first_start_s"] = start_from_template(
            f"labelstudio-{settings.labelstudio_version}",
            server.data_dir(settings),
            lambda: server.start(settings),
            lambda: server.stop(settings),
        )
        client = server.client_for(settings)
        waiting = [r["row_id"] for r in review_queries.review_candidates(con, limit=2 * BATCH_ROWS)]
        rows_a, rows_b = waiting[:BATCH_ROWS], waiting[BATCH_ROWS:]
        batch_a = push.push_batch(con, settings, client, row_ids=rows_a)
        assert batch_a is not None and batch_a.new_tasks == BATCH_ROWS
        annotations = _annotate(client, batch_a.ls_project_id, ["accept", "reject", "accept"])
        before = _review_state(con)
        errors: dict[str, BaseException] = {}

        def stop_server() -> None:
            server.stop(settings)
            outcome.add_fault("labelstudio_stopped")

        def sync_a_while_pushing() -> None:
            # B's tasks are in Label Studio, their ids not yet recorded; now A's sync runs into the stop.
            stopper = Tripwire(client, "users.get", stop_server)
            try:
                sync.sync_batch(con, settings, stopper, batch_a.batch_id)
            except Exception as exc:
                errors["sync"] = exc
            outcome.check(stopper.fired, "the sync never reached the point where the server is stopped")

        tripped = Tripwire(client, "projects.import_tasks", sync_a_while_pushing, after=True)
        try:
            push.push_batch(con, settings, tripped, row_ids=rows_b)
        except Exception as exc:
            errors["push"] = exc
        outcome.check(tripped.fired, "the push never imported tasks")
        for what in ("push", "sync"):
            error = errors.get(what)
            outcome.check(
                isinstance(error, sync.LabelStudioUnavailable) and url in str(error),
                f"{what} with the server stopped raised {type(error).__name__}: {error}",
            )
        outcome.check(_review_state(con) == before, "rows changed although nothing was synced")
        outcome.check(
            not review_queries.pending_exports(con, batch_a.batch_id), "an export was half recorded"
        )
        pending = review_queries.batches_missing_task_ids(con)
        outcome.check(len(pending) == 1, f"{len(pending)} batches wait for their import to be confirmed")
    finally:
        con.close()

    # The commands a user would type while the server is down: one line naming the server, no traceback.
    for command in (("review", "push"), ("review", "sync")):
        code, output = _slm(work, *command)
        outcome.check(
            code == 1 and url in output and "Traceback" not in output,
            f"`slm {' '.join(command)}` with Label Studio down: exit {code}, {output.strip()[-300:]!r}",
        )

    con = connect(settings.warehouse_path)
    try:
        started = time.monotonic()
        server.start(settings)
        outcome.details["restart_s"] = round(time.monotonic() - started, 1)
        outcome.runs_completed += 1
        again = push.push_batch(con, settings, client, row_ids=rows_b)
        outcome.check(
            again is not None and not again.created and again.new_tasks == 0,
            f"pushing again after the restart gave {again}",
        )
        outcome.check(not review_queries.batches_missing_task_ids(con), "a batch still lacks its task ids")
        batches = [b for b in review_queries.list_batches(con)]
        projects = [int(b["ls_project_id"]) for b in batches]
        outcome.duplicates += _ls_duplicates(client, projects)
        for batch in batches:
            tasks = review_queries.batch_tasks(con, batch["batch_id"])
            outcome.check(
                len(tasks) == BATCH_ROWS and all(t["ls_task_id"] for t in tasks),
                f"batch {batch['batch_id']} has {len(tasks)} tasks, some without a task id",
            )
        batch_b = next(b for b in batches if b["batch_id"] != batch_a.batch_id)
        annotations.update(_annotate(client, int(batch_b["ls_project_id"]), ["reject", "accept"]))
        applied = Counter[str]()
        for batch in batches:
            result = sync.sync_batch(con, settings, client, batch["batch_id"])
            applied.update(result.applied)
            outcome.check(
                result.status == "synced", f"batch {batch['batch_id']} is {result.status} after sync"
            )
        outcome.check(
            sum(applied.values()) == len(annotations),
            f"sync applied {dict(applied)} for {len(annotations)} annotations",
        )
        for batch in batches:  # a second sync applies nothing again
            result = sync.sync_batch(con, settings, client, batch["batch_id"])
            outcome.duplicates += sum(result.applied.values())
        applied_ids = dict(con.execute("SELECT row_id, annotation_id FROM review_tasks").fetchall())
        status = dict(con.execute("SELECT row_id, status FROM qa_rows").fetchall())
        expected_status = {"accept": "approved", "reject": "rejected"}
        outcome.annotations_lost = sum(
            1
            for row_id, (annotation_id, verdict) in annotations.items()
            if applied_ids.get(row_id) != annotation_id or status.get(row_id) != expected_status[verdict]
        )
        outcome.details["annotations"] = len(annotations)
        outcome.runs_completed += 1
    finally:
        con.close()
        server.stop(settings)
    outcome.notes = (
        f"{len(annotations)} annotations in 2 batches; first start {outcome.details['first_start_s']} s,"
        f" restart {outcome.details['restart_s']} s"
    )
    return outcome


# ---------------------------------------------------------------------------------------------------------
# The Prefect server restarted while a flow run is paused for review

PAUSED_BATCH = "rb-restart"
_FLOW_SCRIPT = """
import json, sys
from tests.reliability.scenarios_deps import review_paused_flow
print("RESULT " + json.dumps(review_paused_flow(sys.argv[1], sys.argv[2])), flush=True)
"""


def review_paused_flow(workspace: str, batch_id: str) -> dict[str, Any]:
    """The review wait of the build-dataset flow (``flows.build_dataset.wait_for_review``), alone."""
    from prefect import flow
    from prefect.runtime import flow_run

    from flows.build_dataset import wait_for_review
    from warehouse import review as review_queries
    from warehouse.db import open_warehouse

    @flow(name="review-pause-restart")
    def paused(workspace: str, batch_id: str) -> dict[str, Any]:
        settings = load_settings(workspace)
        with open_warehouse(settings.warehouse_path) as con:
            review_queries.set_flow_run(con, batch_id, str(flow_run.id))
            batch = review_queries.get_batch(con, batch_id)
        assert batch is not None
        return wait_for_review(settings, batch).model_dump()

    return paused(workspace, batch_id)


class _AllAnnotated:
    """Label Studio's task listing for a batch whose every task has an accept verdict (the resume path asks
    Label Studio for completeness; Label Studio itself is exercised in ``labelstudio_stopped``)."""

    def __init__(self, total: int) -> None:
        self.total = total

    def list(self, project: int, fields: str = "all") -> list[dict[str, Any]]:
        verdict = {"from_name": "verdict", "type": "choices", "value": {"choices": ["accept"]}}
        return [
            {"id": i, "data": {}, "annotations": [{"id": i, "result": [verdict], "was_cancelled": False}]}
            for i in range(self.total)
        ]


def _flow_state(api: str, run_id: str) -> str | None:
    import httpx

    try:
        response = httpx.get(f"{api}/flow_runs/{run_id}", timeout=5.0)
    except httpx.HTTPError:
        return None
    return (response.json().get("state") or {}).get("type") if response.status_code == 200 else None


def _wait_for(predicate: Callable[[], Any], timeout_s: float, poll_s: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    return predicate()


def prefect_restarted_while_paused(work: Path) -> DepsOutcome:
    """A flow run paused for review (in its own process, as a worker runs it) while our real Prefect server
    (deployments/server.py, loopback, SQLite under the workspace) is stopped and started again.

    Holds when: after the restart the same flow run is still Paused; resuming it through the project's resume
    path (``review.resume.resume_batch``, what `slm review resume` and the webhook call) completes it, and the
    flow returns the review input it was resumed with."""
    import subprocess
    import sys

    from prefect.settings import PREFECT_API_URL, temporary_settings

    from deployments import server as prefect_server
    from review.resume import resume_batch
    from review.server import free_port
    from warehouse import review as review_queries

    outcome = DepsOutcome("Prefect server restarted while a flow is paused")
    settings = load_settings(work / "ws", prefect_port=free_port())
    api = prefect_server.api_url(settings)
    con = connect(settings.warehouse_path)
    try:
        for path in synthetic_rules(work / "docs", docs=1, articles=4):
            ingest_file(con, path, settings)
        distill(con, settings, make_teacher(settings))
        row_ids = [r["row_id"] for r in review_queries.review_candidates(con, limit=3)]
        review_queries.create_batch(con, PAUSED_BATCH, 7, None, row_ids)
    finally:
        con.close()
    log = (work / "flow.log").open("w")
    flow_process: subprocess.Popen[str] | None = None
    try:
        import prefect

        outcome.details["start_s"] = start_from_template(
            f"prefect-{prefect.__version__}",
            prefect_server.prefect_home(settings),
            lambda: prefect_server.start_server(settings),
            lambda: prefect_server.stop(settings, "server"),
        )
        env = prefect_server.prefect_env(settings)
        flow_process = subprocess.Popen(
            [sys.executable, "-c", _FLOW_SCRIPT, str(settings.workspace), PAUSED_BATCH],
            cwd=Path(__file__).resolve().parents[2],
            env=env,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )

        def paused_run() -> str | None:
            from warehouse.db import open_warehouse

            try:
                with open_warehouse(settings.warehouse_path, read_only=True) as ro:
                    run_id = (review_queries.get_batch(ro, PAUSED_BATCH) or {}).get("flow_run_id")
            except Exception:  # the flow process holds the warehouse for a moment
                return None
            return run_id if run_id and _flow_state(api, run_id) == "PAUSED" else None

        run_id = _wait_for(paused_run, 120)
        if not outcome.check(bool(run_id), "the flow never paused"):
            return outcome
        prefect_server.stop(settings, "server")
        outcome.add_fault("prefect_server_stopped")
        outcome.check(_flow_state(api, run_id) is None, "the Prefect server still answered after the stop")
        started = time.monotonic()
        prefect_server.start_server(settings)
        outcome.details["restart_s"] = round(time.monotonic() - started, 1)
        state = _flow_state(api, run_id)
        outcome.check(state == "PAUSED", f"after the restart flow run {run_id} is {state}, not PAUSED")
        outcome.check(
            flow_process.poll() is None, f"the paused flow process exited ({flow_process.returncode})"
        )
        with temporary_settings(updates={PREFECT_API_URL: api}), connect(settings.warehouse_path) as rw:
            resumed, _ = resume_batch(rw, settings, type("Client", (), {"tasks": _AllAnnotated(3)})())
        outcome.check(resumed == PAUSED_BATCH, f"resumed batch {resumed}")
        try:
            out, _ = flow_process.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            out = ""
        result = next((line[7:] for line in out.splitlines() if line.startswith("RESULT ")), None)
        outcome.check(
            flow_process.returncode == 0 and result is not None,
            f"the resumed flow exited {flow_process.returncode} without a result (see {log.name})",
        )
        import json

        done = json.loads(result) if result else {}
        outcome.check(
            done.get("batch_id") == PAUSED_BATCH and done.get("remaining") == 0,
            f"the flow was resumed with {done}",
        )
        state = _wait_for(lambda: _flow_state(api, run_id) == "COMPLETED", 30)
        outcome.check(
            bool(state), f"flow run {run_id} is {_flow_state(api, run_id)} at the end, not COMPLETED"
        )
        if state:
            outcome.runs_completed += 1
    finally:
        if flow_process is not None and flow_process.poll() is None:
            flow_process.kill()
            flow_process.wait()
        log.close()
        prefect_server.stop(settings, "server")
    outcome.notes = (
        f"server start {outcome.details.get('start_s')} s, restart {outcome.details.get('restart_s')} s;"
        " the paused run survived and completed"
    )
    return outcome


SCENARIOS: list[Callable[[Path], FaultOutcome]] = [
    gemini_teacher_faults,
    openai_teacher_faults,
    labelstudio_stopped,
    prefect_restarted_while_paused,
]
