"""A hand-written rules text ingested into a test warehouse, for tests of retrieval and the guard.

A test module sets ``RULES_FILE = (file name, text)`` and asks for the ``rules`` fixture (tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import duckdb

from runtime.config import Settings
from tasks.answer.answer import Answer, answer
from tasks.answer.fact_retrieve import clear_cache
from tasks.answer.retrieve import ChunkIndex
from tasks.ingest.documents import ingest_file


def ingest_rules(
    con: duckdb.DuckDBPyConnection, settings: Settings, folder: Path, name: str, text: str
) -> duckdb.DuckDBPyConnection:
    """``text`` written to ``folder/name`` and ingested into ``con`` (fact indexes of earlier tests forgotten)."""
    clear_cache()
    path = folder / name
    path.write_text(text, encoding="utf-8")
    assert ingest_file(con, path, settings).status == "added"
    return con


def answer_drafted(con: duckdb.DuckDBPyConnection, question: str, draft: str) -> Answer:
    """``question`` answered in grounded mode by a scripted model that always writes ``draft``."""
    return answer(question, lambda *a, **k: draft, ChunkIndex.build(con), con)
