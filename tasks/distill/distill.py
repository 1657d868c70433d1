"""Distillation: run a teacher over the chunks, verify every row against the ledger, store it all.

Teacher calls are cached in the warehouse by (chunk content, teacher, model, prompt version, options):
a re-run bills nothing and changes nothing. Chunks go to a model teacher concurrently (threads: the
calls are I/O); results are written by the calling thread only, one transaction per chunk, because a
DuckDB connection is not shared across threads.

Two halves: ``distil_chunks`` computes a batch's rows (teacher call and verification, no warehouse; its
inputs and results pickle, so it can run in another process or on another machine), and ``distill`` plans
the batches and stores what comes back. A ``FanOut`` (flows/distill_fan_out.py: Prefect tasks on Dask) may
run the batches elsewhere; without one they run here.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

import duckdb

from runtime.config import Settings
from tasks.distill.teachers.base import (
    ChunkContext,
    FactRef,
    QAPair,
    Teacher,
    TeacherConfigError,
    TeacherOutput,
    Usage,
)
from tasks.distill.teachers.extractive import ExtractiveTeacher, unanswerable_rows
from tasks.distill.verify import verify_row
from warehouse import distill as queries

TEACHERS = ("extractive", "gemini", "openai", "llamacpp")
FLUSH_EVERY_CHUNKS = 32
FLUSH_EVERY_S = 1.0


def make_teacher(settings: Settings, name: str | None = None) -> Teacher:
    """The teacher named in the configuration (or ``name``); model teachers are imported only when used."""
    name = name or settings.teacher
    if name == "extractive":
        return ExtractiveTeacher(per_fact=settings.per_fact)
    if name == "gemini":
        from tasks.distill.teachers.gemini import GeminiTeacher

        return GeminiTeacher(settings)
    if name == "openai":
        from tasks.distill.teachers.openai_compat import OpenAITeacher

        return OpenAITeacher(settings)
    if name == "llamacpp":
        from tasks.distill.teachers.llamacpp import LlamaCppTeacher

        return LlamaCppTeacher(settings)
    choices = ", ".join(TEACHERS)
    raise TeacherConfigError(f"unknown teacher {name!r}; choose one of {choices} (setting teacher)")


@dataclass
class DistillSummary:
    run_id: str
    teacher: str
    model: str
    chunks: int = 0
    cached: int = 0
    failed: int = 0
    rows_added: int = 0
    usage: Usage = field(default_factory=Usage)
    failures: list[dict[str, Any]] = field(default_factory=list)
    totals: dict[str, Any] = field(default_factory=dict)  # rows_summary() of the scope after the run


def chunk_context(record: dict[str, Any]) -> ChunkContext:
    facts = tuple(FactRef(**f) for f in (record.get("facts") or []))
    return ChunkContext(
        record["chunk_id"],
        record["doc_id"],
        record["doc_name"],
        record["heading_path"],
        record["text"],
        facts,
    )


def cache_key(chunk: ChunkContext, teacher: Teacher, options: str) -> str:
    """Content, not ids: the same chunk text and facts under the same teacher settings is the same call."""
    facts = "|".join(f"{f.value}:{f.value_max}:{f.unit}:{f.subject}" for f in chunk.facts)
    material = "\x1f".join([chunk.text, facts, teacher.name, teacher.model, teacher.prompt_version, options])
    return hashlib.sha256(material.encode()).hexdigest()[:32]


def row_id(key: str, row: QAPair) -> str:
    return hashlib.sha256(f"{key}\x1f{row.question}\x1f{row.answer}".encode()).hexdigest()[:24]


def _verified_rows(
    chunk: ChunkContext, key: str, rows: list[QAPair], settings: Settings
) -> list[dict[str, Any]]:
    """Rows with their verdicts, ready to store; ``key`` makes the row ids (with question and answer)."""
    known = {f.fact_id for f in chunk.facts}
    out = []
    for row in rows:
        verdict = verify_row(row, chunk.text, chunk.facts, settings.review_numeric_rows)
        claimed = [f for f in row.fact_ids if f in known]
        out.append(
            {
                "row_id": row_id(key, row),
                "chunk_id": chunk.chunk_id,
                "doc_id": chunk.doc_id,
                "question": row.question,
                "answer": row.answer,
                "evidence": row.evidence,
                "kind": row.kind,
                "unsure": row.unsure,
                "teacher_numbers": list(row.numbers),
                "numbers": list(verdict.numbers),
                "is_numeric": verdict.is_numeric,
                "evidence_found": verdict.evidence_found,
                "grounded": verdict.grounded,
                # The fact the teacher asked about first: the row's own fact (the golden recall split and
                # the context copies' lead take it), then the facts its answer's numbers match.
                "fact_ids": list(dict.fromkeys([*claimed, *verdict.fact_ids])),
                "verify_notes": "; ".join(verdict.notes),
                "status": verdict.status,
                "reviewer": "auto:ledger" if verdict.status in ("auto_verified", "rejected") else None,
            }
        )
    return out


def _call_record(
    key: str, chunk_id: str, teacher: Teacher, output: TeacherOutput, run_id: str
) -> dict[str, Any]:
    error = output.error
    if not error and output.problems:
        error = f"{len(output.problems)} invalid rows dropped: " + "; ".join(output.problems[:5])
    return {
        "cache_key": key,
        "chunk_id": chunk_id,
        "teacher": teacher.name,
        "model": teacher.model,
        "prompt_version": teacher.prompt_version,
        "status": "failed" if output.failed else "ok",
        "error": error,
        "raw_text": output.raw_text,
        "calls": output.usage.calls,
        "prompt_tokens": output.usage.prompt_tokens,
        "completion_tokens": output.usage.completion_tokens,
        "cost_usd": output.usage.cost_usd,
        "run_id": run_id,
    }


def _safe_generate(teacher: Teacher, chunk: ChunkContext) -> TeacherOutput:
    try:
        return teacher.generate(chunk)
    except Exception as exc:  # a teacher bug must become a recorded failure, not a lost chunk
        return TeacherOutput(error=f"teacher raised {type(exc).__name__}: {' '.join(str(exc).split())[:200]}")


@dataclass(frozen=True)
class ChunkJob:
    """One chunk to distil and its cache key (computed by the planner, so every worker agrees on it)."""

    chunk: ChunkContext
    key: str


@dataclass
class ChunkResult:
    """What a teacher made of one chunk: its output and the verified rows, ready to store."""

    job: ChunkJob
    output: TeacherOutput
    rows: list[dict[str, Any]]


# Runs the batches (each a list of jobs) somewhere and yields each batch's results as it finishes.
FanOut = Callable[[list[list[ChunkJob]], Settings, str], Iterable[list[ChunkResult]]]


def _compute(teacher: Teacher, job: ChunkJob, settings: Settings) -> ChunkResult:
    output = _safe_generate(teacher, job.chunk)
    rows = [] if output.failed else _verified_rows(job.chunk, job.key, output.rows, settings)
    return ChunkResult(job, output, rows)


def _results(teacher: Teacher, jobs: list[ChunkJob], settings: Settings) -> Iterator[ChunkResult]:
    """Each job's result as it finishes: one at a time for local teachers, in threads for remote models."""
    workers = 1 if teacher.name in ("extractive", "llamacpp") else max(1, settings.distill_concurrency)
    if workers == 1:
        for job in jobs:
            yield _compute(teacher, job, settings)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="teacher") as pool:
        futures = [pool.submit(_compute, teacher, job, settings) for job in jobs]
        for future in as_completed(futures):
            yield future.result()


