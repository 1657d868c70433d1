"""The golden set: questions held out from reviewed rows when a dataset is first frozen, plus any question
files users register. Training never sees them: the held-out rows and rows asking the same question are kept
out of every dataset, and the release gate checks the rest.

Held-out items come in two splits (../shared/DESIGN.md, Evaluation), each about half the set and stratified
by document and type:

- *reading*: facts held out entirely. Every row citing a reading item's ledger facts, in any phrasing, is
  kept out of training, so the model can only answer by reading the rules (grounded mode is judged here).
  Text and unanswerable items go here too, and so do rows citing no ledger fact: those are held out with
  their question and its near duplicates.
- *recall*: facts training sees, asked in phrasings it never sees. A recall item's phrasing key (its question
  with the fact's subject as ``{s}``: the teacher's template) is reserved: no training row uses it, while the
  item's fact keeps training rows of its own in other phrasings (closed book is judged here). "Of its own":
  rows asking about that fact (it is their first fact), not rows about another rule that only mention it as a
  condition or range bound: a fact seen only there was never taught, and its item would measure nothing.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from tasks.evaluate.evaluate import EvalItem, file_set, item_id, load_questions
from tasks.ingest.facts import first_noun_phrase
from warehouse import golden as queries
from warehouse.db import transaction
from warehouse.gates import trainable_rows

MAX_HELD_OUT_SHARE = 0.2  # golden items: at most this share of the reviewed rows
# Rows the golden set keeps out of training (its items, every row of a reading fact, every row phrased like a
# recall item) stay under this share of the reviewed rows: most rows must stay trainable.
MAX_KEPT_OUT_SHARE = 0.4
RESERVED_EVERY = 3  # one in this many phrasings asked of two or more facts may be reserved for recall

Row = dict[str, Any]


@dataclass
class _Plan:
    """The items chosen so far and every reviewed row they keep out of training (indexed for quick checks)."""

    by_fact: dict[str, list[Row]]
    by_own_fact: dict[str, list[Row]]  # rows by the fact they ask about (their first fact)
    by_phrasing: dict[str, list[Row]]
    by_question: dict[str, list[Row]]
    budget: int
    chosen: dict[str, tuple[Row, str]] = field(default_factory=dict)  # row id -> (row, split)
    kept_out: set[str] = field(default_factory=set)
    recall_facts: set[str] = field(default_factory=set)


def _own_fact(row: Row) -> list[str]:
    """The fact ``row`` asks about (its first fact: distillation puts the asked fact first), as a list of at
    most one."""
    return list(row["fact_ids"][:1])


def _plan(rows: list[Row], budget: int) -> _Plan:
    """An empty plan over the reviewed ``rows``, keeping at most ``budget`` of them out of training."""
    return _Plan(
        _index(rows, lambda r: r["fact_ids"]),
        _index(rows, _own_fact),
        _index(rows, lambda r: [r["phrasing"]]),
        _index(rows, lambda r: [r["question"]]),
        budget=budget,
    )


def _try_add(plan: _Plan, row: Row, split: str) -> bool:
    """Choose ``row`` for ``split`` unless that would leave a recall fact without training rows of its own or
    keep more rows out of training than the budget allows."""
    if row["row_id"] in plan.chosen:
        return False
    shadowed = [row, *plan.by_question[row["question"]]]
    if split == queries.RECALL:
        shadowed += plan.by_phrasing[row["phrasing"]]
    else:
        shadowed += [r for f in row["fact_ids"] for r in plan.by_fact[f]]
    kept_out = plan.kept_out | {r["row_id"] for r in shadowed}
    recall_facts = plan.recall_facts | (set(_own_fact(row)) if split == queries.RECALL else set())
    if len(kept_out) > plan.budget or any(
        all(r["row_id"] in kept_out for r in plan.by_own_fact[f]) for f in recall_facts
    ):
        return False
    plan.chosen[row["row_id"]] = (row, split)
    plan.kept_out, plan.recall_facts = kept_out, recall_facts
    return True


def hold_out(
    con: duckdb.DuckDBPyConnection, size: int, seed: str = "golden", golden_threshold: float = 0.8
) -> int:
    """Hold out about ``size`` reviewed rows once, half *recall* and half *reading* (see the module), each
    split proportionally per (document, type) with at least one item from each group. ``golden_threshold`` is
    the near-duplicate threshold the dataset freeze uses. Returns the number of items added (0 when a
    held-out set already exists)."""
    if size <= 0 or queries.has_held_out(con):
        return 0
    rows = queries.reviewed_rows(con)
    size = min(size, int(len(rows) * MAX_HELD_OUT_SHARE))  # most reviewed rows must stay trainable
    if size <= 0:
        return 0
    plan = _plan(rows, budget=int(len(rows) * MAX_KEPT_OUT_SHARE))
    reserved = _reservable_phrasings(rows, seed)
    _choose(
        plan,
        [r for r in rows if r["fact_ids"] and r["phrasing"] in reserved],
        rows,
        size // 2,
        seed,
        queries.RECALL,
    )
    recall_count = len(plan.chosen)
    _choose(plan, rows, rows, size - recall_count, seed, queries.READING)
    chosen = [plan.chosen[row_id] for row_id in sorted(plan.chosen)]
    set_id = hashlib.sha256("".join(sorted(plan.chosen)).encode()).hexdigest()[:16]
    items = [_item(row, split, f"{queries.HELD_OUT}{set_id}") for row, split in chosen]
    with transaction(con):
        added = queries.insert_items(con, items)
        # Near paraphrases of held-out questions are not trained on either (warehouse/gates.py): a recall
        # item whose fact lost its last training row of its own that way measures nothing of recall, so it goes.
        trained = {f for r in trainable_rows(con, golden_threshold) for f in _own_fact(r)}
        orphans = [
            i["item_id"] for i in items if i["split"] == queries.RECALL and not set(_own_fact(i)) <= trained
        ]
        dropped = queries.drop_held_out_items(con, orphans)
    return added - dropped


def _reservable_phrasings(rows: list[Row], seed: str) -> set[str]:
    """About one in ``RESERVED_EVERY`` of the phrasing keys asked of two or more facts, picked by a seeded
    hash: recall items are chosen among rows with these keys (only the keys of chosen items are reserved)."""
    facts_by_key: dict[str, set[str]] = defaultdict(set)
    questions_by_key: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        facts_by_key[row["phrasing"]].update(row["fact_ids"])
        questions_by_key[row["phrasing"]].add(row["question"])
    # A phrasing is a template when different questions about different facts share it (one question
    # citing two facts is not).
    shared = sorted(
        (k for k, facts in facts_by_key.items() if len(facts) >= 2 and len(questions_by_key[k]) >= 2),
        key=lambda k: hashlib.sha256(f"{seed}:{k}".encode()).hexdigest(),
    )
    return set(shared[: round(len(shared) / RESERVED_EVERY)])


def _choose(plan: _Plan, candidates: list[Row], rows: list[Row], target: int, seed: str, split: str) -> None:
    """Up to ``target`` items of ``split`` from ``candidates``, proportionally per (document, type) group
    (sized by all reviewed ``rows`` of the group), at least one per group of two or more rows."""
    if target <= 0:
        return
    sizes: dict[tuple[str, str], int] = defaultdict(int)
    for row in rows:
        sizes[(row["doc"], row["kind"])] += 1
    groups: dict[tuple[str, str], list[Row]] = defaultdict(list)
    for row in candidates:
        groups[(row["doc"], row["kind"])].append(row)
    total = sum(sizes[g] for g in groups)
    questions = {row["question"] for row, _ in plan.chosen.values()}
    picked = 0
    for group, members in sorted(groups.items()):
        members.sort(key=lambda r: hashlib.sha256(f"{seed}:{r['row_id']}".encode()).hexdigest())
        quota = max(1, round(target * sizes[group] / total)) if sizes[group] > 1 else 0
        taken = 0
        for row in members:
            if taken >= quota or picked >= target:
                break
            if row["question"] in questions or not _try_add(plan, row, split):
                continue
            questions.add(row["question"])
            taken += 1
            picked += 1


def _index(rows: list[Row], keys: Callable[[Row], list[str]]) -> dict[str, list[Row]]:
    index: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        for key in keys(row):
            index[key].append(row)
    return index


def _item(row: Row, split: str, source: str) -> dict[str, Any]:
    return {
        "item_id": item_id(row["question"]),
        "question": row["question"],
        "answer": row["answer"],
        "numbers": list(row["numbers"]) if row["kind"] == "numeric" else [],
        "keywords": _keywords(row["answer"]) if row["kind"] == "text" else [],
        "type": row["kind"],
        "doc": row["doc"],
        "source": source,
        "row_id": row["row_id"],
        "split": split,
        "fact_ids": list(row["fact_ids"]),
        "phrasing": row["phrasing"] if split == queries.RECALL else None,
    }


def _keywords(answer: str) -> list[str]:
    """Up to two noun phrases of the reference answer that a correct text answer should also name."""
    phrases = []
    for clause in answer.replace("；", "，").replace("。", "，").split("，"):
        phrase = first_noun_phrase(clause)
        if len(phrase) >= 2 and phrase not in phrases:
            phrases.append(phrase)
    return phrases[:2]


def add_file(con: duckdb.DuckDBPyConnection, path: Path) -> int:
    """Register a user's question file (the question-file format of tasks/evaluate/evaluate.py) in the golden set."""
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
                "source": file_set(path),
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
            split=r["split"] or "",
        )
        for r in queries.list_items(con)
    ]
