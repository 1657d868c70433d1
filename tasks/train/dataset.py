"""Frozen dataset snapshots: the rows that passed the release gate, as chat-format JSONL.

A share of the rows (``context_share``) is written twice: once closed book, and once with the chunks grounded
answering would show for its question (the top ``CONTEXT_K`` of ``ChunkIndex.search(question, k, expand=True)``
over the warehouse, its own chunk among them), led by the statements of the facts that fit it best (its own
fact's among them), in the prompt format grounded answering uses
(:func:`tasks.answer.answer.context_messages`), so that the model learns to read the right rule among the real
distractors retrieval brings. A context copy stays in its row's split.

The dataset id is a content hash of the records as written (messages included) and the prompt format, so the
same rows always give the same id and any change to one row, or to a chunk it is shown with, gives a new one.
Files are written to a temporary folder and renamed into place, so a crash never leaves a half-written
dataset under its id.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import duckdb

from runtime.config import Settings
from tasks.answer.answer import (
    CONTEXT_FORMAT,
    EVIDENCE_LINES,
    asks_when,
    evidence_lines,
    fact_statement,
    fit_facts,
    when_sentence,
    with_context_rows,
)
from tasks.answer.fact_retrieve import FactIndex
from tasks.answer.prompts import PROMPT_FORMAT, chat_messages
from tasks.answer.reading import in_everyday_words
from tasks.answer.retrieve import ChunkIndex, Hit
from tasks.distill.teachers.base import FactRef
from tasks.evaluate.golden import hold_out
from warehouse import gates as queries


@dataclass(frozen=True)
class DatasetInfo:
    dataset_id: str
    path: Path
    row_count: int
    train_count: int
    valid_count: int
    numeric_share: float
    created: bool  # False when the same rows were frozen before


def dataset_id_for(records: list[dict[str, Any]], prompt_format: str = PROMPT_FORMAT) -> str:
    """Content hash of training records (``{"id", "messages", ...}``) in any order."""
    digest = hashlib.sha256(prompt_format.encode())
    for record in sorted(records, key=lambda r: r["id"]):
        digest.update(f"\x1e{record['id']}\x1f".encode())
        digest.update(json.dumps(record["messages"], ensure_ascii=False, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def prompt_format_for(context_share: float) -> str:
    """The prompt format(s) of a dataset: closed-book chat, plus the context format when rows carry one."""
    return f"{PROMPT_FORMAT}+{CONTEXT_FORMAT}" if context_share > 0 else PROMPT_FORMAT


CONTEXT_K = (
    3  # chunks a context row shows: as many as grounded answering retrieves (tasks.answer.answer.answer's k)
)


def retrieved_context(
    index: ChunkIndex, question: str, own: Hit, row_id: str, seed: int = 0, k: int = CONTEXT_K
) -> list[Hit]:
    """The chunks grounded answering shows for ``question`` (``index.search(question, k, expand=True)``, best
    first), with the row's ``own`` chunk among them. Where retrieval missed it, it takes the place of the
    lowest-ranked chunk, at a position (0..k-1) drawn from a hash of ``seed`` and ``row_id``: the model must
    find the rule by reading, not by its place. (Answering puts the best-fitting fact's chunk first when the
    chunk search missed it; training does not teach that place, so a wrong best fit is not trusted blindly.)"""
    hits = index.search(question, k, expand=True)
    if any(h.chunk_id == own.chunk_id for h in hits):
        return hits
    kept = hits[: max(k, 1) - 1]
    slot = int(_bucket(str(seed), "slot", row_id) * (len(kept) + 1)) % (len(kept) + 1)
    return [*kept[:slot], own, *kept[slot:]]


def retrieved_evidence(
    facts: FactIndex,
    question: str,
    own: FactRef | None,
    row_id: str,
    seed: int = 0,
    shown: Sequence[Hit] = (),
) -> list[str]:
    """The lines that lead grounded answering's prompt for ``question`` (:func:`evidence_lines` of the facts
    that fit it, after the clause of the ``shown`` chunks that writes the time a time question asks for), with
    the row's ``own`` fact's statement among them. Where the fit missed it, it takes the place of the last
    one, at a position drawn from a hash of ``seed`` and ``row_id``, as in :func:`retrieved_context`: the model
    learns to read which line answers, not to copy the first."""
    fit = fit_facts(question, facts)
    when = when_sentence(fit.asked, shown) if shown and asks_when(question) else None
    lines = evidence_lines(fit, when=when[0] if when is not None else "")
    if own is None or fact_statement(own) in lines:
        return lines
    kept = lines[: EVIDENCE_LINES - 1]
    slot = int(_bucket(str(seed), "lead", row_id) * (len(kept) + 1)) % (len(kept) + 1)
    return [*kept[:slot], fact_statement(own), *kept[slot:]]


def training_records(
    rows: list[dict[str, Any]],
    index: ChunkIndex | None,
    context_share: float,
    seed: int = 0,
    k: int = CONTEXT_K,
    facts: FactIndex | None = None,
) -> list[dict[str, Any]]:
    """Chat records of trainable ``rows``; a ``context_share`` of them also as a copy (id + ``:ctx``) with the
    chunks grounded answering would retrieve for the row's question from ``index`` (the warehouse's chunk
    index), the row's own chunk among them (:func:`retrieved_context`), led by the statements of the facts
    that fit the question best in ``facts`` (the warehouse's fact index), its own fact's among them
    (:func:`retrieved_evidence`)."""
    records = [
        {
            "id": row["row_id"],
            "messages": chat_messages(row["question"], row["answer"]),
            "doc": row["doc"],
            "kind": row["kind"],
        }
        for row in rows
    ]
    if context_share <= 0 or index is None:
        return records
    # Chunks as retrieval returns them (heading path, then text), so the prompt is the one answering builds.
    by_id = {chunk_id: Hit(chunk_id, doc, heading, text, 0.0) for chunk_id, doc, heading, text in index.rows}
    by_row = {row["row_id"]: row for row in rows}

    def asked(row_id: str, question: str) -> str:
        """The context copy asks in everyday words where the lexicon has them (住宿费 -> 住酒店), as staff do."""
        return in_everyday_words(question, _bucket(str(seed), "words", row_id))

    @cache  # asked for the chunks, then for the lead that may quote them
    def context_of(row_id: str) -> list[Hit] | None:  # asked only for the rows chosen to carry context
        row = by_row[row_id]
        own = by_id.get(row.get("chunk_id") or "")
        if own is None:
            return None
        return retrieved_context(index, asked(row_id, row["question"]), own, row_id, seed, k)

    fact_of = {fact.fact_id: fact for fact, _ in facts.facts} if facts is not None else {}

    def lead_of(row_id: str, question: str) -> list[str]:
        if facts is None:
            return []
        own = next((fact_of[i] for i in by_row[row_id].get("fact_ids") or () if i in fact_of), None)
        return retrieved_evidence(facts, question, own, row_id, seed, context_of(row_id) or ())

    return with_context_rows(
        records, context_of, context_share, seed, augment=True, rephrase=asked, evidence=lead_of
    )


def _bucket(*parts: str) -> float:
    digest = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()
    return int(digest[:8], 16) / 0xFFFFFFFF


def split_of(row_id: str, valid_share: float) -> str:
    """Deterministic split by the row's id, so a row keeps its split across snapshots."""
    bucket = int(hashlib.sha256(row_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "valid" if bucket < valid_share else "train"


def freeze_dataset(con: duckdb.DuckDBPyConnection, settings: Settings, gate_run_id: str) -> DatasetInfo:
    """Freeze the trainable rows (after a passing release gate) under their content hash. The first freeze
    also holds out the golden set, so its questions never reach training."""
    hold_out(con, settings.golden_size, golden_threshold=settings.similarity_threshold)
    rows = queries.trainable_rows(con, settings.similarity_threshold)
    if not rows:
        raise ValueError("no trainable rows: nothing is approved, corrected or verified by the ledger")
    # Context rows only: the warehouse's chunk index, the one grounded answering searches (cached per content).
    index = ChunkIndex.build(con) if settings.context_share > 0 else None
    facts = FactIndex.build(con) if settings.context_share > 0 else None
    records = training_records(rows, index, settings.context_share, settings.train_seed, facts=facts)
    prompt_format = prompt_format_for(settings.context_share)
    dataset_id = dataset_id_for(records, prompt_format)
    folder = settings.workspace / "datasets" / dataset_id
    splits = [(r["row_id"], split_of(r["row_id"], settings.valid_share)) for r in rows]
    if not any(split == "valid" for _, split in splits) and len(splits) > 1:
        splits[-1] = (splits[-1][0], "valid")  # early stopping needs at least one validation row
    numeric_share = sum(bool(r["is_numeric"]) for r in rows) / len(rows)
    train_count = sum(split == "train" for _, split in splits)
    info = DatasetInfo(
        dataset_id, folder, len(rows), train_count, len(rows) - train_count, numeric_share, created=False
    )
    if queries.dataset_exists(con, dataset_id) and folder.exists():
        return info
    _write_files(folder, records, dict(splits), dataset_id, prompt_format)
    counts = {
        "status": dict(Counter(r["status"] for r in rows)),
        "kind": dict(Counter(r["kind"] for r in rows)),
        "doc": dict(Counter(r["doc"] for r in rows)),
        "context_records": sum(r.get("context") == CONTEXT_FORMAT for r in records),
    }
    if not queries.dataset_exists(con, dataset_id):
        queries.register_dataset(
            con,
            {
                "dataset_id": dataset_id,
                "prompt_format": prompt_format,
                "row_count": len(rows),
                "train_count": train_count,
                "valid_count": len(rows) - train_count,
                "numeric_share": numeric_share,
                "counts": counts,
                "gate_run_id": gate_run_id,
                "path": str(folder),
            },
            splits,
        )
    return DatasetInfo(
        dataset_id, folder, len(rows), train_count, len(rows) - train_count, numeric_share, created=True
    )


def _write_files(
    folder: Path, records: list[dict[str, Any]], split: dict[str, str], dataset_id: str, prompt_format: str
) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dataset_id}-", dir=folder.parent))
    try:
        with (
            open(staging / "train.jsonl", "w", encoding="utf-8") as train,
            open(staging / "valid.jsonl", "w", encoding="utf-8") as valid,
        ):
            for record in records:
                row_id = record["id"].removesuffix(":ctx")  # a context copy goes where its row goes
                target = valid if split[row_id] == "valid" else train
                target.write(json.dumps(record, ensure_ascii=False) + "\n")
        manifest = {
            "dataset_id": dataset_id,
            "prompt_format": prompt_format,
            "rows": len(split),
            "records": len(records),
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=2), "utf-8")
        if folder.exists():
            shutil.rmtree(folder)  # a leftover from a crash between writing and registering
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
