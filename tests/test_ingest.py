"""Ingestion of good input: encodings, normalisation, chunking, idempotence, offsets."""

from __future__ import annotations

import itertools
from pathlib import Path

import pymupdf
import pytest

from runtime.config import Settings
from tasks.ingest.chunk import chunk_document
from tasks.ingest.documents import ingest_file
from tasks.ingest.extract import decode_text
from tasks.ingest.normalize import join_pages
from tests.conftest import SAMPLE_MD, SAMPLE_PDF
from warehouse import ledger

RULES_TEXT = (
    "明湖大学差旅费管理办法\n"
    "第一章 总则\n"
    "第一条 为规范差旅费管理，制定本办法。\n"
    "第二章 开支标准\n"
    "第二条 出差人员伙食补助费按每人每天100元包干使用。\n"
    "第三条 市内交通费按每人每天80元包干使用。\n"
)
RULES_TEXT_TRADITIONAL = (
    "明湖大學差旅費管理辦法\n"
    "第一章 總則\n"
    "第一條 為規範差旅費管理，制定本辦法。\n"
    "第二章 開支標準\n"
    "第二條 出差人員伙食補助費按每人每天100元包乾使用。\n"
    "第三條 市內交通費按每人每天80元包乾使用。\n"
)


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "gb18030", "gbk", "big5"])
def test_text_encodings_are_detected_by_content(
    tmp_path: Path, con, settings: Settings, encoding: str
) -> None:
    text = RULES_TEXT if encoding != "big5" else RULES_TEXT_TRADITIONAL
    path = tmp_path / "rules.txt"
    path.write_bytes(text.encode(encoding))
    result = ingest_file(con, path, settings)
    assert result.status == "added", result.message
    facts = ledger.list_facts(con)
    assert [(f["value"], f["unit"]) for f in facts] == [("100", "元/人·天"), ("80", "元/人·天")]
    stored = con.execute("SELECT text, encoding FROM documents").fetchone()
    assert stored is not None and stored[0].splitlines()[-1] == text.splitlines()[-1]
    assert len(ledger.list_documents(con)) == 1
    assert con.execute("SELECT count(*) FROM chunks").fetchone() == (4,)


def test_gbk_decodes_to_the_same_text() -> None:
    text, encoding = decode_text(RULES_TEXT.encode("gbk"))
    assert text == RULES_TEXT
    assert encoding.replace("_", "").lower() in {"gb18030", "gbk", "gb2312"}


def test_same_file_twice_adds_nothing(tmp_path: Path, con, settings: Settings) -> None:
    path = tmp_path / "rules.txt"
    path.write_text(RULES_TEXT, encoding="utf-8")
    first = ingest_file(con, path, settings)
    counts = ledger.table_counts(con)
    copy = tmp_path / "copy-of-rules.txt"
    copy.write_text(RULES_TEXT, encoding="utf-8")
    second = ingest_file(con, copy, settings)
    assert first.status == "added" and second.status == "unchanged"
    assert "already ingested" in second.message
    assert ledger.table_counts(con) == counts


def test_pdf_footers_wraps_and_spaces_are_normalised() -> None:
    pages = [
        "第一条 出差人员的伙食补助费按每人每天 100 元\n包干使用，不得\n另行报销。\n- 1 -\n",
        "２\n第二条 住宿费单据金额 1,200 元以上的，须附明细。\n第 2 页\n",
    ]
    text, spans = join_pages(pages, is_pdf=True)
    assert text == (
        "第一条 出差人员的伙食补助费按每人每天100元包干使用，不得另行报销。\n"
        "第二条 住宿费单据金额1,200元以上的，须附明细。"
    )
    assert [s.page_no for s in spans] == [1, 2]
    assert text[spans[1].start_char :].startswith("第二条")


def test_a_paragraph_continues_across_pages() -> None:
    text, _ = join_pages(["第五条 会议费综合定额标准为每人每天\n- 3 -", "550元。\n"], is_pdf=True)
    assert text == "第五条 会议费综合定额标准为每人每天550元。"


def test_chunks_follow_chapters_and_articles_and_keep_offsets() -> None:
    text, pages = join_pages([RULES_TEXT], is_pdf=False)
    chunks = chunk_document("doc", text, pages, size=600, overlap=40)
    assert [c.heading_path for c in chunks] == [
        "",
        "第一章 总则 > 第一条",
        "第二章 开支标准 > 第二条",
        "第二章 开支标准 > 第三条",
    ]
    for chunk in chunks:
        assert text[chunk.start_char : chunk.end_char] == chunk.text
    assert chunks[2].text.startswith("第二章 开支标准\n第二条")


def test_long_articles_split_at_sentence_ends_with_overlap() -> None:
    sentences = [f"第{i}项支出的报销须附发票和审批单，金额以发票为准；" for i in range(40)]
    text = "第一条 " + "".join(sentences)
    chunks = chunk_document("doc", text, [], size=200, overlap=60)
    assert len(chunks) > 3
    assert all(len(c.text) <= 200 for c in chunks)
    assert all(c.heading_path == "第一条" for c in chunks)
    for previous, current in itertools.pairwise(chunks):
        assert previous.text.endswith("；")
        assert current.start_char < previous.end_char  # a little overlap
        assert previous.end_char - current.start_char <= 60


def test_sample_pdf_and_markdown_give_the_same_ledger(tmp_path: Path, con, settings: Settings) -> None:
    assert ingest_file(con, SAMPLE_PDF, settings).status == "added"
    assert ingest_file(con, SAMPLE_MD, settings).status == "added"
    pdf = ledger.list_facts(con, SAMPLE_PDF.name)
    md = ledger.list_facts(con, SAMPLE_MD.name)
    assert len(pdf) >= 40
    assert [(f["value"], f["unit"]) for f in pdf] == [(f["value"], f["unit"]) for f in md]


def test_fact_spans_point_at_the_raw_text(con, settings: Settings) -> None:
    ingest_file(con, SAMPLE_PDF, settings)
    rows = con.execute(
        "SELECT c.text, f.span_start, f.span_end, f.raw FROM facts f JOIN chunks c USING (chunk_id)"
    ).fetchall()
    assert rows
    for chunk_text, start, end, raw in rows:
        assert chunk_text[start:end] == raw


def test_sample_pdf_page_footers_are_gone(con, settings: Settings) -> None:
    doc = pymupdf.open(SAMPLE_PDF)
    assert any("- 1 -" in page.get_text() for page in doc)
    ingest_file(con, SAMPLE_PDF, settings)
    row = con.execute("SELECT text FROM documents").fetchone()
    assert row is not None and "- 1 -" not in row[0] and "- 2 -" not in row[0]