def distil_chunks(jobs: list[ChunkJob], settings: Settings, teacher_name: str) -> list[ChunkResult]:
    """A batch's rows, computed without the warehouse (what a Dask worker runs): the teacher is built here
    from the settings, as the planner built its own, so nothing unpicklable travels."""
    return list(_results(make_teacher(settings, teacher_name), jobs, settings))


def batches_by_document(jobs: list[ChunkJob], batch_chunks: int) -> list[list[ChunkJob]]:
    """Jobs in document order, cut at each document and every ``batch_chunks`` chunks."""
    batches: list[list[ChunkJob]] = []
    for job in jobs:
        last = batches[-1] if batches else None
        if last and last[-1].chunk.doc_id == job.chunk.doc_id and len(last) < max(1, batch_chunks):
            last.append(job)
        else:
            batches.append([job])
    return batches


def distill(
    con: duckdb.DuckDBPyConnection,
    settings: Settings,
    teacher: Teacher,
    doc: str | None = None,
    limit: int | None = None,
    on_chunk: Callable[[int, int], None] | None = None,
    fan_out: FanOut | None = None,
) -> DistillSummary:
    """Distil every chunk in scope (all documents, or ``doc``; at most ``limit`` chunks). With ``fan_out``,
    the teacher calls run where it sends them (batches of ``distill_batch_chunks`` chunks of one document);
    the rows are stored here either way, so the warehouse keeps one writer."""
    run_id = uuid.uuid4().hex[:16]
    summary = DistillSummary(run_id, teacher.name, teacher.model)
    options = json.dumps({"per_fact": settings.per_fact}, sort_keys=True)
    chunks = [chunk_context(r) for r in queries.chunks_with_facts(con, doc, limit)]
    keys = {c.chunk_id: cache_key(c, teacher, options) for c in chunks}
    done = queries.successful_cache_keys(con, list(keys.values()))
    # A clause repeated word for word in two documents is one cache key: the teacher is asked once, for the
    # first chunk in document order, so which chunk owns the rows never depends on which answer comes back
    # first (and one group of results never holds the same key twice).
    first: dict[str, ChunkContext] = {}
    for c in chunks:
        first.setdefault(keys[c.chunk_id], c)
    todo = [c for c in chunks if keys[c.chunk_id] not in done and first[keys[c.chunk_id]] is c]
    summary.chunks, summary.cached = len(chunks), len(chunks) - len(todo)
    queries.start_run(con, run_id, teacher.name, teacher.model, teacher.prompt_version)
    progress = 0
    if on_chunk:
        on_chunk(progress, len(todo))

    pending: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
    last_flush = time.monotonic()

    def flush() -> None:
        nonlocal last_flush
        summary.rows_added += queries.save_teacher_calls(con, pending)
        pending.clear()
        last_flush = time.monotonic()

    def store(result: ChunkResult) -> None:
        # Results are written in small groups: each commit costs a disk flush, and a crash loses at most
        # the last second of teacher work (which the cache then simply redoes).
        chunk, output = result.job.chunk, result.output
        pending.append((_call_record(result.job.key, chunk.chunk_id, teacher, output, run_id), result.rows))
        summary.usage.add(output.usage)
        if output.failed:
            summary.failed += 1
            summary.failures.append({"chunk_id": chunk.chunk_id, "error": output.error})
        if len(pending) >= FLUSH_EVERY_CHUNKS or time.monotonic() - last_flush >= FLUSH_EVERY_S:
            flush()

    jobs = [ChunkJob(chunk, keys[chunk.chunk_id]) for chunk in todo]
    if fan_out is None:
        finished: Iterable[list[ChunkResult]] = ([r] for r in _results(teacher, jobs, settings))
    else:
        finished = fan_out(batches_by_document(jobs, settings.distill_batch_chunks), settings, teacher.name)
    for results in finished:
        for result in results:
            store(result)
        progress += len(results)
        if on_chunk:
            on_chunk(progress, len(todo))
    flush()

    summary.rows_added += _add_unanswerable(con, settings, chunks, run_id)
    summary.totals = queries.rows_summary(con, doc)
    queries.finish_run(
        con,
        run_id,
        {
            "chunks": summary.chunks,
            "cached": summary.cached,
            "failed": summary.failed,
            "rows_added": summary.rows_added,
            "calls": summary.usage.calls,
            "prompt_tokens": summary.usage.prompt_tokens,
            "completion_tokens": summary.usage.completion_tokens,
            "cost_usd": summary.usage.cost_usd,
        },
    )
    return summary


