"""Hostile uploads and requests against the web app (issue #18, bad input): scenarios in ``scenarios_web``
(``bench/faults.py`` prints the same outcomes). Each must end as documented, with nothing lost or half-stored."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability import scenarios_web as scenarios

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")


def test_hostile_uploads_are_refused_or_failed_with_nothing_half_stored(tmp_path: Path) -> None:
    pytest.importorskip("gradio")
    outcome = scenarios.hostile_uploads(tmp_path)
    assert not outcome.problems and outcome.lost == 0, outcome.notes
    # every hostile file ended as documented, and a good one after them landed
    assert outcome.runs_completed == sum(outcome.faults.values()) + 1, outcome.details
    assert {"not_a_document", "too_large", "zip_bomb", "path_traversal", "empty"} <= set(outcome.faults)


def test_hostile_requests_get_their_status_and_the_endpoint_keeps_answering(tmp_path: Path) -> None:
    outcome = scenarios.hostile_requests(tmp_path)
    assert not outcome.problems and outcome.lost == 0, outcome.notes
    # every bad request, client that left and request of the burst, then a normal answer streamed and not
    assert outcome.runs_completed == sum(outcome.faults.values()) + 2, outcome.details
    kinds = {"empty_question", "long_question", "malformed_json", "wrong_types", "client_left", "burst"}
    assert kinds | {"body_too_large"} <= set(outcome.faults)


def test_the_ui_upload_route_takes_files_up_to_max_file_mb(tmp_path: Path) -> None:
    pytest.importorskip("gradio")
    outcome = scenarios.ui_upload_route(tmp_path)
    assert outcome.passed and outcome.runs_completed == 4, outcome.notes
