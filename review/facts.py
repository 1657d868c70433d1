"""Fact-first review: people verify each ledger number once, at its sentence, and the verified ledger decides
the rows that cite it.

A row waiting for people is decided by the ledger when every number it states (that the question did not
supply) is a fact of its chunk *whose subject fits the question* (the one matcher,
``tasks.ingest.facts.match_numbers``, and the one subject test, ``tasks.distill.verify.subject_fits``, through
``verify_row``), a fact stating exactly that number (the same value or range, the same unit) whose subject
fits, and a person marked that fact correct (or corrected it to that value). Such a row is approved as
``ledger:<annotator>``. A row stating a number that a person marked "not a rule" is rejected the same way.
Everything else needs a person row by row: rows whose numbers the ledger cannot ground, rows in a conflict,
rows the teacher marked unsure, unanswerable and text rows (the ledger has no number to vouch for), and rows a
person already gave a verdict on.

``decide_row`` is the pure rule; ``settle`` applies it to the warehouse and only writes what changes, so running
it again changes nothing. Rows decided by the ledger are recomputed from the verdicts as they are now: a person
who changes a fact's verdict moves its rows with it.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb

from tasks.distill import verify
from tasks.distill.teachers.base import QAPair
from tasks.distill.verify import subject_fits, verify_row
from tasks.ingest.facts import Fact, match_numbers
from warehouse import review as queries

LEDGER = "ledger:"  # reviewer prefix of rows the person-verified ledger decided
VERIFIED = ("correct", "corrected")
NOT_A_RULE = "not_a_rule"
# The verifier's version (pre-annotations carry it as Label Studio's model_version): the hash of its source, so
# a changed verifier is a new version without anyone remembering to bump a constant.
VERIFIER_VERSION = "verify-" + hashlib.sha256(Path(verify.__file__).read_bytes()).hexdigest()[:10]


@dataclass(frozen=True)
class Outcome:
    """What the ledger says about one row.

    kind: ``approve`` (every number a person-verified fitting fact), ``reject`` (a number a person marked not
    a rule), ``wait`` (grounded, but some facts are not verified yet: ``needs`` lists, per number, the fitting
    facts any one of which would do), ``person`` (the ledger cannot decide: a row task)."""

    kind: str
    reason: str = ""
    needs: tuple[tuple[str, ...], ...] = ()
    reviewer: str | None = None
    reviewed_at: datetime | None = None
    numbers: tuple[str, ...] | None = None  # re-verified against the ledger as it is now (None: keep)
    is_numeric: bool | None = None
    grounded: bool | None = None
    fact_ids: tuple[str, ...] | None = None
    notes: tuple[str, ...] = ()
    suggested: str | None = None  # the pre-annotation for a row task: accept | reject


def _fact(row: dict[str, Any]) -> Fact:
    return Fact.from_row(row)


def _by_id(facts: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {f["fact_id"]: f for f in facts}


def decide_row(row: dict[str, Any], facts: Sequence[dict[str, Any]]) -> Outcome:
    """The ledger's outcome for one row. ``row``: question, answer, evidence, kind, unsure, evidence_found,
    in_conflict, review_verdict, chunk_text. ``facts``: the chunk's facts as they are now, each with
    ``verdict`` (None, correct, corrected, not_a_rule), ``annotator`` and ``decided_at``."""
    pair = QAPair(
        row["question"], row["answer"], row["evidence"] or "", kind=row["kind"], unsure=row["unsure"]
    )
    live = [f for f in facts if f.get("verdict") != NOT_A_RULE]
    now = verify_row(pair, row["chunk_text"], [_fact(f) for f in live])
    # Re-verification results replace the row's (distillation's) only where a person changed the ledger.
    changed = any(f.get("verdict") in ("corrected", NOT_A_RULE) for f in facts)
    fields: dict[str, Any] = {
        "numbers": now.numbers if changed else None,
        "is_numeric": now.is_numeric if changed else None,
        "grounded": now.grounded if changed else None,
        "fact_ids": now.fact_ids if changed else None,
    }
    suggested = (
        "accept" if now.grounded and (now.evidence_found or row["kind"] == "unanswerable") else "reject"
    )
    if row.get("review_verdict"):
        return Outcome("person", "a person gave this row a verdict", suggested=suggested)
    if row["kind"] == "unanswerable":
        return Outcome("person", "unanswerable question", suggested=suggested)
    if row["unsure"]:
        return Outcome("person", "the teacher marked it unsure", suggested=suggested)
    if row.get("in_conflict"):
        return Outcome("person", "in a conflict", suggested=suggested)
    if not now.evidence_found:
        return Outcome("person", "evidence not found", suggested="reject")
    if not now.is_numeric:
        return Outcome("person", "no number for the ledger to vouch for", suggested=suggested)
    if not now.grounded:
        every = verify_row(pair, row["chunk_text"], [_fact(f) for f in facts])
        refused = [f for f in facts if f.get("verdict") == NOT_A_RULE and f["fact_id"] in every.fact_ids]
        if every.grounded and refused:
            who = sorted({f["annotator"] for f in refused})
            raws = "、".join(dict.fromkeys(f["raw"] for f in refused))
            return Outcome(
                "reject",
                "states a number a person marked not a rule",
                reviewer=LEDGER + "+".join(who),
                reviewed_at=max((f["decided_at"] for f in refused if f["decided_at"]), default=None),
                notes=(f"{raws} is not a rule ({', '.join(who)})",),
                **fields,
            )
        notes = now.notes if changed else ()
        return Outcome(
            "person", "numbers the ledger cannot ground", notes=notes, suggested="reject", **fields
        )

    by_id = _by_id(live)
    used: list[dict[str, Any]] = []
    needs: list[tuple[str, ...]] = []
    # Stricter than grounding (where one shared value is enough): the ledger vouches for a number only through
    # a fact stating exactly it, in the same unit (50万元 is not vouched for by a fact "20–50万元").
    exact = match_numbers(
        pair.answer, [_fact(f) for f in live], given=pair.question, whole_range=True, same_unit=True
    )
    for stated in exact:
        if stated.given:
            continue
        values = set(stated.mention.values())
        fitting = [
            by_id[f.fact_id]
            for f in stated.facts
            if set(f.values()) == values and subject_fits(pair.question, f)
        ]
        if not fitting:
            return Outcome(
                "person", "no ledger fact states exactly this number", suggested=suggested, **fields
            )
        verified = [f for f in fitting if f.get("verdict") in VERIFIED]
        if verified:
            used.append(verified[0])
        else:
            needs.append(tuple(f["fact_id"] for f in fitting))
    if needs:
        return Outcome("wait", "facts not verified yet", needs=tuple(needs), suggested=suggested, **fields)
    if not used:  # every number came from the question: nothing for the ledger to vouch for
        return Outcome("person", "no number for the ledger to vouch for", suggested=suggested, **fields)
    who = sorted({f["annotator"] for f in used})
    return Outcome(
        "approve",
        "every number a person-verified fact",
        reviewer=LEDGER + "+".join(who),
        reviewed_at=max((f["decided_at"] for f in used if f["decided_at"]), default=None),
        numbers=now.numbers,
        is_numeric=now.is_numeric,
        grounded=True,
        fact_ids=tuple(dict.fromkeys(f["fact_id"] for f in used)),
    )


MAX_FACTS_PER_TASK = 10  # one per digit key (0-9) of a fact task; a longer sentence is split over tasks


def sentence_key(fact: dict[str, Any]) -> tuple[str, str]:
    """The sentence a fact stands in: its chunk and its sentence text (the fact's ``context``)."""
    return (str(fact.get("chunk_id") or ""), str(fact.get("context") or ""))


def choose_sentences(
    needs: Iterable[tuple[str, ...]], covered: set[str], sentence_of: dict[str, tuple[str, str]]
) -> list[tuple[str, str]]:
    """The fewest source sentences (greedy set cover, deterministic) so that every need has a fact in one:
    each need is the fitting facts of one number, any one of which verified decides it, and a person verifies
    every fact of a sentence in one task. Needs met by ``covered`` (facts already verified or in an open
    task) need nothing."""
    open_needs = [n for n in needs if n and not covered.intersection(n)]
    order: dict[tuple[str, str], int] = {}
    for n in open_needs:
        for f in n:
            order.setdefault(sentence_of[f], len(order))
    chosen: list[tuple[str, str]] = []
    while open_needs:
        counts = Counter(s for n in open_needs for s in {sentence_of[f] for f in n})
        best = max(counts, key=lambda s: (counts[s], -order[s]))
        chosen.append(best)
        open_needs = [n for n in open_needs if best not in {sentence_of[f] for f in n}]
    return chosen


def sentence_tasks(
    sentences: Sequence[tuple[str, str]], facts: Iterable[dict[str, Any]], skip: set[str]
) -> list[tuple[str, ...]]:
    """The fact tasks for ``sentences``: every ledger fact of each sentence (in text order) that is not in
    ``skip`` (verified, or in an open task), at most ``MAX_FACTS_PER_TASK`` to a task. A person reading the
    sentence judges all its numbers at once, the dates and form numbers too (not a rule)."""
    by_sentence: dict[tuple[str, str], list[str]] = {s: [] for s in sentences}
    for f in facts:
        key = sentence_key(f)
        if key in by_sentence and f["fact_id"] not in skip and f["fact_id"] not in by_sentence[key]:
            by_sentence[key].append(f["fact_id"])
    return [
        tuple(ids[i : i + MAX_FACTS_PER_TASK])
        for ids in by_sentence.values()
        for i in range(0, len(ids), MAX_FACTS_PER_TASK)
    ]


def add_notes(current: str, notes: Iterable[str]) -> str:
    """``current`` ("; "-joined verify notes) with the new ``notes`` appended once each, in order."""
    parts = [p for p in (current or "").split("; ") if p]
    for note in notes:
        if note and note not in parts:
            parts.append(note)
    return "; ".join(parts)


@dataclass
class Settled:
    """What ``settle`` found and changed."""

    outcomes: dict[str, Outcome] = field(default_factory=dict)  # row_id -> outcome, for every row looked at
    changed: dict[str, int] = field(default_factory=dict)  # outcome kind -> rows whose values changed
    open_facts: set[str] = field(default_factory=set)  # facts with a task in a batch not yet synced
    verified_facts: set[str] = field(default_factory=set)
    facts: dict[str, dict[str, Any]] = field(default_factory=dict)  # fact_id -> fact (with chunk_id)

    def rows(self, kind: str) -> list[str]:
        return [r for r, o in self.outcomes.items() if o.kind == kind]


def _update(row: dict[str, Any], outcome: Outcome) -> dict[str, Any]:
    decided = outcome.kind in ("approve", "reject")
    return {
        "row_id": row["row_id"],
        "status": {"approve": "approved", "reject": "rejected"}.get(outcome.kind, "needs_review"),
        "reviewer": outcome.reviewer if decided else None,
        "reviewed_at": outcome.reviewed_at if decided else None,
        "numbers": list(outcome.numbers if outcome.numbers is not None else row["numbers"]),
        "is_numeric": outcome.is_numeric if outcome.is_numeric is not None else row["is_numeric"],
        "grounded": outcome.grounded if outcome.grounded is not None else row["grounded"],
        "fact_ids": list(outcome.fact_ids if outcome.fact_ids is not None else row["fact_ids"]),
        "verify_notes": add_notes(row["verify_notes"], outcome.notes),
    }


def _same(row: dict[str, Any], update: dict[str, Any]) -> bool:
    return all(
        (list(row[k]) if isinstance(row[k], (list, tuple)) else row[k]) == update[k]
        for k in update
        if k != "row_id"
    )


def settle(con: duckdb.DuckDBPyConnection, row_ids: Sequence[str] | None = None) -> Settled:
    """Apply the person-verified ledger to the rows it may decide (``warehouse.review.ledger_rows``), writing
    only rows whose values change. The caller holds the transaction (sync: the one applying the export)."""
    rows = queries.ledger_rows(con, row_ids)
    facts = queries.facts_with_verdicts(con, sorted({r["chunk_id"] for r in rows}))
    result = Settled()
    updates = []
    for row in rows:
        chunk_facts = facts[row["chunk_id"]]
        result.open_facts |= {f["fact_id"] for f in chunk_facts if f["in_open_task"]}
        result.verified_facts |= {f["fact_id"] for f in chunk_facts if f["verdict"]}
        result.facts.update({f["fact_id"]: {**f, "chunk_id": row["chunk_id"]} for f in chunk_facts})
        outcome = decide_row(row, chunk_facts)
        result.outcomes[row["row_id"]] = outcome
        update = _update(row, outcome)
        if not _same(row, update):
            updates.append(update)
            result.changed[outcome.kind] = result.changed.get(outcome.kind, 0) + 1
    queries.update_rows(con, updates)
    return result


def questions_waiting_on(con: duckdb.DuckDBPyConnection, fact_ids: Sequence[str]) -> dict[str, list[str]]:
    """fact_id -> the questions of the rows whose verdict a person's verdict on that fact decides (the rows
    waiting on it), read only: what a fact task shows for context."""
    wanted = set(fact_ids)
    out: dict[str, list[str]] = {f: [] for f in fact_ids}
    rows = queries.ledger_rows(con)
    facts = queries.facts_with_verdicts(con, sorted({r["chunk_id"] for r in rows}))
    for row in rows:
        outcome = decide_row(row, facts[row["chunk_id"]])
        for fact_id in {f for need in outcome.needs for f in need} & wanted:
            if row["question"] not in out[fact_id]:
                out[fact_id].append(row["question"])
    return out


# ---------------------------------------------------------------------------------------------------------
# Where the time goes: per batch, the tasks people open and the rows those decide


def economy(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """Per batch (``warehouse.review.batch_economy``) with ``share`` = tasks opened / rows they decide, and the
    totals: tasks opened, all rows, and the share of all rows a person had to open."""
    batches = queries.batch_economy(con)
    for b in batches:
        tasks = b["fact_tasks"] + b["row_tasks"]
        b["tasks"] = tasks
        b["share"] = tasks / b["rows_decided"] if b["rows_decided"] else 0.0
    rows = queries.row_count(con)
    opened = sum(b["tasks"] for b in batches)
    return {
        "batches": batches,
        "rows": rows,
        "opened": opened,
        "share": opened / rows if rows else 0.0,
        "predicted": sum(b["predicted"] for b in batches),
        "prediction_changed": sum(b["prediction_changed"] for b in batches),
    }


def economy_markdown(con: duckdb.DuckDBPyConnection, policy: str = "labelstudio") -> str:
    """The review economy as a markdown report (the build-dataset flow's Prefect artifact)."""
    if policy == "auto":
        return (
            "# Review\n\nPolicy **auto** (demos and CI only): the ledger decided, no person reviewed; grounded"
            " rows in no conflict were approved as `auto:ledger`, the rest rejected.\n"
        )
    e = economy(con)
    lines = [
        "# Review: where the time goes",
        "",
        "| batch | status | fact tasks (sentences) | row tasks | rows decided | tasks / rows decided"
        " | predictions changed |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for b in e["batches"]:
        lines.append(
            f"| {b['batch_id']} | {b['status']} | {b['fact_tasks']} ({b['facts_asked']} facts) | {b['row_tasks']}"
            f" | {b['rows_decided']}"
            f" | {b['share']:.0%} | {b['prediction_changed']}/{b['predicted']} |"
        )
    lines += [
        "",
        f"People opened **{e['opened']}** tasks for **{e['rows']}** rows: **{e['share']:.0%}** of all rows"
        " (row by row, every row waiting for review would be a task). Every number approved through the"
        " ledger was verified by a person at its sentence (reviewer `ledger:<person>`).",
        f"Pre-annotations: people changed {e['prediction_changed']} of {e['predicted']} suggested verdicts.",
    ]
    return "\n".join(lines) + "\n"
