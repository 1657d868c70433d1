"""The two golden splits on the sample distilled by the real extractive teacher (so sibling phrasings are the
teacher's own templates): *reading* facts never reach training in any phrasing; *recall* facts do, but never
in a reserved phrasing; paraphrases and small edits of golden questions stay out; holding out is done once."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from review.policy import apply_auto_policy
from runtime.config import Settings
from tasks.distill.distill import distill, make_teacher
from tasks.evaluate.golden import add_file, golden_items, hold_out
from tasks.ingest.documents import ingest_file
from tests.conftest import SAMPLE_MD
from warehouse.db import connect
from warehouse.gates import normalised, trainable_rows


@pytest.fixture(scope="module")
def distilled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample ingested, distilled (two phrasings per fact) and reviewed by the auto policy, once."""
    from runtime.config import load_settings

    cfg = load_settings(tmp_path_factory.mktemp("ws") / "ws")
    con = connect(cfg.warehouse_path)
    try:
        ingest_file(con, SAMPLE_MD, cfg)
        distill(con, cfg, make_teacher(cfg))
        apply_auto_policy(con, cfg.similarity_threshold)
    finally:
        con.close()
    return cfg.warehouse_path


@pytest.fixture
def held(distilled: Path, settings: Settings) -> Iterator[duckdb.DuckDBPyConnection]:
    """A copy of the distilled warehouse with the golden set held out."""
    settings.warehouse_path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(distilled, settings.warehouse_path)
    con = connect(settings.warehouse_path)
    try:
        assert hold_out(con, settings.golden_size, golden_threshold=settings.similarity_threshold) > 0
        yield con
    finally:
        con.close()


def _rows(con: duckdb.DuckDBPyConnection) -> list[dict]:
    cursor = con.execute(
        "SELECT r.row_id, r.question, r.status, r.fact_ids, list(f.subject) FILTER (WHERE f.subject IS NOT NULL)"
        " AS subjects FROM qa_rows r LEFT JOIN (SELECT row_id, unnest(fact_ids) AS fact_id FROM qa_rows) c"
        " USING (row_id) LEFT JOIN facts f USING (fact_id) GROUP BY ALL"
    )
    names = [c[0] for c in cursor.description]
    return [dict(zip(names, r, strict=True)) for r in cursor.fetchall()]


def _key(row: dict) -> str:
    """The phrasing key, computed here independently of warehouse/golden.py: the question with the longest
    subject of its facts that it names replaced by {s}."""
    named = sorted(
        (s.strip() for s in row["subjects"] or [] if len(s.strip()) >= 2 and s.strip() in row["question"]),
        key=len,
    )
    return row["question"].replace(named[-1], "{s}") if named else row["question"]


def _items(con: duckdb.DuckDBPyConnection, split: str) -> list[dict]:
    cursor = con.execute(
        "SELECT item_id, question, row_id, fact_ids, phrasing, type FROM golden_items WHERE split = ?",
        [split],
    )
    names = [c[0] for c in cursor.description]
    return [dict(zip(names, r, strict=True)) for r in cursor.fetchall()]


def _trainable(con: duckdb.DuckDBPyConnection, settings: Settings, threshold: float | None = None) -> dict:
    return {r["row_id"]: r for r in trainable_rows(con, threshold or settings.similarity_threshold)}


def test_both_splits_are_about_half_of_the_set(held, settings: Settings) -> None:
    recall, reading = _items(held, "recall"), _items(held, "reading")
    assert len(recall) + len(reading) <= settings.golden_size
    assert len(recall) >= 0.3 * settings.golden_size and len(reading) >= 0.3 * settings.golden_size
    assert {i["type"] for i in reading} >= {"numeric", "text"}
    assert {i["type"] for i in recall} == {"numeric"}
    splits = {i.split for i in golden_items(held)}
    assert splits == {"recall", "reading"}
    # Most reviewed rows stay trainable.
    reviewed = held.execute(
        "SELECT count(*) FROM qa_rows WHERE status IN ('approved', 'corrected')"
    ).fetchone()
    assert len(_trainable(held, settings)) > 0.5 * reviewed[0]


def test_no_trainable_row_cites_a_reading_fact(held, settings: Settings) -> None:
    reading = _items(held, "reading")
    facts = {f for i in reading for f in i["fact_ids"]}
    assert facts, "numeric reading items hold out their facts"
    citing = [r for r in _rows(held) if set(r["fact_ids"]) & facts and r["status"] != "rejected"]
    siblings = [r for r in citing if r["row_id"] not in {i["row_id"] for i in reading}]
    assert siblings, "the teacher asked reading facts in other phrasings too"
    trainable = _trainable(held, settings)
    assert not [r for r in trainable.values() if set(r["fact_ids"]) & facts]
    assert not [r for r in citing if r["row_id"] in trainable]


