"""The golden set: questions held out from reviewed rows when a dataset is first frozen (stratified by
document and type), plus any question files users register. Training never sees them: the held-out rows
and rows asking the same question are kept out of every dataset, and the release gate checks the rest."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from pathlib import Path
from typing import Any

import duckdb

from tasks.evaluate import EvalItem, item_id, load_questions
from tasks.facts import first_noun_phrase
from warehouse import golden as queries

MAX_HELD_OUT_SHARE = 0.2


def hold_out(con: duckdb.DuckDBPyConnection, size: int, seed: str = "golden") -> int:
    """Hold out about ``size`` reviewed rows once, proportionally per (document, type), at least one from
    each group. Returns the number of items added (0 when a held-out set already exists)."""
    if size <= 0 or queries.has_held_out(con):
        return 0
    rows = queries.reviewed_rows(con)
    size = min(size, int(len(rows) * MAX_HELD_OUT_SHARE))  # most reviewed rows must stay trainable
    if size <= 0:
        return 0
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["doc"], row["kind"])].append(row)
    chosen: list[dict[str, Any]] = []
    seen_questions: set[str] = set()
    for (_, _), members in sorted(groups.items()):
        members.sort(key=lambda r: hashlib.sha256(f"{seed}:{r['row_id']}".encode()).hexdigest())
        quota = max(1, round(size * len(members) / len(rows))) if len(members) > 1 else 0
        for row in members:
            if len([c for c in chosen if (c["doc"], c["kind"]) == (row["doc"], row["kind"])]) >= quota:
                break
            if row["question"] in seen_questions:
                continue
            seen_questions.add(row["question"])
            chosen.append(row)
    set_id = hashlib.sha256("".join(sorted(r["row_id"] for r in chosen)).encode()).hexdigest()[:16]
    items = [
        {
            "item_id": item_id(r["question"]),
            "question": r["question"],
            "answer": r["answer"],
            "numbers": list(r["numbers"]) if r["kind"] == "numeric" else [],
            "keywords": _keywords(r["answer"]) if r["kind"] == "text" else [],
            "type": r["kind"],
            "doc": r["doc"],
            "source": f"{queries.HELD_OUT}{set_id}",
            "row_id": r["row_id"],
        }
        for r in chosen
    ]
    return queries.insert_items(con, items)


def _keywords(answer: str) -> list[str]:
    """Up to two noun phrases of the reference answer that a correct text answer should also name."""
    phrases = []
    for clause in answer.replace("；", "，").replace("。", "，").split("，"):
        phrase = first_noun_phrase(clause)
        if len(phrase) >= 2 and phrase not in phrases:
            phrases.append(phrase)
    return phrases[:2]


def add_file(con: duckdb.DuckDBPyConnection, path: Path) -> int:
    """Register a user's question file (the question-file format of tasks/evaluate.py) in the golden set."""
    items = load_questions(path)
    return queries.insert_items(
        con,
        [
            {
                "item_id": i.id,
                "question": i.question,
                "answer": i.answer,
                "numbers": list(i.numbers),
                "keywords": list(i.keywords),
                "type": i.type,
                "doc": i.doc,
                "source": f"file:{path.name}",
                "row_id": None,
            }
            for i in items
        ],
    )


def golden_items(con: duckdb.DuckDBPyConnection) -> list[EvalItem]:
    return [
        EvalItem(
            id=r["item_id"],
            question=r["question"],
            answer=r["answer"] or "",
            numbers=tuple(r["numbers"]),
            keywords=tuple(r["keywords"]),
            type=r["type"],
            doc=r["doc"],
            source=r["source"],
        )
        for r in queries.list_items(con)
    ]
