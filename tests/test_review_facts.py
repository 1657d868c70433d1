"""Fact-first review (issue #17) without a server: the verdict -> rows rule, the choice of fact tasks, and a
whole batch of the sample applied from an archived export (the same shape Label Studio exports).

``tests/test_review_facts_labelstudio.py`` runs the same plan through a real Label Studio server."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from decimal import Decimal
from typing import Any

import duckdb

from review import sync
from review.facts import (
    LEDGER,
    MAX_FACTS_PER_TASK,
    choose_sentences,
    decide_row,
    economy_markdown,
    sentence_tasks,
    settle,
)
from review.labeling import (
    CORRECTED_NUMBERS,
    CORRECTED_SUBJECT,
    VERDICT,
    fact_task_result,
    label_config,
    task_for_sentence,
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


def test_choose_sentences_covers_every_need_with_the_fewest_sentences() -> None:
    # Facts a, b stand in sentence S1, c in S2, d and e in S3; e is verified already.
    sentence_of = {"a": ("k", "S1"), "b": ("k", "S1"), "c": ("k", "S2"), "d": ("k", "S3"), "e": ("k", "S3")}
    needs = [("a",), ("b",), ("c",), ("a", "c"), ("d", "e")]
    chosen = choose_sentences(needs, {"e"}, sentence_of)
    assert sorted(chosen) == [("k", "S1"), ("k", "S2")]  # two tasks for three facts; S3's need is met by e
    assert choose_sentences(list(needs), {"e"}, sentence_of) == chosen  # deterministic
    # One task per sentence holds every fact of it not verified or asked already, in text order.
    facts = [{"fact_id": f, "chunk_id": k, "context": c} for f, (k, c) in sentence_of.items()]
    assert sentence_tasks(chosen, facts, {"e"}) == [("a", "b"), ("c",)]
    assert sentence_tasks([("k", "S3")], facts, set()) == [("d", "e")]
    many = [{"fact_id": f"f{i}", "chunk_id": "k", "context": "L"} for i in range(MAX_FACTS_PER_TASK + 2)]
    split = sentence_tasks([("k", "L")], many, set())
    assert [len(t) for t in split] == [MAX_FACTS_PER_TASK, 2]  # one digit key per fact of a task


def test_fact_task_shows_the_sentence_with_each_number_numbered() -> None:
    from label_studio_sdk.label_interface import LabelInterface

    where = {"chunk_text": CHUNK, "heading_path": "第三章 > 第十二条", "doc_name": "细则<1>.pdf", "page": 3}
    facts = [
        {**_fact("f-lodging", "500元", "住宿费"), **where},
        {**_fact("f-meals", "100元", "伙食补助费"), **where},
    ]
    citing = {"f-meals": ["伙食补助费每人每天多少？", "<b>x</b>"], "f-lodging": ["住宿费多少？"]}
    task = task_for_sentence(facts, citing, "rb-1")
    assert task["fact_ids"] == ["f-lodging", "f-meals"] and task["kind"] == "fact"
    source = task["source_html"]
    assert source.count("<mark") == 2 and ">500元</mark>" in source and ">100元</mark>" in source
    assert source.index("[0]") < source.index("[1]")  # numbered as their verdict fields (and keys)
    assert "80元" not in source  # the sentence, not the chunk
    assert "第 <b>3</b> 页" in task["where_html"] and "细则&lt;1&gt;.pdf" in task["where_html"]
    assert [f["fact_id"] for f in task["facts"]] == ["f-lodging", "f-meals"]
    assert "住宿费" in task["facts"][0]["html"] and "伙食补助费" in task["facts"][1]["html"]
    assert "table cell" not in task["facts"][0]["html"]  # a number of running text has no cell
    in_table = task_for_sentence([{**facts[0], "cell": "r5c3"}], citing, "rb-1")
    assert "第5行第3列" in in_table["facts"][0]["html"]  # where to look in the printed table
    assert "&lt;b&gt;x&lt;/b&gt;" in task["notes_html"] and "住宿费多少？" in task["notes_html"]
    # Every value the interface shows is in the task (the SDK's check does not know Repeater; the real Label
    # Studio server imports such tasks in tests/test_review_facts_labelstudio.py).
    shown = [o.value_name for o in LabelInterface(label_config()).objects]
    assert all(task.get(v) is not None for v in shown if not v.startswith("facts["))
    assert "facts[{{idx}}].html" in shown and all(f["html"] for f in task["facts"])


def test_a_fact_task_gives_each_fact_its_own_verdict() -> None:
    fact = {"fact_id": "f", "unit": "元", "qualifier": "", "context": CHUNK}
    users = {"7": "ann@x.org"}

    def decided(result: list[dict[str, Any]], index: int, of: int) -> tuple[str | None, str | None]:
        annotation = {"id": 1, "completed_by": 7, "result": result, "updated_at": "2026-01-01T00:00:00Z"}
        decision, flagged = sync.decide_fact(fact, annotation, users, index, of)
        return decision["verdict"], flagged

    mixed = fact_task_result(["accept", "reject", "correct"], numbers={2: "80元"})
    assert [decided(mixed, i, 3)[0] for i in range(3)] == ["correct", "not_a_rule", "corrected"]
    assert [decided(fact_task_result(["accept"] * 2), i, 2)[0] for i in range(2)] == ["correct"] * 2
    assert [decided(fact_task_result(["reject"] * 2), i, 2)[0] for i in range(2)] == ["not_a_rule"] * 2
    # "c" with no number marked says nothing about which one is wrong: asked again, nothing trusted.
    bare = [{"from_name": VERDICT, "to_name": "answer", "type": "choices", "value": {"choices": ["correct"]}}]
    assert decided(bare, 0, 2) == (None, "the task says some numbers are wrong but marks none of them")
    # A task of one number may be corrected in the task's own fields.
    single = choice("correct", "80元")
    assert decided(single, 0, 1) == ("corrected", None)


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


def fact_verdicts(plan: Any, picked: dict[str, dict[str, Any]]) -> dict[str, tuple[str, str]]:
    """Every fact's verdict (and corrected number): accept, except the three picked ones."""
    out = {f: ("accept", "") for f in plan.fact_ids}
    out[picked["fix"]["fact_id"]] = ("correct", picked["fix"]["new_raw"])
    out[picked["not"]["fact_id"]] = ("reject", "")
    return out


