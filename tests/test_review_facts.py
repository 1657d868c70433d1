"""Fact-first review (issue #17) without a server: the verdict -> rows rule, the choice of fact tasks, and a
whole batch of the sample applied from an archived export (the same shape Label Studio exports).

``tests/test_review_facts_labelstudio.py`` runs the same plan through a real Label Studio server."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

import duckdb

from review import sync
from review.facts import LEDGER, choose_facts, decide_row, settle
from review.labeling import (
    CORRECTED_NUMBERS,
    CORRECTED_SUBJECT,
    VERDICT,
    label_config,
    task_for_fact,
)
from review.push import plan_batch
from runtime.config import Settings
from tasks.distill.distill import distill, make_teacher
from tasks.ingest.documents import ingest_file
from tasks.ingest.numbers import rule_numbers
from tests.conftest import SAMPLE_PDF
from warehouse import review as queries

CHUNK = "第十二条 住宿费每人每天不超过500元，伙食补助费每人每天100元。出差期间的市内交通费每人每天80元。"


def _fact(fact_id: str, raw: str, subject: str, verdict: str | None = None, who: str = "ann@x.org") -> dict:
    start = CHUNK.index(raw)
    (mention,) = [m for m in rule_numbers(CHUNK) if m.start == start]
    return {
        "fact_id": fact_id,
        "value": mention.value_str(),
        "value_max": None,
        "unit": mention.unit,
        "raw": mention.raw,
        "qualifier": mention.qualifier,
        "subject": subject,
        "context": CHUNK,
        "span_start": mention.start,
        "span_end": mention.end,
        "verdict": verdict,
        "annotator": who if verdict else None,
        "decided_at": datetime(2026, 1, 2, 3, 4, 5) if verdict else None,
        "in_open_task": False,
    }


def _row(question: str, answer: str, **extra: Any) -> dict:
    return {
        "row_id": "r",
        "question": question,
        "answer": answer,
        "evidence": answer,
        "kind": "numeric",
        "unsure": False,
        "in_conflict": False,
        "review_verdict": None,
        "chunk_text": CHUNK,
        **extra,
    }


LODGING = _row("住宿费每人每天的标准是多少？", "住宿费每人每天不超过500元")


def test_an_unverified_fact_makes_the_row_wait_for_it() -> None:
    facts = [_fact("f-lodging", "500元", "住宿费"), _fact("f-meals", "100元", "伙食补助费")]
    outcome = decide_row(LODGING, facts)
    assert outcome.kind == "wait" and outcome.needs == (("f-lodging",),)


def test_a_verified_fact_approves_as_the_person_who_verified_it() -> None:
    facts = [_fact("f-lodging", "500元", "住宿费", "correct"), _fact("f-meals", "100元", "伙食补助费")]
    outcome = decide_row(LODGING, facts)
    assert outcome.kind == "approve" and outcome.reviewer == LEDGER + "ann@x.org"
    assert outcome.fact_ids == ("f-lodging",) and outcome.reviewed_at == datetime(2026, 1, 2, 3, 4, 5)


def test_a_verified_fact_of_another_subject_approves_nothing() -> None:
    # 100 元 is the meals allowance: verified, but a laundry question stating it is not grounded.
    facts = [_fact("f-meals", "100元", "伙食补助费", "correct")]
    outcome = decide_row(_row("洗衣费每人每天多少？", "洗衣费每人每天100元"), facts)
    assert outcome.kind == "person" and outcome.suggested == "reject"


def test_every_number_must_be_verified() -> None:
    row = _row("住宿费和伙食补助费每人每天各多少？", "住宿费每人每天不超过500元，伙食补助费每人每天100元")
    half = [_fact("f-lodging", "500元", "住宿费", "correct"), _fact("f-meals", "100元", "伙食补助费")]
    assert decide_row(row, half).kind == "wait"
    both = [
        _fact("f-lodging", "500元", "住宿费", "correct"),
        _fact("f-meals", "100元", "伙食补助费", "correct", "b@x"),
    ]
    outcome = decide_row(row, both)
    assert outcome.kind == "approve" and outcome.reviewer == LEDGER + "ann@x.org+b@x"


def test_not_a_rule_rejects_and_a_correction_sends_the_row_back() -> None:
    refused = [_fact("f-lodging", "500元", "住宿费", "not_a_rule")]
    outcome = decide_row(LODGING, refused)
    assert outcome.kind == "reject" and outcome.reviewer == LEDGER + "ann@x.org"
    assert "not a rule" in outcome.notes[0]
    corrected = _fact("f-lodging", "500元", "住宿费", "corrected")
    corrected["value"] = (
        "450"  # the person says the rule is 450 元: a row stating 500 元 is no longer grounded
    )
    outcome = decide_row(LODGING, [corrected])
    assert outcome.kind == "person" and outcome.grounded is False and outcome.fact_ids == ()


def test_rows_the_ledger_cannot_decide_go_to_people_with_a_suggestion() -> None:
    facts = [_fact("f-lodging", "500元", "住宿费", "correct")]
    assert decide_row({**LODGING, "unsure": True}, facts).kind == "person"
    assert decide_row({**LODGING, "in_conflict": True}, facts).suggested == "accept"
    assert decide_row({**LODGING, "review_verdict": "correct"}, facts).kind == "person"
    text = _row("报销需要什么材料？", "需要附发票和审批单。", kind="text")
    assert decide_row(text, facts).kind == "person"


def test_choose_facts_covers_every_need_with_the_fewest_facts() -> None:
    needs = [("a", "b"), ("b",), ("c",), ("a",), ("d", "e")]
    chosen = choose_facts(needs, covered={"e"})
    assert set(chosen) == {"a", "b", "c"} or set(chosen) == {"b", "c", "a"}
    assert len(chosen) == 3 and "d" not in chosen
    assert choose_facts(needs, covered=set()) == choose_facts(list(needs), covered=set())  # deterministic


def test_fact_task_shows_the_sentence_with_the_one_number() -> None:
    from label_studio_sdk.label_interface import LabelInterface

    fact = {
        **_fact("f-meals", "100元", "伙食补助费"),
        "chunk_text": CHUNK,
        "heading_path": "第三章 > 第十二条",
    }
    fact.update(doc_name="细则<1>.pdf", page=3)
    task = task_for_fact(fact, ["伙食补助费每人每天多少？", "<b>x</b>"], "rb-1")
    assert task["source_html"].count("<mark") == 1 and ">100元</mark>" in task["source_html"]
    assert "500元" in task["source_html"] and "80元" not in task["source_html"]  # the sentence, not the chunk
    assert "第 <b>3</b> 页" in task["where_html"] and "细则&lt;1&gt;.pdf" in task["where_html"]
    assert "伙食补助费" in task["answer_html"] and "&lt;b&gt;x&lt;/b&gt;" in task["notes_html"]
    assert LabelInterface(label_config()).validate_task({"data": task})


# ---------------------------------------------------------------------------------------------------------
# A whole batch of the sample, applied from an archive (the shape of a Label Studio export)


def sample_plan(con: duckdb.DuckDBPyConnection, settings: Settings) -> Any:
    assert ingest_file(con, SAMPLE_PDF, settings).status == "added"
    distill(con, settings, make_teacher(settings))
    return plan_batch(con, settings.similarity_threshold)


def waiting_needs(con: duckdb.DuckDBPyConnection) -> dict[str, tuple[tuple[str, ...], ...]]:
    """Row -> per number, the facts any one of which (verified) decides it: what the plan relies on."""
    return {r: o.needs for r, o in settle(con).outcomes.items() if o.kind == "wait"}


def pick_facts(con: duckdb.DuckDBPyConnection, fact_ids: list[str], needs: dict) -> dict[str, dict[str, Any]]:
    """Three fact tasks to judge: ``ok`` (correct), ``fix`` (corrected to another number of its sentence) and
    ``not`` (not a rule); each the only fitting fact of some row's number, its value the only one of its kind
    in its chunk (so the expected outcome of each row is plain)."""
    singles = {n[0] for ns in needs.values() for n in ns if len(n) == 1}
    facts = {f["fact_id"]: f for fs in queries.facts_with_verdicts(con, _chunks(con)).values() for f in fs}
    chunk_values: dict[str, list[str]] = {}
    for f in facts.values():
        chunk_values.setdefault(_chunk_of(con, f["fact_id"]), []).append(f["value"])
    usable = [
        f
        for f in fact_ids
        if f in singles
        and chunk_values[_chunk_of(con, f)].count(facts[f]["value"]) == 1
        and facts[f]["value_max"] is None
    ]
    picked: dict[str, dict[str, Any]] = {}
    for fact_id in usable:
        fact = facts[fact_id]
        others = [
            m
            for m in rule_numbers(fact["context"])
            if m.value != Decimal(fact["value"]) and m.value_max is None
        ]
        if "fix" not in picked and others and all(m.value != Decimal(fact["value"]) for m in others):
            picked["fix"] = {**fact, "new_raw": others[0].raw, "new_value": others[0].value_str()}
        elif "ok" not in picked:
            picked["ok"] = fact
        elif "not" not in picked:
            picked["not"] = fact
        if len(picked) == 3:
            return picked
    raise AssertionError(f"the sample has no three suitable facts: {picked}")


def _chunks(con: duckdb.DuckDBPyConnection) -> list[str]:
    return [c for (c,) in con.execute("SELECT chunk_id FROM chunks").fetchall()]


def _chunk_of(con: duckdb.DuckDBPyConnection, fact_id: str) -> str:
    return con.execute("SELECT chunk_id FROM facts WHERE fact_id = ?", [fact_id]).fetchone()[0]


def choice(verdict: str, numbers: str = "", subject: str = "") -> list[dict[str, Any]]:
    out = [{"from_name": VERDICT, "to_name": "answer", "type": "choices", "value": {"choices": [verdict]}}]
    for name, text in ((CORRECTED_NUMBERS, numbers), (CORRECTED_SUBJECT, subject)):
        if text:
            out.append(
                {"from_name": name, "to_name": "answer", "type": "textarea", "value": {"text": [text]}}
            )
    return out


def fact_results(plan: Any, picked: dict[str, dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Every fact task's annotation: accept, except the three picked ones."""
    out = {f: choice("accept") for f in plan.fact_ids}
    out[picked["fix"]["fact_id"]] = choice("correct", picked["fix"]["new_raw"])
    out[picked["not"]["fact_id"]] = choice("reject")
    return out


