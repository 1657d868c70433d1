"""Read a review batch back from Label Studio and apply the verdicts to the warehouse.

Order matters, so that no annotation is ever lost:
1. exports archived earlier but never applied (the server or this process died in between) are applied first,
   from the files alone: no server needed;
2. the batch is exported (retried with backoff while Label Studio is down) and the raw JSON is archived under
   ``<workspace>/review/exports/<batch>-<timestamp>.json`` and recorded *before* anything is applied;
3. the verdicts are applied in one transaction, which also marks the export applied.
Re-running changes nothing: each task remembers the annotation (id and update time) last applied, and an
identical export is archived once.

Fact tasks (issue #17): a = correct, c = corrected (the new value/unit and/or subject; the ingested fields
are kept in ``fact_verdicts``), r = not a rule. They are written to the ledger in the same transaction, and
then the person-verified ledger decides the rows that cite those facts (``review.facts.settle``): approved as
``ledger:<annotator>`` when every number is a verified fact whose subject fits the question, rejected when a
number is one a person marked not a rule, re-verified (and back to people when no longer grounded) after a
correction. A corrected value that the fact's sentence does not contain is flagged and the fact stays
unverified (a later batch asks again).

A correction is not trusted blindly: every number it states (in the new answer or the corrected-numbers
field) must be a value of the chunk's ledger facts. One that is not sends the row back to ``needs_review``
with a note ("correction states N which is not in the source"); the proposal is kept on the row.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb

from review.facts import add_notes, settle
from review.labeling import (
    COMMENT,
    CORRECTED_ANSWER,
    CORRECTED_NUMBERS,
    CORRECTED_SUBJECT,
    FACT_NUMBERS,
    FACT_SUBJECT,
    FACT_VERDICT,
    FACT_VERDICTS,
    VERDICT,
    VERDICTS,
)
from review.server import LabelStudioError, base_url, retrying, transient
from runtime.config import Settings
from tasks.distill.teachers.base import QAPair
from tasks.distill.verify import verify_row
from tasks.ingest.facts import Fact, agrees
from tasks.ingest.numbers import canonical, parse_numeral, rule_numbers
from warehouse import review as queries

STATUS_BY_VERDICT = {"accept": "approved", "correct": "corrected", "reject": "rejected"}
_SPLIT = re.compile(r"[,，;；、/\s]+")
_UNIT_ONLY = re.compile(r"[元角天日月年次人个件项%％‰小时工作间晚夜份页张台岁倍周以上下内含不超过]+")


class LabelStudioUnavailable(LabelStudioError):
    """Label Studio did not answer after the retries; archived exports were still applied."""


def unavailable(settings: Settings, doing: str, then: str, exc: BaseException) -> LabelStudioUnavailable:
    """The one-line error for a Label Studio that stopped answering while ``doing``; ``then`` says what to do."""
    return LabelStudioUnavailable(
        f"Label Studio at {base_url(settings)} did not answer while {doing} ({type(exc).__name__});"
        f" start it (`slm review up`) and {then}"
    )


@dataclass(frozen=True)
class BatchProgress:
    batch_id: str
    tasks: int  # tasks the batch should have (rows pushed)
    annotated: int  # tasks with a non-cancelled annotation carrying a verdict
    remaining: int
    accepted: int
    corrected: int
    rejected: int

    @property
    def complete(self) -> bool:
        """Every task has a non-cancelled annotation (Label Studio has no task-completed event)."""
        return self.tasks > 0 and self.remaining == 0


@dataclass
class SyncResult:
    batch_id: str
    export_path: Path | None  # the live export archived by this run (None when Label Studio was down)
    applied: dict[str, int] = field(default_factory=dict)  # verdict -> rows changed by this run
    flagged: list[tuple[str, str]] = field(default_factory=list)  # (row_id, why) sent back to needs_review
    unchanged: int = 0  # annotations already applied by an earlier run
    from_archive: int = 0  # rows applied from exports archived by an earlier, interrupted run
    progress: BatchProgress | None = None
    status: str = "open"  # the batch's status afterwards
    ledger: dict[str, int] = field(default_factory=dict)  # rows the verified ledger changed, by outcome
    prediction_changed: int = 0  # row verdicts applied by this run that differ from the ledger's suggestion


# ---------------------------------------------------------------------------------------------------------
# Reading annotations


def _saved_at(annotation: dict[str, Any]) -> str:
    """When the annotation was last saved, as Label Studio wrote it ("" when it says nothing)."""
    return str(annotation.get("updated_at") or annotation.get("created_at") or "")


def _latest_annotation(task: dict[str, Any]) -> dict[str, Any] | None:
    """The newest non-cancelled annotation that states a verdict."""
    usable = [a for a in task.get("annotations") or [] if not a.get("was_cancelled") and _verdict_of(a)]
    if not usable:
        return None
    return max(usable, key=lambda a: (_saved_at(a), int(a["id"])))


def _field(annotation: dict[str, Any], name: str) -> Any:
    for item in annotation.get("result") or []:
        if item.get("from_name") == name:
            return item.get("value") or {}
    return None


def _verdict_of(annotation: dict[str, Any]) -> str | None:
    value = _field(annotation, VERDICT)
    choices = (value or {}).get("choices") or []
    return choices[0] if choices and choices[0] in VERDICTS else None


def _text_of(annotation: dict[str, Any], name: str) -> str:
    value = _field(annotation, name)
    texts = (value or {}).get("text") or []
    if isinstance(texts, str):
        texts = [texts]
    return "\n".join(t.strip() for t in texts if t and t.strip())


def progress_from_tasks(batch_id: str, expected: int, tasks: Iterable[dict[str, Any]]) -> BatchProgress:
    counts = dict.fromkeys(VERDICTS, 0)
    annotated = 0
    for task in tasks:
        annotation = _latest_annotation(task)
        if annotation is None:
            continue
        annotated += 1
        counts[_verdict_of(annotation) or "accept"] += 1
    return BatchProgress(
        batch_id,
        expected,
        annotated,
        max(expected - annotated, 0),
        counts["accept"],
        counts["correct"],
        counts["reject"],
    )


def _as_dict(task: Any) -> dict[str, Any]:
    if isinstance(task, dict):
        return task
    return task.model_dump(mode="json") if hasattr(task, "model_dump") else dict(task)


def batch_progress(
    con: duckdb.DuckDBPyConnection, settings: Settings, client: Any, batch_id: str
) -> BatchProgress:
    """Tasks, annotated, remaining and verdict counts of a batch, read live from Label Studio."""
    batch = _batch(con, batch_id)
    expected = queries.task_count(con, batch_id)

    def fetch() -> list[dict[str, Any]]:
        return [_as_dict(t) for t in client.tasks.list(project=int(batch["ls_project_id"]), fields="all")]

    try:
        tasks = retrying(settings)(fetch)()
    except Exception as exc:
        if not transient(exc):
            raise
        raise unavailable(settings, f"reading batch {batch_id}", "try again", exc) from exc
    progress = progress_from_tasks(batch_id, expected, tasks)
    if progress.complete:
        queries.mark_batch_complete(con, batch_id)
    return progress


def _batch(con: duckdb.DuckDBPyConnection, batch_id: str) -> dict[str, Any]:
    batch = queries.get_batch(con, batch_id)
    if batch is None:
        raise LabelStudioError(f"unknown review batch {batch_id!r} (see `slm review batches`)")
    return batch


# ---------------------------------------------------------------------------------------------------------
# Checking corrections against the ledger


def parse_corrected_numbers(text: str) -> tuple[list[tuple[str, Decimal]], list[str]]:
    """The numbers an annotator typed ("800元; 1,200元", "三个月", "800 1200", "三 5万"): (raw, value) pairs,
    and the pieces that are no number. Mentions with units are read by the one parser; what is left is
    split at separators and read as bare numerals; bare unit words ("元") are ignored."""
    found: list[tuple[str, Decimal]] = []
    rest = list(text)
    for mention in rule_numbers(text):
        found += [(mention.raw, v) for v in mention.values()]
        rest[mention.start : mention.end] = [" "] * (mention.end - mention.start)
    unreadable: list[str] = []
    for piece in _SPLIT.split("".join(rest).strip()):
        if not piece or _UNIT_ONLY.fullmatch(piece):
            continue
        value = parse_numeral(piece)
        if value is None:
            unreadable.append(piece)
        else:
            found.append((piece, value))
    return found, unreadable


def check_correction(
    row: dict[str, Any], corrected_answer: str, corrected_numbers: str, facts: list[dict[str, Any]]
) -> dict[str, Any]:
    """Verify a correction against the chunk's ledger facts.

    Returns the new values (numbers, fact_ids, grounded, is_numeric, corrected_numbers) and ``problems``:
    the reasons the correction cannot be trusted (empty when it can).
    """
    refs = [Fact.from_row(f) for f in facts]
    # Each value on its own (one wrong end of a range is a wrong number), within fraction rounding.
    source_values = {v for f in refs for v in f.values()}
    given = {v for m in rule_numbers(row["question"]) for v in m.values()}  # the question supplied these

    def in_source(value: Decimal) -> bool:
        return agrees((value,), source_values | given, tolerant=True)

    problems: list[str] = []
    if not corrected_answer:
        problems.append("correction has no corrected answer text")
    stated = [(m.raw, v) for m in rule_numbers(corrected_answer) for v in m.values()]
    typed, unreadable = parse_corrected_numbers(corrected_numbers)
    problems += [f"corrected number {p!r} is not a number" for p in unreadable]
    by_value: dict[str, str] = {}  # one note per number, as first written ("7个工作日" and "7" are one)
    for raw, value in [*stated, *typed]:
        by_value.setdefault(canonical(value), raw)
    for key, raw in by_value.items():
        if not in_source(Decimal(key)):
            problems.append(f"correction states {raw} which is not in the source")
    for raw, value in typed:
        if corrected_answer and not agrees((value,), [v for _, v in stated], tolerant=True):
            problems.append(f"corrected number {raw} is not stated in the corrected answer")
    kind = row["kind"]
    if kind == "unanswerable":  # a person decided the rules do answer it
        kind = "numeric" if stated else "text"
    verdict = verify_row(
        QAPair(row["question"], corrected_answer or row["answer"], row["evidence"] or "", kind=kind),
        row["chunk_text"],
        refs,
    )
    return {
        "numbers": list(verdict.numbers),
        "fact_ids": list(verdict.fact_ids),
        "grounded": verdict.grounded,
        "is_numeric": verdict.is_numeric,
        "corrected_numbers": list(dict.fromkeys(canonical(v) for _, v in typed)),
        "verify_notes": [n for n in verdict.notes if "evidence" not in n],
        "problems": list(dict.fromkeys(problems)),
    }


# ---------------------------------------------------------------------------------------------------------
# Applying an export


def _timestamp(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.astimezone(UTC).replace(tzinfo=None) if parsed.tzinfo else parsed


def _reviewer(annotation: dict[str, Any], users: dict[str, str]) -> str:
    who = annotation.get("completed_by")
    if isinstance(who, dict):
        return str(who.get("email") or f"labelstudio:{who.get('id')}")
    return users.get(str(who)) or f"labelstudio:{who}"


def decide(
    row: dict[str, Any], annotation: dict[str, Any], users: dict[str, str], facts: list[dict[str, Any]]
) -> tuple[dict[str, Any], str | None]:
    """The row's new values for one annotation, and why it was flagged (None when trusted)."""
    verdict = _verdict_of(annotation)
    assert verdict is not None
    comment = _text_of(annotation, COMMENT) or None
    original = row["original_answer"] or row["answer"]
    decision: dict[str, Any] = {
        "row_id": row["row_id"],
        "verdict": verdict,
        "status": STATUS_BY_VERDICT[verdict],
        "reviewer": _reviewer(annotation, users),
        "reviewed_at": _timestamp(_saved_at(annotation)),
        "comment": comment,
        "annotation_id": int(annotation["id"]),
        "annotation_at": _saved_at(annotation),
        "answer": None,
        "numbers": None,
        "is_numeric": None,
        "grounded": None,
        "fact_ids": None,
        "corrected_answer": None,
        "corrected_numbers": None,
        "verify_notes": row["verify_notes"] or "",
    }
    flagged = None
    if verdict == "correct":
        text = _text_of(annotation, CORRECTED_ANSWER)
        check = check_correction(row, text, _text_of(annotation, CORRECTED_NUMBERS), facts)
        decision["corrected_answer"] = text or None
        decision["corrected_numbers"] = check["corrected_numbers"]
        if check["problems"]:
            flagged = "; ".join(check["problems"])
            decision["status"] = "needs_review"
            decision["verify_notes"] = add_notes(decision["verify_notes"], check["problems"])
        else:
            decision.update(
                answer=text,
                numbers=check["numbers"],
                is_numeric=check["is_numeric"],
                grounded=check["grounded"],
                fact_ids=check["fact_ids"],
                verify_notes=add_notes(decision["verify_notes"], check["verify_notes"]),
            )
    elif row["original_answer"] and row["answer"] != original:
        decision["answer"] = original  # the annotator changed a correction back to accept or reject
    if decision["answer"] is not None and verdict != "correct":
        check = check_correction(row, original, "", facts)
        decision.update(
            numbers=check["numbers"],
            is_numeric=check["is_numeric"],
            grounded=check["grounded"],
            fact_ids=check["fact_ids"],
        )
    return decision, flagged


