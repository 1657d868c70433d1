"""Scanned PDFs through offline OCR (issue #19 part 3): pages of the project's own sample rules rendered to
images and saved as image-only PDFs, read back by RapidOCR and compared with the text route's ledger.

OCR is slow on two shared cores (10-40 s a page), so each document here holds one or two pages.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import duckdb
import pymupdf
import pytest

from runtime.config import Settings, load_settings
from tasks.distill.distill import distill, make_teacher
from tasks.ingest.documents import ingest_file
from tasks.ingest.ocr import OcrBox, line_text, reading_lines
from tests.conftest import ROOT, SAMPLE_PDF
from warehouse import ledger
from warehouse.db import connect

pytest.importorskip("rapidocr_onnxruntime")  # the ocr extra; required under CI (tests/conftest.py)

# Pages of examples/sample_rules.pdf (0-based) with many facts: 20 on page 4, 19 on page 6.
RATE_PAGES = [3, 5]
# The floor for the OCR route's recall of the text route's (value, unit, subject) on RATE_PAGES: measured
# 1.000 there (36 of 36) and on the scanned rate table (146 of 146); over all 7 sample pages see bench/ingest.py.
# A few misread characters in a subject may cost a fact, so the floor stands below.
MIN_RECALL = 0.9


def _text_pdf(path: Path, pages: list[int]) -> Path:
    """The sample's ``pages`` as a born-digital PDF (its text layer)."""
    src = pymupdf.open(SAMPLE_PDF)
    out = pymupdf.open()
    for i in pages:
        out.insert_pdf(src, from_page=i, to_page=i)
    out.save(path)
    return path


def _scanned_pdf(path: Path, pages: list[tuple[int, int | None]]) -> Path:
    """An image-only PDF: each (page, dpi) of the sample rendered at dpi and inserted as a picture, as a
    scanner makes it; dpi None keeps that page's text layer instead (a mixed document)."""
    src = pymupdf.open(SAMPLE_PDF)
    out = pymupdf.open()
    for i, dpi in pages:
        if dpi is None:
            out.insert_pdf(src, from_page=i, to_page=i)
            continue
        page = out.new_page(width=src[i].rect.width, height=src[i].rect.height)
        page.insert_image(page.rect, pixmap=src[i].get_pixmap(dpi=dpi))
    out.save(path)
    return path


def _triples(facts: list[dict]) -> set[tuple[Decimal, str, str]]:
    return {(Decimal(f["value"]), f["unit"], f["subject"]) for f in facts}


@pytest.fixture(scope="module")
def workspace(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Settings, duckdb.DuckDBPyConnection]]:
    folder = tmp_path_factory.mktemp("ocr")
    settings = load_settings(folder / "ws", review_numeric_rows=False)
    con = connect(settings.warehouse_path)
    try:
        yield settings, con
    finally:
        con.close()


def test_boxes_become_lines_in_reading_order() -> None:
    # A heading and a table row, given out of order and slightly skewed, as the engine may return them.
    boxes = [
        OcrBox("500", 0.99, 400, 104, 440, 126),
        OcrBox("第十七条", 0.99, 10, 10, 90, 32),
        OcrBox("住宿费标准", 0.98, 120, 12, 220, 34),
        OcrBox("三类人员", 0.97, 10, 100, 90, 122),
        OcrBox("（元/人·天）", 0.95, 222, 11, 320, 33),
    ]
    lines = [line_text(line) for line in reading_lines(boxes)]
    # Boxes a character height apart are cells (a space); touching boxes are one phrase cut in two.
    assert lines == ["第十七条 住宿费标准（元/人·天）", "三类人员 500"]