def row_results(plan: Any) -> dict[str, list[dict[str, Any]]]:
    """Row tasks: the ledger's suggestion taken, except the first, where the person disagrees."""
    out = {r: choice(plan.suggested.get(r, "accept")) for r in plan.row_ids}
    if plan.row_ids:
        first = plan.row_ids[0]
        out[first] = choice("reject" if plan.suggested.get(first, "accept") == "accept" else "accept")
    return out


def expected_statuses(
    needs: dict[str, tuple[tuple[str, ...], ...]],
    picked: dict[str, dict[str, Any]],
    rows: dict[str, list[dict[str, Any]]],
    person: str,
) -> dict[str, tuple[str, str | None]]:
    """Row -> (status, reviewer) as the verdicts say, computed plainly from the plan's needs: a number is
    decided by an accepted fact; one whose only facts are the corrected one is back with people; one whose
    only facts are the not-a-rule one rejects the row."""
    fix, refused = picked["fix"]["fact_id"], picked["not"]["fact_id"]
    out: dict[str, tuple[str, str | None]] = {}
    for row_id, row_needs in needs.items():
        states = []
        for need in row_needs:
            if any(f not in (fix, refused) for f in need):
                states.append("ok")
            elif fix in need:
                states.append("fix")
            else:
                states.append("not")
        if "fix" in states:
            out[row_id] = ("needs_review", None)
        elif "not" in states:
            out[row_id] = ("rejected", LEDGER + person)
        else:
            out[row_id] = ("approved", LEDGER + person)
    for row_id, result in rows.items():
        verdict = result[0]["value"]["choices"][0]
        out[row_id] = ({"accept": "approved", "reject": "rejected"}[verdict], person)
    return out


