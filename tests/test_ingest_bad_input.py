"""Every kind of bad input gets one clear line naming the file and the reason, is recorded as failed,
leaves nothing else in the warehouse, and does not stop the other files."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pymupdf
import pytest

from runtime.config import Settings
from tasks.ingest.documents import ingest_file, ingest_paths
from tasks.ingest.extract import content_id
from tests.reliability.hostile import RULE, pdf_bytes
from warehouse import ledger


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / "in" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data)
    return path


def _encrypted_pdf() -> bytes:
    doc = pymupdf.open(stream=pdf_bytes([RULE]), filetype="pdf")
    return doc.tobytes(encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw="secret", owner_pw="owner")


def _scanned_pdf() -> bytes:
    doc = pymupdf.open()
    page = doc.new_page()
    pix = pymupdf.Pixmap(pymupdf.csRGB, pymupdf.IRect(0, 0, 200, 100), False)
    pix.set_rect(pix.irect, (200, 200, 200))
    page.insert_image(page.rect, pixmap=pix)
    return doc.tobytes()


def _huge_pdf(pages: int) -> bytes:
    doc = pymupdf.open()
    for _ in range(pages):
        doc.new_page().insert_text((72, 72), "第一条 差旅费", fontname="china-s")
    return doc.tobytes()


BAD_INPUTS = [
    ("corrupt.pdf", lambda: pdf_bytes([RULE])[:400], "corrupt PDF"),
    ("garbage.pdf", lambda: b"%PDF-1.7\n" + bytes(range(256)) * 20, "corrupt PDF"),
    ("not-really.pdf", lambda: b"PK\x03\x04 this is a zip file" * 10, "not a PDF"),
    ("encrypted.pdf", _encrypted_pdf, "encrypted PDF"),
    ("scanned.pdf", _scanned_pdf, "scanned PDF: OCR found no text on 1 page"),
    ("empty.pdf", lambda: b"", "empty file"),
    ("empty.txt", lambda: b"   \n\n", "empty file"),
    ("binary.txt", lambda: bytes(range(256)) * 40, "binary file"),
    ("huge.pdf", lambda: _huge_pdf(2000), "too many pages"),
    ("footers-only.txt", lambda: "- 1 -\n- 2 -\n第 3 页\n".encode(), "no text after normalisation"),
]


@pytest.mark.parametrize(("name", "make", "reason"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_refused_clearly_and_leaves_nothing(
    tmp_path: Path, con: duckdb.DuckDBPyConnection, settings: Settings, name: str, make, reason: str
) -> None:
    good = _write(tmp_path, "good.txt", RULE.encode())
    ingest_file(con, good, settings)
    before = ledger.table_counts(con)

    data = make()
    path = _write(tmp_path, name, data)
    result = ingest_file(con, path, settings)

    assert result.status == "failed"
    assert result.message.startswith(f"{path}: ")
    assert reason in result.message
    assert "\n" not in result.message
    after = ledger.table_counts(con)
    assert after["pages"] == before["pages"]
    assert after["chunks"] == before["chunks"]
    assert after["facts"] == before["facts"]
    if data.strip() and len(data) < 2**30:
        # Recorded as failed with its reason, and nothing else for that file.
        doc_id = content_id(data)
        assert ledger.document_status(con, doc_id) == "failed"
        assert ledger.document_counts(con, doc_id) == {"documents": 1, "pages": 0, "chunks": 0, "facts": 0}
        row = con.execute("SELECT error FROM documents WHERE doc_id = ?", [doc_id]).fetchone()
        assert row is not None and reason in row[0]


def test_too_large_file_is_refused_without_reading(tmp_path: Path, con, settings: Settings) -> None:
    small = settings.model_copy(update={"max_file_mb": 0.001})
    path = _write(tmp_path, "big.txt", (RULE * 100).encode())
    result = ingest_file(con, path, small)
    assert result.status == "failed" and "file too large" in result.message


def test_bad_files_do_not_stop_the_others(tmp_path: Path, con, settings: Settings) -> None:
    _write(tmp_path, "a-corrupt.pdf", b"%PDF-1.4\nbroken")
    _write(tmp_path, "b-good.txt", RULE.encode())
    _write(tmp_path, "c-binary.txt", bytes(range(256)) * 10)
    _write(tmp_path, "d-good.pdf", pdf_bytes([RULE]))
    results = ingest_paths(con, [tmp_path / "in", tmp_path / "missing.pdf"], settings)
    by_name = {r.path.name: r.status for r in results}
    assert by_name == {
        "missing.pdf": "failed",
        "a-corrupt.pdf": "failed",
        "b-good.txt": "added",
        "c-binary.txt": "failed",
        "d-good.pdf": "added",
    }


def test_a_crash_mid_document_writes_nothing(tmp_path: Path, con, settings: Settings) -> None:
    """One transaction per document: a failure while storing leaves no partial rows."""
    path = _write(tmp_path, "rules.txt", RULE.encode())

    class Boom(RuntimeError):
        pass

    def failing_execute(sql: str, *args):  # fail on the chunks insert, after documents and pages
        if sql.startswith("INSERT INTO chunks"):
            raise Boom("disk full")
        return con.execute(sql, *args)

    with pytest.raises(Boom):
        ingest_file(_ConnectionProxy(con, failing_execute), path, settings)
    assert ledger.table_counts(con) == {"documents": 0, "pages": 0, "chunks": 0, "facts": 0}
    assert ingest_file(con, path, settings).status == "added"


class _ConnectionProxy:
    def __init__(self, con: duckdb.DuckDBPyConnection, execute) -> None:
        self._con = con
        self.execute = execute

    def __getattr__(self, name: str):
        return getattr(self._con, name)
