"""The whole pipeline with a tiny model: `slm run` on the sample finds a promoted model, a report and a GGUF;
a second run trains nothing; the nightly flow retrains after a new annotation and records no change after.

Each step is checked where it is recorded, not in what it prints: the model registry (one champion, the
decision and its reasons in the note, what was retired or refused), the evaluation runs the decision rests on,
and the release gate run the dataset was frozen under. A tiny random model cannot show it is better, so the
first promotion opens the gate wide (margin 1.0); the retrained challenger then meets a gate no model can pass
(margin -1.0) and must be refused while the champion stays."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

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


def _models(con: Any) -> dict[str, dict[str, Any]]:
    return {m["model_id"]: m for m in registry.list_models(con)}


def _metrics(model: dict[str, Any]) -> dict[str, Any]:
    value = model["eval_metrics"]
    return json.loads(value) if isinstance(value, str) else value


def _release_gate_of(con: Any, dataset_id: str) -> tuple[str, bool, int]:
    row = con.execute(
        "SELECT g.gate, g.success, g.row_count FROM datasets d JOIN gate_runs g USING (gate_run_id)"
        " WHERE d.dataset_id = ?",
        [dataset_id],
    ).fetchone()
    assert row is not None, f"dataset {dataset_id} has no gate run"
    return row


def _eval_runs(con: Any, model_id: str) -> set[tuple[str, str]]:
    return set(
        con.execute(
            "SELECT model_label, mode FROM eval_runs WHERE model_id = ? AND source = 'golden' AND n > 0",
            [model_id],
        ).fetchall()
    )


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
    settings = load_settings(workspace)
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
    first_id = first["challenger"]["model_id"]
    first_dataset = first["dataset"]["dataset"]["dataset_id"]
    with open_warehouse(settings.warehouse_path, read_only=True) as con:
        # The dataset was frozen under a release gate run that passed, over the rows it holds.
        gate, success, gated_rows = _release_gate_of(con, first_dataset)
        assert gate == "release" and success is True and gated_rows > 0
        # The registry: exactly one champion, the challenger just trained on that dataset, its decision
        # (against the base: there was no champion) and the metrics it rests on recorded with it.
        models = _models(con)
        champions = [m for m in models.values() if m["kind"] == "champion"]
        assert [m["model_id"] for m in champions] == [first_id]
        champion = models[first_id]
        assert champion["status"] == "promoted" and champion["promoted_at"] is not None
        assert champion["note"].startswith("promoted over the base: "), champion["note"]
        assert champion["dataset_id"] == first_dataset
        assert registry.get_champion(con)["model_id"] == first_id
        assert _metrics(champion)["closed_book n"] > 0 and _metrics(champion)["grounded n"] > 0
        # The decision rests on the challenger's and the base's runs on the golden set, in both modes.
        assert _eval_runs(con, first_id) == {("challenger", "closed_book"), ("challenger", "grounded")}
        base_runs = con.execute(
            "SELECT DISTINCT mode FROM eval_runs WHERE model_label = 'base' AND source = 'golden'"
        ).fetchall()
        assert sorted(base_runs) == [("closed_book",), ("grounded",)]
        # The GGUF exported is the champion's.
        exports = registry.list_exports(con, first_id)
        assert exports and first["export"]["model_id"] == first_id
        assert str(gguf) in {e["path"] for e in exports}
        model_count = len(models)

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
    # Two answers, each with what the guard did; then the session's guard stats, which count those two.
    out = " ".join(chatted.stdout.split())  # the console may wrap lines
    assert out.count("mode grounded") == 2, chatted.stdout
    actions = Counter(re.findall(r"; guard (\w+)", out))
    stats = {name: int(n) for name, n in re.findall(r"(\w+) (\d+) \(\d+%\)", out)}
    assert sum(actions.values()) == 2 and sum(stats.values()) == 2, chatted.stdout
    assert {k: v for k, v in stats.items() if v} == dict(actions), chatted.stdout

    second = pipeline([str(SAMPLE_MD)], str(workspace), max_steps=6)
    assert second["trained"] is False

    unchanged = nightly(str(workspace), max_steps=6)
    assert unchanged["changed"] is False
    with open_warehouse(settings.warehouse_path, read_only=True) as con:
        assert len(_models(con)) == model_count  # nothing trained, nothing registered
        assert registry.get_champion(con)["model_id"] == first_id

    # From here on no challenger can pass the gate: the next one must be refused and the champion stay.
    toml = workspace / "slm.toml"
    toml.write_text(
        toml.read_text(encoding="utf-8").replace("promotion_margin = 1.0", "promotion_margin = -1.0"),
        encoding="utf-8",
    )

    # A person corrects the text rows: a new dataset. Every one, so that whichever rows the 6 training steps
    # draw, the new challenger's weights (and so its id, a hash of them) differ from the champion's.
    with open_warehouse(settings.warehouse_path) as con:
        row_ids = [
            r
            for (r,) in con.execute(
                "SELECT row_id FROM qa_rows WHERE status IN ('approved', 'auto_verified') AND kind = 'text'"
                " AND row_id NOT IN (SELECT row_id FROM golden_items WHERE row_id IS NOT NULL)"
            ).fetchall()
        ]
        assert row_ids
        con.execute(
            "UPDATE qa_rows SET status = 'corrected', answer = answer || '（经复核）', reviewer = 'annotator-1'"
            " WHERE row_id IN (SELECT unnest(?))",
            [row_ids],
        )
    retrained = nightly(str(workspace), max_steps=6)
    assert (
        retrained["changed"] is True
        and retrained["dataset"]["dataset_id"] != first["dataset"]["dataset"]["dataset_id"]
    )
    assert retrained["evaluation"]["promoted"] is False and retrained["evaluation"]["reasons"]
    refused_id = retrained["challenger"]["model_id"]
    assert refused_id != first_id
    with open_warehouse(settings.warehouse_path, read_only=True) as con:
        gate, success, _ = _release_gate_of(con, retrained["dataset"]["dataset_id"])
        assert gate == "release" and success is True
        models = _models(con)
        assert len(models) == model_count + 1
        refused = models[refused_id]
        assert refused["kind"] == "rejected" and refused["status"] == "refused"
        assert (
            refused["note"].startswith("refused against the champion: ") and "may be worse" in refused["note"]
        )
        assert refused["promoted_at"] is None
        assert _eval_runs(con, refused_id) == {("challenger", "closed_book"), ("challenger", "grounded")}
        # The champion did not move, and it is still what is exported.
        assert [m["model_id"] for m in models.values() if m["kind"] == "champion"] == [first_id]
        assert models[first_id]["status"] == "promoted"
    assert retrained["export"]["model_id"] == first_id
    again = nightly(str(workspace), max_steps=6)
    assert again["changed"] is False