def test_recall_facts_stay_trained_but_never_in_a_reserved_phrasing(held, settings: Settings) -> None:
    recall = _items(held, "recall")
    rows = {r["row_id"]: r for r in _rows(held)}
    reserved = {i["phrasing"] for i in recall}
    # The stored phrasing is the teacher's template, and the same key this test computes on its own.
    for item in recall:
        assert "{s}" in item["phrasing"] and item["phrasing"] == _key(rows[item["row_id"]])
    trainable = _trainable(held, settings)
    # Each item's fact keeps training rows of its own (asking about it), not only rows about another rule that
    # mention it as a condition or bound: a fact never taught measures nothing of recall.
    taught = {r["fact_ids"][0] for r in trainable.values() if r["fact_ids"]}
    for item in recall:
        assert item["fact_ids"][0] in taught, item["question"]
    assert not [rows[r]["question"] for r in trainable if _key(rows[r]) in reserved]
    # A reserved template kept out rows about other facts too, not only the items' own rows.
    item_rows = {i["row_id"] for i in recall}
    others = [r for r in rows.values() if _key(r) in reserved and r["row_id"] not in item_rows]
    assert others and not any(r["row_id"] in trainable for r in others)


def test_sibling_phrasings_and_small_edits_of_golden_questions_are_not_trained(
    held, settings: Settings
) -> None:
    rows = {r["row_id"]: r for r in _rows(held)}
    trainable = _trainable(held, settings)
    # Same fact, another template of the teacher: a reading item's sibling is out by its fact.
    reading = [i for i in _items(held, "reading") if i["fact_ids"]]
    sibling = next(
        r
        for i in reading
        for r in rows.values()
        if set(r["fact_ids"]) == set(i["fact_ids"]) and r["question"] != i["question"]
    )
    assert sibling["row_id"] not in trainable
    # The same question as a recall item with a small edit: no fact or phrasing path applies to it (its
    # phrasing key is new, its fact is trained), so only the near-duplicate (bigram similarity) path keeps it
    # out; with that path off (threshold 1.0) it would be trained.
    item = max(_items(held, "recall"), key=lambda i: len(i["question"]))
    edited = "学校" + item["question"]
    held.execute(
        "INSERT INTO qa_rows SELECT * REPLACE ('edited-row' AS row_id, ? AS question) FROM qa_rows"
        " WHERE row_id = ?",
        [edited, item["row_id"]],
    )
    held.execute("UPDATE qa_rows SET status = 'approved' WHERE row_id = 'edited-row'")
    same = held.execute(
        f"SELECT {normalised('?')} = {normalised('?')}", [edited, item["question"]]
    ).fetchone()
    assert same == (False,)
    assert "edited-row" not in _trainable(held, settings)
    assert "edited-row" in _trainable(held, settings, threshold=1.0)


def test_holding_out_twice_adds_nothing(held, settings: Settings, tmp_path: Path) -> None:
    before = held.execute("SELECT item_id, split FROM golden_items ORDER BY item_id").fetchall()
    trainable = set(_trainable(held, settings))
    assert hold_out(held, settings.golden_size, golden_threshold=settings.similarity_threshold) == 0
    assert hold_out(held, 2 * settings.golden_size, seed="other") == 0
    assert held.execute("SELECT item_id, split FROM golden_items ORDER BY item_id").fetchall() == before
    assert set(_trainable(held, settings)) == trainable
    # Items from a question file carry no split.
    questions = tmp_path / "mine.jsonl"
    questions.write_text(
        json.dumps({"question": "差旅费怎么报销？", "answer": "按规定报销。"}, ensure_ascii=False)
    )
    assert add_file(held, questions) == 1
    assert {i.split for i in golden_items(held) if i.source == "file:mine.jsonl"} == {""}


def test_a_recall_fact_keeps_a_training_row_that_asks_about_it() -> None:
    """Fact A is asked in two phrasings; fact B's row mentions A as its condition. Once one of A's phrasings
    is a recall item, the other may not be: B's row would be the only one left citing A, and it never asks
    for A's number, so A would not be taught."""
    from tasks.evaluate.golden import _plan, _try_add

    rows = [
        {"row_id": "a1", "question": "A的标准是多少？", "fact_ids": ["A"], "phrasing": "{s}的标准是多少？"},
        {"row_id": "a2", "question": "A的上限是多少？", "fact_ids": ["A"], "phrasing": "{s}的上限是多少？"},
        {
            "row_id": "b1",
            "question": "B的标准是多少？",
            "fact_ids": ["B", "A"],
            "phrasing": "{s}的标准是多少？x",
        },
    ]
    plan = _plan(rows, budget=len(rows))
    assert _try_add(plan, rows[0], "recall")
    assert not _try_add(plan, rows[1], "recall")
    assert set(plan.chosen) == {"a1"}
