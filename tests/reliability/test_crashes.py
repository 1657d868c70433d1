"""``kill -9`` during each stage, then the same command again: nothing lost, nothing stored twice.

The scenarios live in ``scenarios_crashes`` (``bench/faults.py`` runs the same functions); one fast test
here pins the distillation bug the crash scenario found.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from runtime.config import Settings
from tasks.distill.distill import distill, make_teacher
from tasks.ingest.documents import ingest_file
from tests.conftest import SAMPLE_MD, require_or_skip
from tests.reliability.outcome import FaultOutcome
from tests.reliability.scenarios_crashes import SCENARIOS, crash_during_review
from warehouse.db import open_warehouse

# Faults each scenario injects and the re-runs that must complete afterwards.
EXPECTED = {
    "crash_during_export": (2, 1),
    "crash_during_review": (2, 2),
}


@pytest.mark.slow
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda f: f.__name__)
def test_kill_then_rerun_loses_nothing(scenario: Callable[[Path], FaultOutcome], tmp_path: Path) -> None:
    if scenario is crash_during_review:
        from review import server
        from runtime.config import load_settings

        try:
            server.ensure_installed(load_settings(tmp_path / "probe"))
        except (server.LabelStudioError, OSError) as exc:
            require_or_skip(f"Label Studio cannot be installed here: {exc}")
    outcome = scenario(tmp_path)
    faults, runs = EXPECTED.get(scenario.__name__, (1, 1))
    assert outcome.lost == 0 and outcome.passed, outcome
    assert sum(outcome.faults.values()) == faults, outcome  # every kill landed while the command worked
    assert outcome.runs_completed == runs, outcome


def test_a_clause_shared_by_two_documents_is_distilled_once(settings: Settings, tmp_path: Path) -> None:
    """Two documents repeating the sample's clauses word for word: one teacher call per clause (the first
    document's), so the rows never depend on which chunk was answered first, and no group of stored results
    holds one cache key twice (it failed with a duplicate key when a re-run after a crash had both)."""
    copy = tmp_path / "copy.md"
    copy.write_text("# 另一份\n\n" + SAMPLE_MD.read_text(encoding="utf-8"), encoding="utf-8")
    with open_warehouse(settings.warehouse_path) as con:
        for path in (SAMPLE_MD, copy):
            assert ingest_file(con, path, settings).status == "added"
        summary = distill(con, settings, make_teacher(settings))
        shared = con.execute(
            "SELECT count(*) FROM (SELECT text FROM chunks GROUP BY text HAVING count(*) > 1)"
        ).fetchone()[0]
        calls, keys = con.execute("SELECT count(*), count(DISTINCT cache_key) FROM teacher_calls").fetchone()
        owners = con.execute(
            "SELECT DISTINCT d.name FROM teacher_calls t JOIN chunks c USING (chunk_id) JOIN documents d USING (doc_id)"
            " WHERE c.text IN (SELECT text FROM chunks GROUP BY text HAVING count(*) > 1)"
        ).fetchall()
    assert shared > 10 and calls == keys
    assert summary.cached >= shared  # the repeated clauses were not sent to the teacher again
    assert owners == [("copy.md",)]  # the first of the two in document order (by name)
