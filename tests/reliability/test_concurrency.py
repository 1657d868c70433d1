"""Two `slm` processes on one workspace: one waits or fails clearly, nothing is lost or doubled, and the
file reopens with the content of a sequential run (scenarios in ``scenarios_concurrency``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability import scenarios_concurrency as scenarios


@pytest.mark.slow
def test_a_second_ingest_is_refused_clearly_and_rerun_adds_its_rows(tmp_path: Path) -> None:
    outcome = scenarios.two_ingests_one_refused(tmp_path)
    assert outcome.lost == 0 and outcome.rows_lost == 0 and outcome.duplicates == 0, outcome
    assert outcome.runs_completed == 2, outcome.notes


@pytest.mark.slow
def test_distill_waits_for_a_running_ingest_then_sees_all_of_it(tmp_path: Path) -> None:
    outcome = scenarios.distill_waits_for_ingest(tmp_path)
    assert outcome.lost == 0, outcome
    assert outcome.runs_completed == 1, outcome.notes


def test_the_wait_for_a_held_warehouse_is_bounded_and_names_the_holder(tmp_path: Path) -> None:
    outcome = scenarios.lock_message_is_bounded(tmp_path)
    assert outcome.lost == 0 and outcome.runs_completed == 2, outcome.notes
