"""The ledger on real documents nobody here wrote (../shared/corpus).

The expected lists in tests/data/corpus_expected were made by hand, reading the texts, not from the parser.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from runtime.config import Settings
from tasks.ingest.documents import ingest_file
from tasks.ingest.normalize import fold
from tests.conftest import EXPECTED, corpus_path
from warehouse import ledger

TEXTS = ["univ_sdvcst_reimbursement", "univ_sdvcst_research_funds", "univ_sdvcst_travel"]


def _facts_of(con, settings: Settings, path: Path) -> list[dict]:
    result = ingest_file(con, path, settings)
    assert result.status == "added", result.message
    return ledger.list_facts(con, path.name)


def _has(facts: list[dict], value: str, unit: str, word: str, value_max: str | None = None) -> bool:
    return any(
        Decimal(f["value"]) == Decimal(value)
        and f["unit"] == unit
        and (value_max is None or (f["value_max"] and Decimal(f["value_max"]) == Decimal(value_max)))
        and (word in f["subject"] or word in f["context"])
        for f in facts
    )


def test_finance_rules_pdf_ledger_holds_the_key_rules(con, settings: Settings) -> None:
    facts = _facts_of(con, settings, corpus_path("pdfs", "07_sdvcst_finance_management_rules.pdf"))
    assert len(facts) > 200
    expected = [
        ("100", "元/人·天", "伙食补助", None),
        ("80", "元/人·天", "市内交通", None),
        ("1000", "元", "审批", None),
        ("10000", "元", "审批", None),
        ("15", "天", "冲", None),  # 借款/预付款 15 日内冲账
        ("10000", "元/人·月", "劳务费", None),
        ("70", "元/人·天", "伙食", None),
        ("110", "元/人·天", "伙食", None),
        ("1500", "元/人·天", "咨询费", "2400"),
        ("20", "%", "间接费用", None),
        ("15", "%", "间接费用", None),
    ]
    missing = [e for e in expected if not _has(facts, *e)]
    assert not missing, f"missing from the ledger: {missing}"


def _load(name: str) -> list[dict]:
    path = EXPECTED / name
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.mark.parametrize("stem", TEXTS)
def test_ledger_recall_on_real_texts(con, settings: Settings, stem: str) -> None:
    facts = _facts_of(con, settings, corpus_path("text", f"{stem}.txt"))
    expected = _load(f"{stem}.jsonl")
    missed = []
    unit_mismatch = []
    for item in expected:
        anchor = fold(item["anchor"])
        found = [
            f
            for f in facts
            if anchor in f["context"]
            and (
                Decimal(f["value"]) == Decimal(item["value"])
                or (
                    f["value_max"]
                    and Decimal(f["value_max"]) == Decimal(item.get("value_max") or item["value"])
                )
            )
        ]
        if not found:
            missed.append((item["line"], item["raw"], item["anchor"]))
        elif not any(f["unit"] == item["unit"] for f in found):
            unit_mismatch.append((item["line"], item["raw"], item["unit"], [f["unit"] for f in found]))
    recall = 1 - len(missed) / len(expected)
    assert recall >= 0.95, f"recall {recall:.1%} ({len(missed)} of {len(expected)} missed): {missed}"
    assert len(unit_mismatch) <= 0.1 * len(expected), f"units disagree: {unit_mismatch}"


@pytest.mark.parametrize("stem", TEXTS)
def test_no_document_numbers_articles_or_dates_in_the_ledger(con, settings: Settings, stem: str) -> None:
    path = corpus_path("text", f"{stem}.txt")
    facts = _facts_of(con, settings, path)
    row = con.execute("SELECT text FROM documents WHERE name = ?", [path.name]).fetchone()
    assert row is not None
    text = row[0]
    chunk_starts = dict(con.execute("SELECT chunk_id, start_char FROM chunks").fetchall())
    fact_spans = [
        (chunk_starts[f["chunk_id"]] + f["span_start"], chunk_starts[f["chunk_id"]] + f["span_end"], f)
        for f in facts
    ]
    non_rules = [
        n
        for n in _load("non_rule_numbers.jsonl")
        if n["file"] == stem and n["kind"] in {"doc_number", "article", "date"}
    ]
    assert non_rules
    offenders = []
    for item in non_rules:
        raw = fold(item["raw"])
        start = text.find(raw)
        while start != -1:
            end = start + len(raw)
            offenders += [(item["raw"], f["raw"]) for s, e, f in fact_spans if s < end and start < e]
            start = text.find(raw, end)
    assert not offenders, f"non-rule numbers in the ledger: {offenders}"