def fact_choice(annotation: dict[str, Any], index: int) -> str | None:
    """The verdict a fact task's annotation gives its fact number ``index`` on its own (None: not marked)."""
    choices = (_field(annotation, f"{FACT_VERDICT}{index}") or {}).get("choices") or []
    return choices[0] if choices and choices[0] in VERDICTS else None


def decide_fact(
    fact: dict[str, Any], annotation: dict[str, Any], users: dict[str, str], index: int = 0, of: int = 1
) -> tuple[dict[str, Any], str | None]:
    """The verdict on fact ``index`` of a fact task holding ``of`` facts (``verdict`` None when flagged), and
    why it was flagged. A fact marked on its own takes that verdict; the others the task's: a = correct,
    r = not a rule, c = correct when other facts are marked wrong (the person pointed at those), flagged when
    none is (a task of one fact is corrected in the task's own fields)."""
    task_choice = _verdict_of(annotation)
    assert task_choice is not None
    own = fact_choice(annotation, index)
    marked = [i for i in range(of) if fact_choice(annotation, i)]
    chosen = own or task_choice
    if own is None and task_choice == "correct" and of > 1 and marked:
        chosen = "accept"  # c with some numbers marked: the unmarked ones are right
    decision: dict[str, Any] = {
        "fact_id": fact["fact_id"],
        "ls_verdict": chosen,
        "verdict": FACT_VERDICTS[chosen],
        "annotator": _reviewer(annotation, users),
        "decided_at": _timestamp(_saved_at(annotation)),
        "comment": _text_of(annotation, COMMENT) or None,
        "annotation_id": int(annotation["id"]),
        "annotation_at": _saved_at(annotation),
    }
    if own is None and chosen == "correct" and of > 1:
        decision["verdict"] = None
        return decision, "the task says some numbers are wrong but marks none of them"
    if decision["verdict"] != "corrected":
        return decision, None
    typed = _text_of(annotation, f"{FACT_NUMBERS}{index}")
    subject = _text_of(annotation, f"{FACT_SUBJECT}{index}")
    if of == 1:  # a task of one number: the task's own correction fields are that number's
        typed = typed or _text_of(annotation, CORRECTED_NUMBERS)
        subject = subject or _text_of(annotation, CORRECTED_SUBJECT)
    problems = []
    if not typed and not subject:
        problems.append("fact correction names no corrected number or subject")
    if subject:
        decision["subject"] = subject
    if typed:
        mentions = rule_numbers(typed)
        values, unreadable = parse_corrected_numbers(typed)
        problems += [f"corrected number {p!r} is not a number" for p in unreadable]
        if mentions:
            m = mentions[0]
            decision.update(
                value=canonical(m.value),
                value_max=None if m.value_max is None else canonical(m.value_max),
                unit=m.unit or fact["unit"],
                qualifier=m.qualifier or fact["qualifier"],
            )
        elif values:
            decision.update(value=canonical(values[0][1]), value_max=None)
        new = [Decimal(v) for v in (decision.get("value"), decision.get("value_max")) if v is not None]
        sentence = {v for m in rule_numbers(fact["context"]) for v in m.values()}
        digits = re.sub(r"[^0-9.]", "", typed.split("元")[0])
        for value in new:
            if not agrees((value,), sentence, tolerant=True) and not (digits and digits in fact["context"]):
                problems.append(f"corrected value {canonical(value)} is not in the fact's sentence")
    if problems:
        decision["verdict"] = None
        return decision, "; ".join(problems)
    return decision, None


