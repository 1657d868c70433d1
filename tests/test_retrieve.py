"""Retrieval over the warehouse chunks: BM25 over character bigrams finds the chunk of a ledger fact from a
question about its subject, and the index is built once per warehouse content."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from runtime.config import Settings
from tasks.answer.retrieve import ChunkIndex, clear_cache, tokens
from tasks.ingest.documents import ingest_file
from tests.conftest import SAMPLE_MD
from warehouse.ledger import list_facts


@pytest.fixture
def sample(con: duckdb.DuckDBPyConnection, settings: Settings) -> duckdb.DuckDBPyConnection:
    clear_cache()
    assert ingest_file(con, SAMPLE_MD, settings).status == "added"
    return con


def test_tokens_are_bigrams_plus_words_and_numbers() -> None:
    assert tokens("伙食补助费") == ["伙食", "食补", "补助", "助费"]
    assert tokens("每天１００元 GB") == ["每天", "元", "100", "gb"]  # full-width digits folded
    assert tokens("第 3 条") == ["第", "条", "3"]


def test_fact_subjects_find_their_chunk_in_top_3(sample: duckdb.DuckDBPyConnection) -> None:
    index = ChunkIndex.build(sample)
    facts = list_facts(sample)
    assert len(facts) > 50
    found = 0
    for fact in facts:
        hits = index.search(f"{fact['subject']}的标准是多少？", k=3)
        found += fact["chunk_id"] in {h.chunk_id for h in hits}
    assert found / len(facts) >= 0.9, f"recall@3 {found}/{len(facts)}"


def test_hits_carry_text_and_order(sample: duckdb.DuckDBPyConnection) -> None:
    hits = ChunkIndex.build(sample).search("出差伙食补助费每人每天多少钱？", k=3)
    assert len(hits) == 3
    assert "第十八条" in hits[0].heading_path and "100元" in hits[0].text
    assert hits[0].doc == "sample_rules.md"
    assert hits[0].score >= hits[1].score >= hits[2].score > 0
    assert ChunkIndex.build(sample).search("hello world", k=3) == []  # shares no token with any chunk
    assert ChunkIndex.build(sample).search("伙食补助费", k=0) == []


def test_index_is_cached_per_warehouse_content(
    sample: duckdb.DuckDBPyConnection, settings: Settings, tmp_path: Path
) -> None:
    first = ChunkIndex.build(sample)
    assert ChunkIndex.build(sample) is first  # same chunks: no rebuild
    extra = tmp_path / "extra.md"
    extra.write_text("# 附加规定\n\n第一条 洗衣费每人每天不超过20元。\n", encoding="utf-8")
    assert ingest_file(sample, extra, settings).status == "added"
    second = ChunkIndex.build(sample)
    assert second is not first and len(second) > len(first)
    assert second.search("洗衣费", k=1)[0].doc == "extra.md"
    only = ChunkIndex.build(sample, doc="extra.md")
    assert len(only) == len(second) - len(first) and only.key != second.key


def test_empty_warehouse(con: duckdb.DuckDBPyConnection) -> None:
    clear_cache()
    index = ChunkIndex.build(con)
    assert len(index) == 0 and index.search("伙食补助费", 3) == []