def statuses(con: duckdb.DuckDBPyConnection) -> dict[str, tuple[str, str | None]]:
    return {r: (s, w) for r, s, w in con.execute("SELECT row_id, status, reviewer FROM qa_rows").fetchall()}


def snapshot(con: duckdb.DuckDBPyConnection) -> list[tuple[Any, ...]]:
    return (
        con.execute(
            "SELECT row_id, status, reviewer, reviewed_at, answer, numbers, fact_ids, grounded, verify_notes"
            " FROM qa_rows ORDER BY row_id"
        ).fetchall()
        + con.execute("SELECT * EXCLUDE (applied_at) FROM fact_verdicts ORDER BY fact_id").fetchall()
    )


def test_a_batch_of_the_sample_applied_offline(con: duckdb.DuckDBPyConnection, settings: Settings) -> None:
    plan = sample_plan(con, settings)
    total = queries.row_count(con)
    assert plan.fact_ids and plan.tasks <= 0.4 * total  # fact-first: far fewer tasks than rows
    needs = waiting_needs(con)
    assert sum(1 for ns in needs.values() if ns) + len(plan.row_ids) == plan.rows_decided
    picked = pick_facts(con, plan.fact_ids, needs)
    queries.create_batch(con, "rb-f", 999, None, plan.row_ids, plan.fact_ids, plan.suggested)
    keys = [*plan.row_ids, *plan.fact_ids]
    queries.set_task_ids(con, "rb-f", {k: i + 1 for i, k in enumerate(keys)})
    facts, rows = fact_results(plan, picked), row_results(plan)
    tasks = [
        {
            "id": i + 1,
            "data": {"kind": "fact", "fact_id": k, "batch_id": "rb-f"}
            if k in facts
            else {"kind": "row", "row_id": k, "batch_id": "rb-f"},
            "annotations": [
                {
                    "id": 100 + i,
                    "completed_by": 7,
                    "result": (facts.get(k) or rows[k]),
                    "updated_at": "2026-01-01T10:00:00Z",
                }
            ],
        }
        for i, k in enumerate(keys)
    ]
    archive = {"users": {"7": "ann@example.org"}, "tasks": tasks}
    before = statuses(con)
    result = sync.apply_export(con, "rb-f", archive, None)
    assert result.status == "synced" and result.prediction_changed == (1 if plan.row_ids else 0)
    assert result.applied["fact_corrected"] == 1 and result.applied["fact_not_a_rule"] == 1
    expected = expected_statuses(needs, picked, rows, "ann@example.org")
    after = statuses(con)
    assert {r: after[r] for r in expected} == expected
    assert {r: s for r, s in after.items() if r not in expected} == {
        r: s for r, s in before.items() if r not in expected
    }
    # The ledger keeps the original and records who corrected it.
    fixed = {v["fact_id"]: v for v in queries.fact_verdicts(con)}[picked["fix"]["fact_id"]]
    assert (fixed["verdict"], fixed["value"], fixed["original_value"]) == (
        "corrected",
        picked["fix"]["new_value"],
        picked["fix"]["value"],
    )
    assert fixed["annotator"] == "ann@example.org" and fixed["decided_at"] is not None
    assert (
        con.execute("SELECT value FROM facts WHERE fact_id = ?", [fixed["fact_id"]]).fetchone()[0]
        == fixed["value"]
    )

    # Idempotent: applying again and settling again change nothing.
    frozen = snapshot(con)
    again = sync.apply_export(con, "rb-f", archive, None)
    assert again.applied == {} and again.ledger == {} and again.unchanged == len(keys)
    settle(con)
    assert snapshot(con) == frozen

    # Next batch: exactly the rows the correction sent back, as row tasks; no fact is asked twice.
    rerouted = sorted(r for r, (s, _) in expected.items() if s == "needs_review")
    follow = plan_batch(con, settings.similarity_threshold)
    assert follow.fact_ids == [] and sorted(follow.row_ids) == rerouted


