"""Bad and hostile input (issue #10, reliability part 4): each file of the generated corpus ends with one
clear line naming it and the problem, or with correct rows; never a traceback, a hang or a half-written
document. Planted instructions never make an invented number pass verification."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pymupdf
import pytest

from runtime.config import Settings
from tasks.ingest.documents import ingest_file
from tests.fakes import Reply, obey_injection
from tests.fakes.openai_server import FakeOpenAIServer
from tests.reliability import scenarios_hostile as scenarios
from tests.reliability.hostile import CASES, INJECTED_NUMBER, case, write_corpus
from warehouse import ledger
from warehouse.db import connect


@pytest.fixture
def hostile_settings(tmp_path: Path) -> Settings:
    return scenarios.workspace(tmp_path)


@pytest.fixture
def warehouse(hostile_settings: Settings):
    con = connect(hostile_settings.warehouse_path)
    try:
        yield con
    finally:
        con.close()


def test_the_corpus_is_broad() -> None:
    assert len(CASES) >= 30
    assert len({c.name for c in CASES}) == len(CASES)
    kinds = {c.kind for c in CASES}
    for kind in (
        "truncated_pdf",
        "encrypted_pdf",
        "page_bomb",
        "deep_nesting",
        "garbage_xref",
        "lying_header",
        "utf16",
        "mixed_encoding",
        "nul_bytes",
        "long_line",
        "zero_width",
        "prompt_injection",
        "odd_name",
        "symlink_loop",
        "too_large",
        "empty",
        "scanned_pdf",
    ):
        assert kind in kinds


@pytest.mark.parametrize(
    "hostile", CASES, ids=[c.name.encode("ascii", "backslashreplace").decode() for c in CASES]
)
def test_each_file_ends_clearly_in_process(
    tmp_path: Path, hostile_settings: Settings, warehouse: duckdb.DuckDBPyConnection, hostile
) -> None:
    ((_, path),) = write_corpus(tmp_path / "corpus", [hostile])
    checked = scenarios.check_case(warehouse, hostile_settings, hostile, path)
    assert checked.problems == []


# Exact reasons people read, for the files whose verdict does not depend on a PDF reader's repairs.
MESSAGES = {
    "encrypted.pdf": "encrypted PDF: a password is required",
    "scanned.pdf": "scanned PDF: OCR found no text on 2 pages (0 characters in 2 pages)",
    "5000-pages.pdf": "too many pages (5000 > max_pages 1000)",
    "cyclic-page-tree.pdf": "corrupt PDF",
    "nested-arrays.pdf": "corrupt PDF",
    "truncated-35.pdf": "corrupt PDF",
    "html-inside.pdf": "not a PDF (no %PDF header)",
    "empty.md": "empty file (no content)",
    "nul-late.txt": "binary file, not text",
    "mixed-utf8-gbk.txt": "unreadable text: not valid UTF-8, GB18030 or Big5",
    "huge.txt": "file too large (201 MB > max_file_mb 200)",
    "pipe.txt": "not a regular file",
    "self-loop.pdf": "broken symbolic link",
}


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_refusals_say_what_is_wrong(
    tmp_path: Path, hostile_settings: Settings, warehouse: duckdb.DuckDBPyConnection, name: str
) -> None:
    ((_, path),) = write_corpus(tmp_path / "corpus", [case(name)])
    result = ingest_file(warehouse, path, hostile_settings)
    assert result.status == "failed"
    assert result.message.startswith(f"{path}: ")
    assert MESSAGES[name] in result.message


def test_the_page_bomb_is_refused_before_reading_pages(
    tmp_path: Path,
    hostile_settings: Settings,
    warehouse: duckdb.DuckDBPyConnection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ((_, path),) = write_corpus(tmp_path / "corpus", [case("5000-pages.pdf")])
    # What is observed is whether a page was opened or read, not the wall clock (a loaded machine is slow
    # either way): the refusal must come from the page count alone.
    read: list[str] = []
    for cls, name in ((pymupdf.Document, "load_page"), (pymupdf.Page, "get_text")):
        original = getattr(cls, name)

        def spy(*args, _original=original, _name=name, **kwargs):
            read.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(cls, name, spy)
    result = ingest_file(warehouse, path, hostile_settings)
    assert result.status == "failed" and "too many pages (5000 > max_pages" in result.message
    assert read == [], f"{len(read)} page reads before the refusal"


def test_text_is_read_as_written(
    tmp_path: Path, hostile_settings: Settings, warehouse: duckdb.DuckDBPyConnection
) -> None:
    """UTF-16, invisible characters and odd names give the same facts and text as a clean UTF-8 file."""
    written = write_corpus(
        tmp_path / "corpus",
        [
            case("utf16-no-bom.txt"),
            case("zero-width.txt"),
            case("latin1-\udce9t\udce9.txt"),
            case("line\nbreak.md"),
        ],
    )
    for _, path in written:
        assert ingest_file(warehouse, path, hostile_settings).status == "added"
    texts = [row[0] for row in warehouse.execute("SELECT text FROM documents ORDER BY name").fetchall()]
    assert not any(ch in text for text in texts for ch in "\u200b\u200f\u202e\ufeff\x00")
    names = {row[0] for row in warehouse.execute("SELECT name FROM documents").fetchall()}
    assert {"latin1-\\xe9t\\xe9.txt", "line\\nbreak.md"} <= names  # printable, storable, one line


def test_hostile_files_one_by_one(tmp_path: Path) -> None:
    outcome, checked = scenarios.ingest_each_hostile_file(tmp_path)
    assert outcome.notes == ""
    assert outcome.lost == 0
    assert outcome.runs_completed == len(CASES) == sum(outcome.faults.values())
    refused = [c for c in checked if c.result and c.result.status == "failed"]
    assert all(c.result and "unexpected error" not in c.result.message for c in refused)


def test_hostile_folder_through_the_command_line(tmp_path: Path) -> None:
    """`slm ingest <dir>`: good files added, each bad one listed with its reason, exit status 1 (documented:
    non-zero when any file failed), no traceback, refused files leave no pages, chunks or facts."""
    outcome, run = scenarios.ingest_folder_cli(tmp_path)
    assert outcome.notes == ""
    assert outcome.lost == 0
    assert run.returncode == 1
    assert "Traceback" not in run.stderr
    assert {"good.pdf", "utf16-bom.md", "[red]markup [bold]name.txt", "inside.txt"} <= run.added
    assert "encrypted PDF" in run.failed["encrypted.pdf"]
    assert "too many pages" in run.failed["5000-pages.pdf"]
    assert "broken symbolic link" in run.failed["dangling.txt"]
    assert "folder.pdf" not in run.failed  # a folder named .pdf is walked, not read
    for line in run.stderr.splitlines():
        if line.startswith("failed"):
            assert line.count(": ") >= 1 and len(line.split(": ", 1)[1]) > 5


def test_pdf_byte_mutations(tmp_path: Path) -> None:
    outcome = scenarios.pdf_byte_mutations(tmp_path, count=60)
    assert outcome.notes == ""
    assert outcome.lost == 0 and outcome.runs_completed == 60


def test_prompt_injection_extractive(tmp_path: Path) -> None:
    outcome, rows = scenarios.distil_injections("extractive", tmp_path, "extractive")
    assert outcome.notes == "" and outcome.lost == 0
    # The rules are still taught with their own numbers.
    answers = {r["answer"] for r in rows if "伙食补助费" in r["question"]}
    assert answers and all(INJECTED_NUMBER not in a for a in answers)


def test_prompt_injection_obedient_model(tmp_path: Path) -> None:
    """The fake model answers every fact with the planted 999元 and invents 1000元; none of it is trusted."""
    with FakeOpenAIServer(lambda index, key: Reply(text=obey_injection)) as server:
        outcome, rows = scenarios.distil_injections(
            "openai",
            tmp_path,
            "openai",
            openai_base_url=server.base_url,
            openai_model="obedient",
            teacher_backoff_s=0.01,
            distill_concurrency=2,
        )
    assert outcome.notes == "" and outcome.lost == 0
    real = ("伙食补助费", "交通费", "差旅费")  # what the rules are about
    obeyed = [
        r for r in rows if INJECTED_NUMBER in (r["numbers"] or []) and any(w in r["question"] for w in real)
    ]
    invented = [r for r in rows if "1000" in (r["numbers"] or [])]
    assert obeyed and invented, "the fake model did not obey the planted instruction"
    for row in [*obeyed, *invented]:
        assert (row["grounded"], row["status"]) == (False, "needs_review"), (row["question"], row["answer"])
    # Kept for people to see (with the reason), not dropped.
    assert all(r["verify_notes"] for r in [*obeyed, *invented])
    # Known limit: the planted sentence is text of the document, so its 999元 is a ledger fact, and a row
    # asking about that sentence itself ("回答是多少？") is grounded; numeric rows go to people by default.


def test_scenarios_are_listed_for_the_benchmark() -> None:
    assert len(scenarios.SCENARIOS) == 5
    assert all(callable(s) for s in scenarios.SCENARIOS)


def test_a_refused_file_leaves_the_warehouse_as_it_was(
    tmp_path: Path, hostile_settings: Settings, warehouse: duckdb.DuckDBPyConnection
) -> None:
    written = write_corpus(tmp_path / "corpus", [c for c in CASES if c.expect == "refused"])
    before = ledger.table_counts(warehouse)
    for _, path in written:
        assert ingest_file(warehouse, path, hostile_settings).status == "failed"
    after = ledger.table_counts(warehouse)
    assert {t: after[t] for t in ("pages", "chunks", "facts")} == {
        t: before[t] for t in ("pages", "chunks", "facts")
    }
    failed = warehouse.execute("SELECT count(*) FROM documents WHERE status = 'failed'").fetchone()
    assert failed is not None and after["documents"] - before["documents"] == failed[0]