def _applied_before(task: dict[str, Any], annotation: dict[str, Any], stamp: str) -> bool:
    """Whether this annotation (id and update time) is the one last applied to the task's row or fact."""
    return task["annotation_id"] == int(annotation["id"]) and (task["annotation_at"] or "") == stamp


def apply_export(
    con: duckdb.DuckDBPyConnection, batch_id: str, archive: dict[str, Any], export_id: str | None
) -> SyncResult:
    """Apply an archived export to the warehouse in one transaction (no Label Studio needed): row verdicts,
    fact verdicts, then the rows the person-verified ledger now decides."""
    rows = {r["row_id"]: r for r in queries.batch_tasks(con, batch_id)}
    fact_tasks = {f["fact_id"]: f for f in queries.batch_fact_tasks(con, batch_id)}
    facts = queries.chunk_facts(con, sorted({r["chunk_id"] for r in rows.values()}))
    users = {str(k): v for k, v in (archive.get("users") or {}).items()}
    tasks = [t for t in archive.get("tasks") or [] if (t.get("data") or {}).get("batch_id") == batch_id]
    result = SyncResult(batch_id, None)
    decisions, fact_decisions = [], []
    for task in tasks:
        data = task.get("data") or {}
        annotation = _latest_annotation(task)
        if annotation is None:
            continue
        stamp = _saved_at(annotation)
        if data.get("kind") == "fact":
            ids = [str(f) for f in data.get("fact_ids") or [data.get("fact_id")]]
            for index, fact_id in enumerate(ids):
                fact = fact_tasks.get(fact_id)
                if fact is None:
                    continue
                if _applied_before(fact, annotation, stamp):
                    result.unchanged += 1
                    continue
                if fact["in_later_batch"]:
                    continue
                fact_decision, flagged = decide_fact(fact, annotation, users, index, len(ids))
                fact_decisions.append(fact_decision)
                key = "fact_" + (fact_decision["verdict"] or "flagged")
                result.applied[key] = result.applied.get(key, 0) + 1
                if flagged:
                    result.flagged.append((fact["fact_id"], flagged))
            continue
        row = rows.get(data.get("row_id"))
        if row is None:
            continue
        if _applied_before(row, annotation, stamp):
            result.unchanged += 1
            continue
        if row["in_later_batch"]:
            continue  # a later batch owns the row now (it was flagged and sent out again)
        decision, flagged = decide(row, annotation, users, facts[row["chunk_id"]])
        if row.get("suggested"):
            decision["prediction_changed"] = decision["verdict"] != row["suggested"]
            result.prediction_changed += int(decision["prediction_changed"])
        decisions.append(decision)
        key = "flagged" if flagged else decision["verdict"]
        result.applied[key] = result.applied.get(key, 0) + 1
        if flagged:
            result.flagged.append((row["row_id"], flagged))
    result.progress = progress_from_tasks(batch_id, queries.task_count(con, batch_id), tasks)

    def ledger(tx: duckdb.DuckDBPyConnection) -> None:
        result.ledger = settle(tx).changed

    result.status = queries.apply_decisions(
        con, batch_id, export_id, decisions, result.progress.complete, fact_decisions, then=ledger
    )
    return result