def test_the_ledger_vouches_only_through_a_fact_stating_exactly_the_number() -> None:
    # 2400 元 is one end of the fact "1500-2400元": grounded for distillation, but no verified fact states it.
    text = "住宿费标准为1500-2400元。"
    (mention,) = rule_numbers(text)
    fact = {
        "fact_id": "f-range",
        "value": mention.value_str(),
        "value_max": str(mention.value_max),
        "unit": mention.unit,
        "raw": mention.raw,
        "qualifier": mention.qualifier,
        "subject": "住宿费",
        "context": text,
        "span_start": mention.start,
        "span_end": mention.end,
        "verdict": "correct",
        "annotator": "ann@x.org",
        "decided_at": None,
    }
    row = _row(
        "住宿费标准最高是多少？",
        "住宿费标准最高为2400元。",
        evidence="住宿费标准为1500-2400元",
        chunk_text=text,
    )
    outcome = decide_row(row, [fact])
    assert outcome.kind == "person" and outcome.suggested == "accept"
    whole = _row(
        "住宿费标准是多少？", "住宿费标准为1500-2400元。", evidence="住宿费标准为1500-2400元", chunk_text=text
    )
    assert decide_row(whole, [fact]).kind == "approve"


def test_a_changed_fact_verdict_moves_its_rows(con: duckdb.DuckDBPyConnection, settings: Settings) -> None:
    plan = sample_plan(con, settings)
    needs = waiting_needs(con)
    picked = pick_facts(con, plan.fact_ids, needs)
    queries.create_batch(con, "rb-g", 998, None, [], plan.fact_ids, {})
    queries.set_task_ids(con, "rb-g", {k: i + 1 for i, k in enumerate(plan.fact_ids)})
    results = fact_results(plan, picked)

    stamps = dict.fromkeys(plan.fact_ids, "2026-01-01T10:00:00Z")

    def archive() -> dict[str, Any]:
        tasks = [
            {
                "id": i + 1,
                "data": {"kind": "fact", "fact_id": k, "batch_id": "rb-g"},
                "annotations": [
                    {"id": 500 + i, "completed_by": 7, "result": results[k], "updated_at": stamps[k]}
                ],
            }
            for i, k in enumerate(plan.fact_ids)
        ]
        return {"users": {"7": "ann@example.org"}, "tasks": tasks}

    sync.apply_export(con, "rb-g", archive(), None)
    ok, fix = picked["ok"]["fact_id"], picked["fix"]["fact_id"]
    only_ok = [r for r, ns in needs.items() if any(n == (ok,) for n in ns)]
    assert only_ok and all(statuses(con)[r][0] == "approved" for r in only_ok)
    # The person changes their mind: the fact they had marked correct is not a rule; the corrected one was right.
    results[ok], results[fix] = choice("reject"), choice("accept")
    stamps[ok] = stamps[fix] = "2026-01-02T10:00:00Z"
    again = sync.apply_export(con, "rb-g", archive(), None)
    assert again.applied == {"fact_not_a_rule": 1, "fact_correct": 1}
    assert all(statuses(con)[r] == ("rejected", LEDGER + "ann@example.org") for r in only_ok)
    restored = con.execute("SELECT value FROM facts WHERE fact_id = ?", [fix]).fetchone()[0]
    assert restored == picked["fix"]["value"]  # the ingested value is back, the correction withdrawn
    only_fix = [r for r, ns in needs.items() if ns and all(n == (fix,) for n in ns)]
    assert all(statuses(con)[r] == ("approved", LEDGER + "ann@example.org") for r in only_fix)