def _add_unanswerable(
    con: duckdb.DuckDBPyConnection, settings: Settings, chunks: list[ChunkContext], run_id: str
) -> int:
    """Per document, enough "not in the rules" questions to make up ``unanswerable_share`` of its rows."""
    share = settings.unanswerable_share
    if share <= 0 or not chunks:
        return 0
    first_chunk: dict[str, ChunkContext] = {}
    for chunk in chunks:
        first_chunk.setdefault(chunk.doc_id, chunk)
    texts = queries.document_texts(con, list(first_chunk))
    teacher = _UnanswerableTeacher()
    added = 0
    for doc_id, chunk in first_chunk.items():
        answerable = sum(1 for r in queries.list_rows(con, doc=doc_id) if r["kind"] != "unanswerable")
        count = round(answerable * share / (1 - share))
        if count <= 0:
            continue
        options = json.dumps({"count": count, "share": share})
        key = cache_key(chunk, teacher, options)
        if queries.successful_cache_keys(con, [key]):
            continue
        rows = unanswerable_rows(texts.get(doc_id, ""), count, seed=doc_id)
        output = TeacherOutput(rows=rows)
        # Row ids by document and question: a later, larger count adds topics, never repeats one.
        verified = _verified_rows(chunk, f"unanswerable:{doc_id}", rows, settings)
        added += queries.save_teacher_call(
            con, _call_record(key, chunk.chunk_id, teacher, output, run_id), verified
        )
    return added


class _UnanswerableTeacher:
    """Names the cache entries of the per-document "not in the rules" questions."""

    name = "unanswerable"
    model = "topics"
    prompt_version = "unanswerable-v1"
