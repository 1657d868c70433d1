"""The whole pipeline with a tiny model: `slm run` on the sample finds a promoted model, a report and a GGUF;
a second run trains nothing; the nightly flow retrains after a new annotation and records no change after."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prefect.testing.utilities import prefect_test_harness

from flows.nightly import nightly
from flows.pipeline import pipeline
from runtime.config import load_settings
from tests.conftest import SAMPLE_MD
from tests.test_cli import slm
from tests.tiny import build_tiny_base
from warehouse import models as registry
from warehouse.db import open_warehouse


@pytest.fixture(scope="module")
def prefect_server():
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.mark.slow
def test_run_then_rerun_then_nightly(prefect_server, tmp_path: Path) -> None:
    base = build_tiny_base(tmp_path / "tiny-base")
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "slm.toml").write_text(
        f'base_model = "{base}"\nreview_policy = "auto"\nper_fact = 1\ngolden_size = 12\n'
        'answer_max_tokens = 16\nexport_quant = "f16"\ntrain_epochs = 1\n'
        # A tiny random model cannot show it is better: the gate is opened wide so the test sees a promotion.
        "promotion_margin = 1.0\n",
        encoding="utf-8",
    )
    first = pipeline([str(SAMPLE_MD)], str(workspace), max_steps=6)
    assert first["trained"] and first["evaluation"]["promoted"]
    report = Path(first["evaluation"]["report_md"]).read_text(encoding="utf-8")
    assert "| model | numeric_accuracy |" in report and "| shown | numeric_accuracy |" in report
    assert "McNemar p" in report and "auto policy: the ledger approved" in report
    assert Path(first["evaluation"]["report_html"]).exists()
    assert (
        Path(first["evaluation"]["report_md"])
        .with_name(Path(first["evaluation"]["report_md"]).stem + "-guard.png")
        .exists()
    )
    gguf = Path(first["export"]["path"])
    assert gguf.exists() and gguf.stat().st_size > 0
    settings = load_settings(workspace)
    with open_warehouse(settings.warehouse_path, read_only=True) as con:
        champion = registry.get_champion(con)
        assert champion is not None and champion["model_id"] == first["challenger"]["model_id"]
        assert registry.list_exports(con, champion["model_id"])

    # The exported GGUF itself, evaluated through llama.cpp in grounded mode (retrieval + numeric guard).
    questions = tmp_path / "q.jsonl"
    questions.write_text(
        '{"question": "出差伙食补助费每人每天多少钱？", "numbers": ["100"], "type": "numeric"}\n'
        '{"question": "宠物托运费可以报销吗？", "type": "unanswerable"}\n',
        encoding="utf-8",
    )
    graded = slm(
        "-w",
        str(workspace),
        "eval",
        "--questions",
        str(questions),
        "--model",
        str(gguf),
        "--mode",
        "grounded",
        "--json",
        cwd=tmp_path,
    )
    assert graded.returncode == 0, graded.stderr
    payload = json.loads(graded.stdout)
    assert payload["model"]["n"] == 2 and payload["shown"]["n"] == 2
    assert sum(payload["guard_actions"].values()) == 2

    # Asking: the champion's GGUF by name; a number is shown only with its source, or not at all.
    asked = slm(
        "-w", str(workspace), "ask", "出差伙食补助费每人每天多少钱？", "--model", "champion", cwd=tmp_path
    )
    assert asked.returncode == 0, asked.stderr
    assert "guard " in asked.stdout and "mode grounded" in asked.stdout
    if "verified True" in asked.stdout and "numbers -" not in asked.stdout:
        assert "source: sample_rules.md" in asked.stdout
    closed = slm(
        "-w", str(workspace), "ask", "出差伙食补助费每人每天多少钱？", "--mode", "closed", cwd=tmp_path
    )
    assert closed.returncode == 0 and "mode closed_book" in closed.stdout, closed.stderr
    missing = slm("-w", str(workspace), "ask", "问题", "--model", "nosuchmodel", cwd=tmp_path)
    assert missing.returncode == 2 and "no nosuchmodel model" in missing.stderr
    chatted = slm(
        "-w",
        str(workspace),
        "chat",
        "--model",
        "champion",
        cwd=tmp_path,
        stdin="会议费标准是多少？\n伙食补助费呢？\n\n",
    )
    assert chatted.returncode == 0, chatted.stderr
    assert (
        chatted.stdout.count("mode grounded") == 2 and "passed" in chatted.stdout
    )  # two answers, then stats

    second = pipeline([str(SAMPLE_MD)], str(workspace), max_steps=6)
    assert second["trained"] is False

    unchanged = nightly(str(workspace), max_steps=6)
    assert unchanged["changed"] is False

    with open_warehouse(settings.warehouse_path) as con:  # a person corrects one row: new dataset
        row_id = con.execute(
            "SELECT row_id FROM qa_rows WHERE status IN ('approved', 'auto_verified') AND kind = 'text'"
            " AND row_id NOT IN (SELECT row_id FROM golden_items WHERE row_id IS NOT NULL) LIMIT 1"
        ).fetchone()[0]
        con.execute(
            "UPDATE qa_rows SET status = 'corrected', answer = answer || '（经复核）', reviewer = 'annotator-1'"
            " WHERE row_id = ?",
            [row_id],
        )
    retrained = nightly(str(workspace), max_steps=6)
    assert (
        retrained["changed"] is True
        and retrained["dataset"]["dataset_id"] != first["dataset"]["dataset"]["dataset_id"]
    )
    assert "evaluation" in retrained
    again = nightly(str(workspace), max_steps=6)
    assert again["changed"] is False
