"""Push rows waiting for people (status ``needs_review``) to Label Studio as a review batch.

One Label Studio project per batch, not one project with a batch field, because a batch is the unit
everything else works in:
- completeness: a paused flow run waits for *its* batch; with a project per batch, "every task of the project
  has an annotation" is the test, with no filter that a later push could get wrong;
- export and sync: a project export is exactly the batch (no filtering of a growing project on every sync);
- webhooks carry the project id, which maps to one batch and one flow run without reading task data;
- the labelling config is frozen with the batch, so changing the interface never alters an open batch;
- a finished batch can be archived in Label Studio without touching the ones still open.
The cost, many projects over months, is cheap in Label Studio and keeps each one small.

Fact-first (issue #17): before choosing what people see, the person-verified ledger decides what it can
(``review.facts.settle``). A batch then holds one *fact task* per ledger fact that waiting rows rely on and no
person verified yet (the fewest facts that cover every such row's numbers), and *row tasks* only for rows the
ledger cannot decide (ungrounded numbers, conflicts, teacher-unsure, text and unanswerable rows, rows a person
already judged). Row tasks carry a Label Studio prediction with the ledger's suggested verdict (model_version
= the verifier's version), so a person accepts with one key where the ledger is confident. ``row_ids`` given
explicitly are pushed as row tasks, row by row (a flagged correction sent back to people, a demo).

Idempotent: a row that already has a task in a batch not yet synced is not pushed again, nor a fact with an
unanswered task; the import into
Label Studio lists the project's tasks first and adds only the rows it lacks, so a push interrupted between
the import and the warehouse write, then repeated, creates no duplicate task.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import duckdb

from review.facts import (
    VERIFIER_VERSION,
    choose_sentences,
    decide_row,
    questions_waiting_on,
    sentence_key,
    sentence_tasks,
    settle,
)
from review.labeling import CONFIG_VERSION, label_config, prediction_for, task_for_row, task_for_sentence
from review.server import base_url, retrying, transient
from review.sync import unavailable
from runtime.config import Settings
from warehouse import review as queries
from warehouse.db import transaction
from warehouse.gates import detect_conflicts

INSTRUCTION = (
    "<p>Two kinds of task. <b>Fact</b>: is the highlighted number a rule, parsed right? Keys: <b>a</b> correct,"
    " <b>c</b> wrong value/unit/subject (type the corrected number with its unit, or the subject), <b>r</b> not"
    " a rule (a date, a form number). Every row citing a fact you verify is decided by your verdict."
    " <b>Row</b>: check the answer against the highlighted source (pre-filled with the ledger's suggestion):"
    " <b>a</b> accept, <b>c</b> correct, <b>r</b> reject. Ctrl+Enter submits.</p>"
    "<p>核对数字：每个数字只核对一次，引用它的问题随之决定。核对答案：修改时填写完整的新答案和数字；"
    "原文中没有的数字不会被采纳。</p>"
)


@dataclass(frozen=True)
class BatchInfo:
    batch_id: str
    ls_project_id: int
    flow_run_id: str | None
    row_count: int  # tasks in the batch (fact tasks + row tasks)
    new_tasks: int  # tasks imported into Label Studio by this call
    created: bool  # False: no new rows, the latest open batch is returned
    url: str  # where annotators work
    fact_tasks: int = 0
    row_tasks: int = 0
    rows_decided: int = 0  # rows these tasks decide (row tasks' rows, and the rows waiting on the facts)


def _batch_id(row_ids: list[str]) -> str:
    digest = hashlib.sha256("\x1f".join(sorted(row_ids)).encode()).hexdigest()[:8]
    return f"rb-{datetime.now(UTC):%Y%m%dT%H%M%S}-{digest}"


def project_url(settings: Settings, ls_project_id: int) -> str:
    return f"{base_url(settings)}/projects/{ls_project_id}/data"


def _task_keys(task: Any) -> list[str]:
    """The task's keys in review_tasks.row_id: the row id of a row task, the fact ids of a fact task (one per
    fact of its sentence; ``fact_id`` alone in tasks made before sentence tasks)."""
    data = (task.get("data") if isinstance(task, dict) else getattr(task, "data", None)) or {}
    if data.get("row_id"):
        return [data["row_id"]]
    return (
        [str(f) for f in data.get("fact_ids") or [data["fact_id"]] if f] if data.get("kind") == "fact" else []
    )


def _task_id(task: Any) -> int:
    return int(task["id"] if isinstance(task, dict) else task.id)


def _list_tasks(client: Any, ls_project_id: int) -> dict[str, int]:
    found: dict[str, int] = {}
    for task in client.tasks.list(project=ls_project_id, fields="all"):
        for key in _task_keys(task):
            found.setdefault(key, _task_id(task))
    return found


def existing_tasks(settings: Settings, client: Any, ls_project_id: int) -> dict[str, int]:
    """row_id -> Label Studio task id of the tasks already in a project."""
    return retrying(settings)(_list_tasks)(client, ls_project_id)


def _import_missing(
    con: duckdb.DuckDBPyConnection, settings: Settings, client: Any, batch: dict[str, Any]
) -> int:
    """Import the batch's rows that its project lacks, then record every task id. Returns tasks imported."""
    batch_id, project_id = batch["batch_id"], int(batch["ls_project_id"])
    payloads: dict[str, dict[str, Any]] = {}
    row_tasks = queries.batch_tasks(con, batch_id)
    for r in row_tasks:
        task: dict[str, Any] = {
            "data": task_for_row(
                r,
                {"text": r["chunk_text"], "heading_path": r["heading_path"]},
                batch_id,
                doc_name=r["doc_name"],
            )
        }
        if r.get("suggested"):
            task["predictions"] = [prediction_for(r["suggested"], VERIFIER_VERSION)]
        payloads[r["row_id"]] = task
    facts = queries.batch_fact_tasks(con, batch_id)
    citing = questions_waiting_on(con, [f["fact_id"] for f in facts])
    groups: dict[str, list[dict[str, Any]]] = {}
    for f in facts:  # one task per sentence; its key is its first fact's id (task_group)
        groups.setdefault(f["task_group"] or f["fact_id"], []).append(f)
    for group, members in groups.items():
        payloads[group] = {"data": task_for_sentence(members, citing, batch_id)}
    imported = 0

    @retrying(settings)
    def sync_tasks() -> dict[str, int]:
        nonlocal imported
        present = _list_tasks(client, project_id)
        missing = [key for key in payloads if key not in present]
        if missing:
            client.projects.import_tasks(
                id=project_id, request=[payloads[k] for k in missing], return_task_ids=True
            )
            imported += len(missing)
            # Listing again (rather than trusting the response order) maps ids by row_id, whatever LS returns.
            present = _list_tasks(client, project_id)
        return present

    present = sync_tasks()
    keys = [*(r["row_id"] for r in row_tasks), *(f["fact_id"] for f in facts)]
    queries.set_task_ids(con, batch_id, {k: present[k] for k in keys if k in present})
    return imported