# ---------------------------------------------------------------------------------------------------------
# Export and sync


def exports_dir(settings: Settings) -> Path:
    return settings.workspace / "review" / "exports"


def _user_emails(client: Any, tasks: list[dict[str, Any]]) -> dict[str, str]:
    ids = {
        a.get("completed_by")
        for t in tasks
        for a in t.get("annotations") or []
        if isinstance(a.get("completed_by"), int)
    }
    emails = {}
    for user_id in sorted(ids):
        user = client.users.get(id=user_id)
        emails[str(user_id)] = getattr(user, "email", None) or f"labelstudio:{user_id}"
    return emails


def export_batch(
    con: duckdb.DuckDBPyConnection, settings: Settings, client: Any, batch_id: str
) -> tuple[Path, str, dict[str, Any]]:
    """Export a batch from Label Studio (retried) and archive it; returns (path, export id, archive).

    The archive holds the raw export (``tasks``) and the annotators' emails (``users``), so that it can be
    applied later without the server. It is recorded as pending before anything is applied."""
    batch = _batch(con, batch_id)
    project_id = int(batch["ls_project_id"])

    def fetch() -> tuple[list[dict[str, Any]], dict[str, str]]:
        tasks = client.projects.exports.as_json(project_id)
        return tasks, _user_emails(client, tasks)

    try:
        tasks, users = retrying(settings)(fetch)()
    except Exception as exc:
        if not transient(exc):
            raise
        raise unavailable(
            settings, f"exporting batch {batch_id}", "sync again: nothing is lost", exc
        ) from exc
    content = json.dumps({"tasks": tasks, "users": users}, ensure_ascii=False, sort_keys=True)
    export_id = hashlib.sha256(content.encode()).hexdigest()[:32]
    now = datetime.now(UTC)
    archive = {
        "batch_id": batch_id,
        "ls_project_id": project_id,
        "exported_at": now.isoformat(),
        "tasks": tasks,
        "users": users,
    }
    earlier = queries.export_path(con, export_id)
    if earlier and Path(earlier).is_file():
        return Path(earlier), export_id, archive  # the same content was archived before: nothing new
    folder = exports_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{batch_id}-{now:%Y%m%dT%H%M%S%fZ}.json"
    tmp = path.with_suffix(".part")
    tmp.write_text(json.dumps(archive, ensure_ascii=False, indent=1), encoding="utf-8")
    tmp.replace(path)  # a crash leaves a .part file, never a half-written archive under the real name
    queries.record_export(con, export_id, batch_id, str(path), len(tasks))
    return path, export_id, archive


def apply_pending(con: duckdb.DuckDBPyConnection, batch_id: str) -> list[SyncResult]:
    """Apply exports archived by an earlier run that stopped before applying them (works offline)."""
    results = []
    for pending in queries.pending_exports(con, batch_id):
        archive = json.loads(Path(pending["path"]).read_text(encoding="utf-8"))
        result = apply_export(con, batch_id, archive, pending["export_id"])
        result.export_path = Path(pending["path"])
        results.append(result)
    return results


def sync_batch(con: duckdb.DuckDBPyConnection, settings: Settings, client: Any, batch_id: str) -> SyncResult:
    """Apply archived-but-unapplied exports, then export the batch, archive it, and apply it.

    Raises ``LabelStudioUnavailable`` when the server does not answer after the retries; whatever was
    archived before has been applied by then."""
    _batch(con, batch_id)
    earlier = apply_pending(con, batch_id)
    from_archive = sum(sum(r.applied.values()) for r in earlier)
    path, export_id, archive = export_batch(con, settings, client, batch_id)
    pending = {e["export_id"] for e in queries.pending_exports(con, batch_id)}
    result = apply_export(con, batch_id, archive, export_id if export_id in pending else None)
    result.export_path = path
    result.from_archive = from_archive
    return result