def test_scanned_rules_give_the_text_routes_ledger(
    tmp_path: Path, workspace: tuple[Settings, duckdb.DuckDBPyConnection]
) -> None:
    settings, con = workspace
    text = ingest_file(con, _text_pdf(tmp_path / "rates.pdf", RATE_PAGES), settings)
    scan = ingest_file(
        con, _scanned_pdf(tmp_path / "rates-scan.pdf", [(i, 150) for i in RATE_PAGES]), settings
    )
    assert text.status == "added" and scan.status == "added", (text.message, scan.message)
    assert "pdf ocr, 2 pages (2 OCR, mean confidence" in scan.message
    assert f"{scan.facts} facts (ocr {scan.facts})" in scan.message
    pages = ledger.page_routes(con, scan.doc_id)
    assert [p["route"] for p in pages] == ["ocr", "ocr"]
    assert all(p["ocr_confidence"] > settings.ocr_min_confidence and not p["review_required"] for p in pages)
    assert [p["route"] for p in ledger.page_routes(con, text.doc_id)] == ["text", "text"]

    expected = _triples(ledger.list_facts(con, "rates.pdf"))
    read = _triples(ledger.list_facts(con, "rates-scan.pdf"))
    recall = len(expected & read) / len(expected)
    print(f"OCR recall of the text route's (value, unit, subject): {recall:.3f} of {len(expected)}")
    assert len(expected) >= 30
    assert recall >= MIN_RECALL, sorted(expected - read)
    assert not ledger.low_confidence_facts(con) & {
        f["fact_id"] for f in ledger.list_facts(con, "rates-scan.pdf")
    }


def test_a_mixed_pdf_reads_page_by_page(
    tmp_path: Path, workspace: tuple[Settings, duckdb.DuckDBPyConnection]
) -> None:
    settings, con = workspace
    mixed = ingest_file(con, _scanned_pdf(tmp_path / "mixed.pdf", [(1, None), (2, 150)]), settings)
    assert mixed.status == "added", mixed.message
    assert [p["route"] for p in ledger.page_routes(con, mixed.doc_id)] == ["text", "ocr"]
    assert "pdf text+ocr, 2 pages (1 OCR, mean confidence" in mixed.message
    # The facts of each page, by route, against the same pages read as text.
    text = ingest_file(con, _text_pdf(tmp_path / "pages-2-3.pdf", [1, 2]), settings)
    assert text.status == "added", text.message
    expected = _triples(ledger.list_facts(con, "pages-2-3.pdf"))
    read = _triples(ledger.list_facts(con, "mixed.pdf"))
    assert len(expected & read) / len(expected) >= MIN_RECALL, sorted(expected - read)
    assert f"{mixed.facts} facts (text " in mixed.message and ", ocr " in mixed.message


def test_facts_of_a_poorly_read_page_wait_for_a_person(
    tmp_path: Path, workspace: tuple[Settings, duckdb.DuckDBPyConnection]
) -> None:
    """A scan at 45 dpi reads with a mean confidence near 0.65: its facts are flagged, distillation does not
    auto-verify their rows even with review_numeric_rows off, and the auto policy leaves them for a person
    while it decides the other waiting rows."""
    settings, con = workspace
    assert ingest_file(con, _text_pdf(tmp_path / "page-2.pdf", [1]), settings).status == "added"
    poor = ingest_file(con, _scanned_pdf(tmp_path / "poor-scan.pdf", [(2, 45)]), settings)
    assert poor.status == "added", poor.message
    (page,) = ledger.page_routes(con, poor.doc_id)
    assert page["route"] == "ocr" and page["ocr_confidence"] < settings.ocr_min_confidence
    assert page["review_required"]
    assert "1 under the review threshold" in poor.message
    flagged = ledger.low_confidence_facts(con)
    poor_facts = {f["fact_id"] for f in ledger.list_facts(con, "poor-scan.pdf")}
    assert poor_facts and poor_facts <= flagged

    from review.policy import apply_auto_policy

    distill(con, settings, make_teacher(settings, "extractive"))
    rows = con.execute("SELECT row_id, doc_id, status, fact_ids FROM qa_rows").fetchall()
    citing = {r[0] for r in rows if set(r[3]) & flagged}
    assert citing, "the extractive teacher asks about the flagged facts"
    assert all(r[2] != "auto_verified" for r in rows if r[0] in citing)
    # Elsewhere review_numeric_rows=False lets the ledger verify grounded numeric rows by itself.
    assert any(r[2] == "auto_verified" for r in rows if r[0] not in citing)

    waiting = {r[0] for r in rows if r[0] in citing and r[2] == "needs_review"}
    assert waiting
    counts = apply_auto_policy(con, settings.similarity_threshold)
    assert counts["held"] == len(waiting)
    after = dict(con.execute("SELECT row_id, status FROM qa_rows").fetchall())
    assert all(after[r] == "needs_review" for r in waiting)
    assert all(after[r] != "needs_review" for r in after if r not in citing)
    assert counts["approved"] + counts["rejected"] > 0  # the other waiting rows were decided