def fact_task_results(fact_tasks: list[tuple[str, ...]], verdicts: dict[str, tuple[str, str]]) -> list[Any]:
    """Each fact task's annotation result: its facts' verdicts, each in its own field."""
    return [
        fact_task_result(
            [verdicts[f][0] for f in task],
            numbers={i: verdicts[f][1] for i, f in enumerate(task) if verdicts[f][1]},
        )
        for task in fact_tasks
    ]


def fact_archive(
    batch_id: str, fact_tasks: list[tuple[str, ...]], results: list[Any], stamps: list[str]
) -> list:
    """The fact tasks of a Label Studio export (ids 1000+)."""
    return [
        {
            "id": 1000 + i,
            "data": {"kind": "fact", "fact_id": task[0], "fact_ids": list(task), "batch_id": batch_id},
            "annotations": [{"id": 5000 + i, "completed_by": 7, "result": result, "updated_at": stamp}],
        }
        for i, (task, result, stamp) in enumerate(zip(fact_tasks, results, stamps, strict=True))
    ]


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
    asked: set[str],
) -> dict[str, tuple[str, str | None]]:
    """Row -> (status, reviewer) as the verdicts say, computed plainly from the plan's needs: a number is
    decided by an accepted fact; one whose only facts are the corrected one is back with people; one whose
    only facts are the not-a-rule one rejects the row."""
    fix, refused = picked["fix"]["fact_id"], picked["not"]["fact_id"]
    out: dict[str, tuple[str, str | None]] = {}
    for row_id, row_needs in needs.items():
        states = []
        for need in row_needs:
            if any(f in asked and f not in (fix, refused) for f in need):
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
    assert len(plan.fact_tasks) < len(plan.fact_ids)  # one task per sentence, not per fact
    queries.create_batch(con, "rb-f", 999, None, plan.row_ids, plan.fact_tasks, plan.suggested)
    assert queries.task_count(con, "rb-f") == plan.tasks
    ids = {k: 1000 + i for i, task in enumerate(plan.fact_tasks) for k in task}
    ids.update({r: i + 1 for i, r in enumerate(plan.row_ids)})
    queries.set_task_ids(con, "rb-f", ids)
    keys = [*plan.row_ids, *plan.fact_ids]
    verdicts, rows = fact_verdicts(plan, picked), row_results(plan)
    stamp = "2026-01-01T10:00:00Z"
    tasks = [
        {
            "id": i + 1,
            "data": {"kind": "row", "row_id": k, "batch_id": "rb-f"},
            "annotations": [{"id": 100 + i, "completed_by": 7, "result": rows[k], "updated_at": stamp}],
        }
        for i, k in enumerate(plan.row_ids)
    ]
    tasks += fact_archive(
        "rb-f", plan.fact_tasks, fact_task_results(plan.fact_tasks, verdicts), [stamp] * len(plan.fact_tasks)
    )
    archive = {"users": {"7": "ann@example.org"}, "tasks": tasks}
    before = statuses(con)
    result = sync.apply_export(con, "rb-f", archive, None)
    assert result.status == "synced" and result.prediction_changed == (1 if plan.row_ids else 0)
    assert result.applied["fact_corrected"] == 1 and result.applied["fact_not_a_rule"] == 1
    expected = expected_statuses(needs, picked, rows, "ann@example.org", set(plan.fact_ids))
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

    # Where the time goes (the flow's artifact, `slm review status`): per batch fact tasks (sentences, facts),
    # row tasks, the rows they decide; and the share of all rows a person opened.
    report = economy_markdown(con)
    assert (
        f"| rb-f | synced | {len(plan.fact_tasks)} ({len(plan.fact_ids)} facts) | {len(plan.row_ids)} |"
        in report
    )
    assert f"**{plan.tasks}** tasks for **{total}** rows: **{plan.tasks / total:.0%}**" in report

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
    queries.create_batch(con, "rb-g", 998, None, [], plan.fact_tasks, {})
    queries.set_task_ids(con, "rb-g", {k: 1000 + i for i, task in enumerate(plan.fact_tasks) for k in task})
    verdicts = fact_verdicts(plan, picked)
    stamps = ["2026-01-01T10:00:00Z"] * len(plan.fact_tasks)

    def archive() -> dict[str, Any]:
        results = fact_task_results(plan.fact_tasks, verdicts)
        return {
            "users": {"7": "ann@example.org"},
            "tasks": fact_archive("rb-g", plan.fact_tasks, results, stamps),
        }

    sync.apply_export(con, "rb-g", archive(), None)
    ok, fix = picked["ok"]["fact_id"], picked["fix"]["fact_id"]
    refused, asked = picked["not"]["fact_id"], set(plan.fact_ids)
    only_ok = [  # rows resting on ok alone for one number, and on accepted facts for the others
        r
        for r, ns in needs.items()
        if any(n == (ok,) for n in ns)
        and all(any(f in asked and f not in (fix, refused) for f in n) for n in ns)
    ]
    assert only_ok and all(statuses(con)[r][0] == "approved" for r in only_ok)
    # The person changes their mind: the fact they had marked correct is not a rule; the corrected one was right.
    verdicts[ok], verdicts[fix] = ("reject", ""), ("accept", "")
    touched = [i for i, task in enumerate(plan.fact_tasks) if ok in task or fix in task]
    for i in touched:
        stamps[i] = "2026-01-02T10:00:00Z"
    again = sync.apply_export(con, "rb-g", archive(), None)
    # Every fact of a re-annotated task is applied again (its other facts keep their verdicts).
    names = {"accept": "fact_correct", "reject": "fact_not_a_rule", "correct": "fact_corrected"}
    assert again.applied == Counter(names[verdicts[f][0]] for i in touched for f in plan.fact_tasks[i])
    assert again.applied["fact_not_a_rule"] >= 1 and again.applied["fact_correct"] >= 1
    assert all(statuses(con)[r] == ("rejected", LEDGER + "ann@example.org") for r in only_ok)
    restored = con.execute("SELECT value FROM facts WHERE fact_id = ?", [fix]).fetchone()[0]
    assert restored == picked["fix"]["value"]  # the ingested value is back, the correction withdrawn
    only_fix = [r for r, ns in needs.items() if ns and all(n == (fix,) for n in ns)]
    assert all(statuses(con)[r] == ("approved", LEDGER + "ann@example.org") for r in only_fix)
