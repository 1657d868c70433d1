"""Shared fixtures: a fresh workspace per test, and the paths of the sample and of ../shared/corpus."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from runtime.config import Settings, load_settings
from warehouse.db import connect

# Offline machine: no telemetry (it also causes "database is locked" on SQLite), and a slow first start.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SAMPLE_MD = EXAMPLES / "sample_rules.md"
SAMPLE_PDF = EXAMPLES / "sample_rules.pdf"
CORPUS = ROOT.parent / "shared" / "corpus"
EXPECTED = Path(__file__).parent / "data" / "corpus_expected"


def corpus_path(*parts: str) -> Path:
    """A file of ../shared/corpus; tests that need one skip, saying so, when the folder is absent."""
    path = CORPUS.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not present (the shared corpus lives beside the clone)")
    return path


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    for var in ("SLM_WORKSPACE", "SLM_MAX_PAGES", "SLM_CHUNK_SIZE", "SLM_GEMINI_API_KEYS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    return load_settings(tmp_path / "ws")


@pytest.fixture
def con(settings: Settings) -> Iterator[duckdb.DuckDBPyConnection]:
    connection = connect(settings.warehouse_path)
    try:
        yield connection
    finally:
        connection.close()