def push_batch(
    con: duckdb.DuckDBPyConnection,
    settings: Settings,
    client: Any,
    flow_run_id: str | None = None,
    *,
    limit: int | None = None,
    row_ids: list[str] | None = None,
) -> BatchInfo | None:
    """Make the rows waiting for people (at most ``limit``, or only ``row_ids``) a review batch.

    Returns the new batch; when every waiting row is already in an open batch, the latest open batch (its
    flow run id replaced by ``flow_run_id`` when given: the run now waiting is the one to resume); None when
    nothing waits for review at all. Raises ``LabelStudioUnavailable`` (naming the server) when Label Studio
    stops answering; pushing again after it is back completes the batch.
    """
    try:
        return _push(con, settings, client, flow_run_id, limit=limit, row_ids=row_ids)
    except Exception as exc:
        if not transient(exc):
            raise
        # What was recorded is safe: a batch whose import was not confirmed is finished by the next push,
        # which lists the project's tasks first and so imports nothing twice.
        raise unavailable(
            settings, "pushing a review batch", "push again: nothing is lost or duplicated", exc
        ) from exc


def _push(
    con: duckdb.DuckDBPyConnection,
    settings: Settings,
    client: Any,
    flow_run_id: str | None,
    *,
    limit: int | None,
    row_ids: list[str] | None,
) -> BatchInfo | None:
    # A push interrupted after the batch was recorded but before Label Studio confirmed the import.
    finished: tuple[dict[str, Any], int] | None = None
    for unfinished in queries.batches_missing_task_ids(con):
        batch = queries.get_batch(con, unfinished)
        if batch is not None:
            finished = (batch, _import_missing(con, settings, client, batch))
    if finished is not None and row_ids is None:
        # Pushing again after a crash completes the batch the interrupted push made, and stops there: an
        # uninterrupted `push --limit N` makes one batch of N rows, so the re-run must not add a second one.
        batch, imported = finished
        if flow_run_id and flow_run_id != batch["flow_run_id"]:
            queries.set_flow_run(con, batch["batch_id"], flow_run_id)
        project_id = int(batch["ls_project_id"])
        return BatchInfo(
            batch["batch_id"],
            project_id,
            flow_run_id or batch["flow_run_id"],
            int(batch["row_count"]),
            imported,
            True,
            project_url(settings, project_id),
        )

    plan = plan_batch(con, settings.similarity_threshold, limit=limit, row_ids=row_ids)
    if not plan.tasks:
        open_batches = [b for b in queries.list_batches(con) if b["status"] != "synced"]
        if row_ids is not None:  # the batch those rows are in, not just the newest one
            holding = set(queries.batches_of_rows(con, row_ids))
            open_batches = [b for b in open_batches if b["batch_id"] in holding]
        if not open_batches:
            return None
        latest = open_batches[-1]
        if flow_run_id and flow_run_id != latest["flow_run_id"]:
            queries.set_flow_run(con, latest["batch_id"], flow_run_id)
        return BatchInfo(
            latest["batch_id"],
            int(latest["ls_project_id"]),
            flow_run_id or latest["flow_run_id"],
            int(latest["row_count"]),
            0,
            False,
            project_url(settings, int(latest["ls_project_id"])),
        )

    ids = [*plan.row_ids, *plan.fact_ids]
    batch_id = _batch_id(ids)

    @retrying(settings)
    def create_project() -> int:
        project = client.projects.create(
            title=f"slm review {batch_id}",
            description=(
                f"{len(plan.fact_tasks)} fact tasks, {len(plan.row_ids)} row tasks deciding {plan.rows_decided}"
                f" rows; config {CONFIG_VERSION}; flow run {flow_run_id or '-'}"
            ),
            label_config=label_config(),
            show_collab_predictions=True,  # the ledger's suggestion pre-fills row tasks
            model_version=VERIFIER_VERSION,
            expert_instruction=INSTRUCTION,
            show_instruction=True,
            show_skip_button=False,  # a skipped task never completes the batch; reject says "not usable"
            maximum_annotations=1,
        )
        return int(project.id)

    # The project first: if this process dies now, an empty project is left over, never a lost row.
    project_id = create_project()
    queries.create_batch(
        con, batch_id, project_id, flow_run_id, plan.row_ids, plan.fact_tasks, plan.suggested
    )
    batch = queries.get_batch(con, batch_id)
    assert batch is not None
    imported = _import_missing(con, settings, client, batch)
    return BatchInfo(
        batch_id,
        project_id,
        flow_run_id,
        plan.tasks,
        imported,
        True,
        project_url(settings, project_id),
        len(plan.fact_tasks),
        len(plan.row_ids),
        plan.rows_decided,
    )