def test_without_the_engine_the_message_says_how_to_install(tmp_path: Path) -> None:
    scan = _scanned_pdf(tmp_path / "scan.pdf", [(0, 30)])
    script = (
        "import sys; sys.modules['rapidocr_onnxruntime'] = None\n"  # as if the ocr extra were not installed
        "from pathlib import Path\n"
        "from tasks.ingest.extract import IngestError, extract\n"
        f"path = Path({str(scan)!r})\n"
        "try:\n"
        "    extract(path, path.read_bytes(), 100, 20)\n"
        "except IngestError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120, env=os.environ
    )
    assert out.returncode == 0, out.stderr
    message = out.stdout.strip()
    assert "\n" not in message and "Traceback" not in out.stderr
    assert message.startswith("scanned PDF: 1 of 1 pages have no text layer; OCR is not installed")
    assert "pip install -e '.[ocr]'" in message


def test_rate_table_as_pdf_word_and_scan_give_one_ledger(
    tmp_path: Path, workspace: tuple[Settings, duckdb.DuckDBPyConnection]
) -> None:
    """The project's rate table (tests/data/make_rate_tables.py: merged header cells, a unit line, running on
    over two pages) as a PDF, as a .docx and as the PDF's pages scanned: the scan's ruled table is found in
    the image, its cells read by OCR and written as the PDF's are, so the ledgers agree."""
    from tests.data.make_rate_tables import expected_cells, rate_table_docx, rate_table_pdf

    settings, con = workspace
    pdf = tmp_path / "rates-table.pdf"
    pdf.write_bytes(rate_table_pdf())
    word = tmp_path / "rates-table.docx"
    word.write_bytes(rate_table_docx())
    scan = tmp_path / "rates-table-scan.pdf"
    with pymupdf.open(pdf) as doc, pymupdf.open() as out:
        for page in doc:
            image = out.new_page(width=page.rect.width, height=page.rect.height)
            image.insert_image(image.rect, pixmap=page.get_pixmap(dpi=150))
        out.save(scan)
    results = {path.name: ingest_file(con, path, settings) for path in (pdf, word, scan)}
    assert all(r.status == "added" for r in results.values()), [r.message for r in results.values()]
    ledgers = {name: _triples(ledger.list_facts(con, name)) for name in results}
    assert ledgers["rates-table.pdf"] == ledgers["rates-table.docx"]
    expected = ledgers["rates-table.pdf"]
    read = ledgers["rates-table-scan.pdf"]
    recall = len(expected & read) / len(expected)
    cells = {(Decimal(v), "元", f"{region} {column}") for (region, column), v in expected_cells().items()}
    print(
        f"scanned rate table: recall {recall:.3f} of {len(expected)} facts, {len(cells & read)}/{len(cells)} cells"
    )
    assert cells <= expected
    assert recall >= MIN_RECALL, sorted(expected - read)
    assert results["rates-table-scan.pdf"].message.endswith(f"(ocr {results['rates-table-scan.pdf'].facts})")
