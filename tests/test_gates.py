"""Quality gates: numeric share, each conflict kind, golden-set leakage, Data Docs, dataset snapshots."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from expectations.runner import run_gate
from review.policy import apply_auto_policy
from runtime.config import Settings, load_settings
from tasks.answer.answer import CONTEXT_FORMAT, context_messages, fact_statement
from tasks.answer.fact_retrieve import FactIndex
from tasks.answer.prompts import EVIDENCE_LEAD
from tasks.answer.reading import in_everyday_words
from tasks.answer.retrieve import ChunkIndex
from tasks.distill.distill import distill, make_teacher
from tasks.ingest.documents import ingest_file
from tasks.train.dataset import CONTEXT_K, dataset_id_for, freeze_dataset, retrieved_evidence
from tests.conftest import SAMPLE_PDF
from tests.ledger_seed import fact_in, save_one_chunk
from warehouse import distill as distill_queries
from warehouse import gates as gate_queries

CHUNK = (
    "第七条 购买图书资料单笔金额在30000元以上的，须附合同和验收单。"
    "伙食补助费按每人每天100元包干使用；市内交通费按每人每天80元包干使用。"
)


def _seed_chunk(con) -> None:
    """One document, one chunk and its three facts, written the way ingest writes them."""
    facts = [
        fact_in(CHUNK, raw, value, unit, subject, fact_id=f"fact-{value}", chunk_id="chunk-1")
        for raw, value, unit, subject in (
            ("30000元", "30000", "元", "图书资料单笔金额"),
            ("100元", "100", "元/人·天", "伙食补助费"),
            ("80元", "80", "元/人·天", "市内交通费"),
        )
    ]
    save_one_chunk(con, CHUNK, facts, doc_id="doc-1", chunk_id="chunk-1", name="rules.txt", heading="第七条")


def _add_rows(con, rows: list[dict], status: str = "approved", reviewer: str = "annotator-1") -> list[str]:
    """Store rows as a teacher call would; each dict needs question, answer and numbers at least."""
    stored = []
    for row in rows:
        row_id = hashlib.sha256(f"{row['question']}|{row['answer']}".encode()).hexdigest()[:24]
        full = {
            "row_id": row_id,
            "chunk_id": "chunk-1",
            "doc_id": "doc-1",
            "evidence": row.get("evidence", CHUNK),
            "kind": "numeric" if row["numbers"] else "text",
            "unsure": False,
            "teacher_numbers": [],
            "is_numeric": bool(row["numbers"]),
            "evidence_found": True,
            "grounded": row.get("grounded", True),
            "fact_ids": row.get("fact_ids", []),
            "verify_notes": "",
            "status": row.get("status", status),
            "reviewer": row.get("reviewer", reviewer),
            **row,
        }
        call = {
            "cache_key": f"key-{row_id}",
            "chunk_id": "chunk-1",
            "teacher": "test",
            "model": "m",
            "prompt_version": "v",
            "status": "ok",
            "error": None,
            "raw_text": None,
            "calls": 0,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "cost_usd": 0.0,
            "run_id": "run",
        }
        distill_queries.save_teacher_call(con, call, [full])
        stored.append(row_id)
    return stored


def _text_rows(n: int) -> list[dict]:
    return [
        {
            "question": f"第{i}项报销需要哪些材料呢，请说明审批流程{i}？",
            "answer": f"须附合同和验收单{i}。",
            "numbers": [],
        }
        for i in range(n)
    ]


def _numeric_rows(n: int) -> list[dict]:
    return [
        {
            "question": f"伙食补助费每天补助多少钱（情形{i}）？",
            "answer": "伙食补助费按每人每天100元包干使用。",
            "numbers": ["100"],
            "fact_ids": ["fact-100"],
        }
        for i in range(n)
    ]


@pytest.fixture
def seeded(con):
    _seed_chunk(con)
    return con


@pytest.mark.parametrize(("numeric", "passes"), [(19, False), (20, True)])
def test_release_numeric_share_threshold(seeded, settings: Settings, numeric: int, passes: bool) -> None:
    _add_rows(seeded, _numeric_rows(numeric) + _text_rows(100 - numeric))
    report = run_gate(seeded, settings, "release")
    share = next(o for o in report.outcomes if o.expectation == "expect_numeric_share_at_least")
    assert share.observed == pytest.approx(numeric / 100)
    assert share.success is passes and report.success is passes
    if not passes:
        assert "numeric share" in report.message and "0.190" in report.message


def test_each_conflict_kind_is_caught_with_both_rows(seeded, settings: Settings) -> None:
    """Rows verified by the ledger alone (no person looked at them) stay in unresolved conflicts."""
    same_q = _add_rows(
        seeded,
        [
            {"question": "请问伙食补助费每人每天多少钱？", "answer": "每人每天100元。", "numbers": ["100"]},
            {"question": "伙食补助费每人每天多少钱", "answer": "每人每天80元。", "numbers": ["80"]},
        ],
    )
    same_fact = _add_rows(
        seeded,
        [
            {
                "question": "出差伙食补贴标准？",
                "answer": "伙食补助费每人每天100元。",
                "numbers": ["100"],
                "fact_ids": ["fact-100"],
            },
            {
                "question": "差旅伙食补助怎么算？",
                "answer": "伙食补助费每人每天120元。",
                "numbers": ["120"],
                "fact_ids": ["fact-100"],
            },
        ],
    )
    near = _add_rows(
        seeded,
        [
            {
                "question": "购买图书资料多少元以上须附合同和验收单？",
                "answer": "30000元以上。",
                "numbers": ["30000"],
            },
            {
                "question": "购买图书资料多少元以上须附合同与验收单？",
                "answer": "20000元以上。",
                "numbers": ["20000"],
            },
        ],
    )
    ledger_row = _add_rows(
        seeded,
        [
            {
                "question": "图书资料多少钱以上要附合同？",
                "answer": "图书资料5000元以上附合同。",
                "numbers": ["5000"],
                "evidence": "购买图书资料单笔金额在30000元以上的，须附合同和验收单。",
            },
        ],
    )
    seeded.execute("UPDATE qa_rows SET status = 'auto_verified', reviewer = 'auto:ledger'")
    report = run_gate(seeded, settings, "release")
    found = {(c["kind"], c["row_a"], c["row_b"]) for c in gate_queries.conflicts_for(seeded, 50)}
    assert ("same_question", *sorted(same_q)) in found
    assert ("same_fact", *sorted(same_fact)) in found
    assert ("near_duplicate", *sorted(near)) in found
    assert ("contradicts_ledger", ledger_row[0], None) in found
    contradiction = next(
        c for c in gate_queries.conflicts_for(seeded, 50) if c["kind"] == "contradicts_ledger"
    )
    assert "30000元" in contradiction["reason"] and contradiction["numbers_a"] == ["5000"]
    assert not report.success
    offending = {r["row_id"] for r in report.offending}
    assert set(same_q + same_fact + near + ledger_row) <= offending
    assert any(r["conflict_partner"] for r in report.offending)


def test_numbered_categories_are_not_near_duplicates(seeded, settings: Settings) -> None:
    _add_rows(
        seeded,
        [
            {"question": "一类人员住宿费的标准是多少？", "answer": "每人每天800元。", "numbers": ["800"]},
            {"question": "三类人员住宿费的标准是多少？", "answer": "每人每天400元。", "numbers": ["400"]},
        ],
    )
    assert "near_duplicate" not in gate_queries.detect_conflicts(seeded, 0.8)


def test_people_resolve_conflicts_the_auto_policy_does_not(seeded, settings: Settings) -> None:
    rows = _add_rows(
        seeded,
        [
            {
                "question": "伙食补助费每人每天多少钱？",
                "answer": "每人每天100元。",
                "numbers": ["100"],
                "reviewer": "auto:ledger",
            },
            {
                "question": "伙食补助费每人每天多少钱？",
                "answer": "每人每天80元。",
                "numbers": ["80"],
                "reviewer": "auto:ledger",
            },
            *_numeric_rows(5),
        ],
    )
    assert not run_gate(seeded, settings, "release").success
    seeded.execute("UPDATE qa_rows SET reviewer = 'annotator-2' WHERE row_id IN (?, ?)", rows[:2])
    assert run_gate(seeded, settings, "release").success


def test_golden_question_in_training_rows_fails_leakage(seeded, settings: Settings) -> None:
    _add_rows(seeded, _numeric_rows(10) + _text_rows(10))
    assert run_gate(seeded, settings, "release").success
    seeded.execute(
        "INSERT INTO golden_items (item_id, question, type, source) VALUES ('g1', ?, 'numeric', 'file:golden.jsonl')",
        ["伙食补助费每天补助多少钱（情形3）"],
    )
    report = run_gate(seeded, settings, "release")
    leakage = next(o for o in report.outcomes if o.expectation == "expect_no_golden_overlap")
    assert not leakage.success and leakage.unexpected_count >= 1
    seeded.execute("DELETE FROM golden_items")
    seeded.execute(  # a near duplicate, not the same text, is still leakage
        "INSERT INTO golden_items (item_id, question, type, source) VALUES ('g2', ?, 'numeric', 'file:golden.jsonl')",
        ["伙食补助费每天补助多少钱（情形3）呀，谢谢"],
    )
    assert not run_gate(seeded, settings, "release").success


def test_data_docs_show_the_failed_expectation(seeded, settings: Settings) -> None:
    _add_rows(seeded, _text_rows(10))
    report = run_gate(seeded, settings, "release")
    assert report.data_docs_index and Path(report.data_docs_index).exists()
    pages = [
        p.read_text(encoding="utf-8", errors="ignore")
        for p in Path(report.data_docs_index).parent.rglob("*.html")
    ]
    assert any("expect_numeric_share_at_least" in page or "numeric share" in page for page in pages)
    stored = seeded.execute(
        "SELECT success, report FROM gate_runs WHERE gate_run_id = ?", [report.gate_run_id]
    )
    success, body = stored.fetchone()
    assert success is False and json.loads(body)["message"].startswith("gate release failed")


def test_dataset_id_is_a_content_hash(seeded, settings: Settings) -> None:
    _add_rows(seeded, _numeric_rows(10) + _text_rows(10))
    report = run_gate(seeded, settings, "release")
    first = freeze_dataset(seeded, settings, report.gate_run_id)
    again = freeze_dataset(seeded, settings, report.gate_run_id)
    assert first.created and not again.created and first.dataset_id == again.dataset_id
    lines = (first.path / "train.jsonl").read_text(encoding="utf-8").splitlines()
    originals = [
        line for line in lines if not json.loads(line)["id"].endswith(":ctx")
    ]  # context copies aside
    assert len(originals) == first.train_count and json.loads(lines[0])["messages"][-1]["role"] == "assistant"
    records = [
        json.loads(line)
        for name in ("train.jsonl", "valid.jsonl")
        for line in (first.path / name).read_text(encoding="utf-8").splitlines()
    ]
    prompt_format = json.loads((first.path / "manifest.json").read_text(encoding="utf-8"))["prompt_format"]
    assert dataset_id_for(records, prompt_format) == first.dataset_id
    records[0]["messages"][-1]["content"] += "（修订）"
    assert dataset_id_for(records, prompt_format) != first.dataset_id


def test_a_share_of_rows_is_also_trained_with_the_chunks_answering_retrieves(con, settings: Settings) -> None:
    ingest_file(con, SAMPLE_PDF, settings)
    distill(con, settings, make_teacher(settings))
    apply_auto_policy(con)
    report = run_gate(con, settings, "release")
    dataset = freeze_dataset(con, settings, report.gate_run_id)
    records = {
        json.loads(line)["id"]: (name, json.loads(line))
        for name in ("train.jsonl", "valid.jsonl")
        for line in (dataset.path / name).read_text(encoding="utf-8").splitlines()
    }
    copies = {rid: rec for rid, (_, rec) in records.items() if rid.endswith(":ctx")}
    share = len(copies) / dataset.row_count
    assert abs(share - settings.context_share) < 0.1, share
    index = ChunkIndex.build(con)
    own_chunk = dict(con.execute("SELECT row_id, chunk_id FROM qa_rows").fetchall())
    headings = {chunk_id: heading for chunk_id, _, heading, _ in index.rows}
    own_fact_ids = dict(con.execute("SELECT row_id, fact_ids FROM qa_rows").fetchall())
    facts = FactIndex.build(con)
    fact_of = {fact.fact_id: fact for fact, _ in facts.facts}
    as_answering_shows = rephrased = led = 0
    for rid, record in copies.items():
        split, original = records[rid.removesuffix(":ctx")]
        assert records[rid][0] == split  # never the copy in train and its row in valid
        assert record["messages"][-1] == original["messages"][-1]  # the same answer
        question = original["messages"][1]["content"]
        prompt = record["messages"][1]["content"]
        # The copy asks the question as it is, or in everyday words where the lexicon has them (住宿费 -> 住酒店).
        ways = {question} | {in_everyday_words(question, pick / 20) for pick in range(20)}
        [asked] = [way for way in ways if prompt.endswith(f"问题：{way}")]
        rephrased += asked != question
        assert 2 <= prompt.count("【") <= CONTEXT_K  # the retrieved chunks, not one distractor
        # The best-fitting facts' statements lead, its own fact's among them.
        row_id = rid.removesuffix(":ctx")
        lead, _, rules = prompt.partition("规定原文：\n【")
        own_facts = [fact_of[i] for i in own_fact_ids[row_id] if i in fact_of]
        if own_facts:
            assert lead.startswith(EVIDENCE_LEAD)
            assert f"“{fact_statement(own_facts[0])}”" in lead
            led += 1
        # Its own chunk is always among the rules; where retrieval found it and its fact fits best, the prompt
        # is exactly answering's.
        own = own_chunk[row_id]
        assert f"{headings[own]}\n" in rules
        hits = index.search(asked, CONTEXT_K, expand=True)
        best = retrieved_evidence(facts, asked, None, row_id, shown=hits)
        if own in [h.chunk_id for h in hits] and all(fact_statement(f) in best for f in own_facts[:1]):
            assert record["messages"][:2] == context_messages(asked, hits, evidence=best)
            as_answering_shows += 1
    assert led >= 0.5 * len(copies), (led, len(copies))  # the numeric rows: every one led by its own fact
    assert as_answering_shows >= 0.5 * len(copies), (as_answering_shows, len(copies))
    assert rephrased >= 0.3 * len(copies), rephrased
    manifest = json.loads((dataset.path / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["prompt_format"] == f"chat-v1+{CONTEXT_FORMAT}" and manifest["records"] == len(records)

    closed_book = load_settings(settings.workspace, context_share=0.0)
    again = freeze_dataset(con, closed_book, report.gate_run_id)
    assert again.dataset_id != dataset.dataset_id  # the form of the rows is part of the id
    assert ":ctx" not in (again.path / "train.jsonl").read_text(encoding="utf-8")


def test_sample_document_passes_both_gates_under_the_auto_policy(con, settings: Settings) -> None:
    ingest_file(con, SAMPLE_PDF, settings)
    distill(con, settings, make_teacher(settings))
    assert run_gate(con, settings, "pre_review").success
    assert not run_gate(con, settings, "release").success  # numeric rows still wait for people
    counts = apply_auto_policy(con)
    assert counts["approved"] > 0
    report = run_gate(con, settings, "release")
    assert report.success, report.message
    dataset = freeze_dataset(con, settings, report.gate_run_id)
    assert dataset.numeric_share >= 0.2 and dataset.valid_count > 0
    # The golden set was held out, stratified, and none of its questions is in the dataset.
    golden = con.execute("SELECT question, type, doc FROM golden_items").fetchall()
    assert 5 <= len(golden) <= settings.golden_size
    assert {t for _, t, _ in golden} >= {"numeric", "text"}
    trained = set()
    for name in ("train.jsonl", "valid.jsonl"):
        for line in (dataset.path / name).read_text(encoding="utf-8").splitlines():
            trained.add(json.loads(line)["messages"][1]["content"])
    assert trained and not trained & {q for q, _, _ in golden}
    assert run_gate(con, settings, "release").success  # still no leakage once the golden set exists


def test_gate_works_with_a_relative_workspace(tmp_path: Path, monkeypatch) -> None:
    """`slm --workspace workspace/demo ...` gives a relative path; Data Docs still land in it."""
    from runtime.config import load_settings
    from warehouse.db import open_warehouse

    monkeypatch.chdir(tmp_path)
    relative = load_settings("workspace/demo")
    with open_warehouse(relative.warehouse_path) as con:
        _seed_chunk(con)
        _add_rows(con, _numeric_rows(5) + _text_rows(5))
        report = run_gate(con, relative, "release")
    assert report.success and Path(report.data_docs_index).is_relative_to(tmp_path / "workspace" / "demo")