@dataclass(frozen=True)
class Plan:
    """What a new batch would hold: row tasks (with the ledger's suggested verdict), fact tasks (one per source
    sentence: the facts a person judges in it), and how many rows those decide; ``waiting``: rows whose facts
    are already in an open batch."""

    row_ids: list[str]
    suggested: dict[str, str]
    fact_tasks: list[tuple[str, ...]]
    rows_decided: int
    waiting: int = 0
    ledger: dict[str, int] = field(default_factory=dict)  # rows the verified ledger decided now, by outcome
    why: dict[str, int] = field(default_factory=dict)  # row tasks by why the ledger cannot decide them

    @property
    def fact_ids(self) -> list[str]:
        return [f for task in self.fact_tasks for f in task]

    @property
    def tasks(self) -> int:
        return len(self.row_ids) + len(self.fact_tasks)


def plan_batch(
    con: duckdb.DuckDBPyConnection,
    similarity_threshold: float,
    *,
    limit: int | None = None,
    row_ids: list[str] | None = None,
) -> Plan:
    """Refresh conflicts, let the person-verified ledger decide what it can, then choose the tasks: with
    ``row_ids``, those rows as row tasks; else one fact task per source sentence holding unverified facts
    that waiting rows rely on (the fewest sentences that cover every such row's numbers), and row tasks for
    the rows the ledger cannot decide (among the first ``limit`` waiting rows)."""
    detect_conflicts(con, similarity_threshold)
    with transaction(con):
        settled = settle(con)
    candidates = queries.review_candidates(con, limit=limit, row_ids=row_ids)
    if row_ids is not None:
        ids = [r["row_id"] for r in candidates]
        facts = queries.facts_with_verdicts(con, sorted({r["chunk_id"] for r in candidates}))
        rows = {r["row_id"]: r for r in queries.ledger_rows(con, ids, decidable_only=False)}
        suggested = {
            i: o.suggested
            for i in ids
            if i in rows and (o := decide_row(rows[i], facts[rows[i]["chunk_id"]])).suggested
        }
        return Plan(ids, suggested, [], len(ids), ledger=settled.changed)
    person, suggested, needs, why = [], {}, {}, Counter()
    for row in candidates:
        outcome = settled.outcomes.get(row["row_id"])
        if outcome is not None and outcome.kind == "wait":
            needs[row["row_id"]] = outcome.needs
            continue
        person.append(row["row_id"])
        why[outcome.reason if outcome is not None else "a person's row verdict was flagged"] += 1
        if outcome is not None and outcome.suggested:
            suggested[row["row_id"]] = outcome.suggested
    covered = settled.open_facts | settled.verified_facts
    sentence_of = {f: sentence_key(fact) for f, fact in settled.facts.items()}
    sentences = choose_sentences([n for ns in needs.values() for n in ns], covered, sentence_of)
    fact_tasks = sentence_tasks(sentences, settled.facts.values(), covered)
    chosen = {f for task in fact_tasks for f in task} | settled.verified_facts
    # A row is decided by this batch when every number's need has a fact verified or asked about here.
    decided = sum(1 for ns in needs.values() if all(chosen.intersection(n) for n in ns))
    return Plan(
        person,
        suggested,
        fact_tasks,
        len(person) + decided,
        waiting=len(needs) - decided,
        ledger=settled.changed,
        why=dict(why.most_common()),
    )
