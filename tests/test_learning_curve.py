"""bench/learning_curve.py end to end on a tiny model: the real pipeline (ingest, distil, gates, freeze), two
profiles trained with two checkpoints each (a profile field set for both), every checkpoint exported and
answering through llama.cpp."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runtime.config import Settings
from tests.conftest import EXAMPLES, SAMPLE_MD
from tests.tiny import build_tiny_base


@pytest.mark.slow
def test_learning_curve_runs_on_a_tiny_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("llama_cpp")
    from bench.learning_curve import main

    base = build_tiny_base(tmp_path / "tiny-base")
    out = tmp_path / "curve.png"
    argv = ["--base", str(base), "--steps", "2,4", "--limit", "5", "--threads", "1", "--quant", "f16"]
    ws = tmp_path / "ws"
    points = main([*argv, "--set", "lora_r=4", "--out", str(out), "--workspace", str(ws)])
    printed = capsys.readouterr().out

    assert [(p.profile, p.step) for p in points] == [
        ("base", 0),
        ("cpu-small*", 2),
        ("cpu-small*", 4),
        ("prototype*", 2),
        ("prototype*", 4),
    ]
    # The field set on the command line is the one both runs trained with (the profiles' own rank is 8 and 16).
    for name in ("cpu-small", "prototype"):
        config = json.loads((ws / name / "adapters" / "step-2" / "adapter_config.json").read_text())
        assert config["r"] == 4
    table = printed.split("\n\nprofile", 1)[1].split("\n\nplot:", 1)[0].splitlines()
    rows = [line.split()[:2] for line in table[2:]]
    assert rows == [
        ["base", "0"],
        ["cpu-small*", "2"],
        ["cpu-small*", "4"],
        ["prototype*", "2"],
        ["prototype*", "4"],
    ]
    assert "hand·closed (n=5)" in table[0] and "reading·grounded" in table[0] and "recall·closed" in table[0]
    for point in points:
        # Every (set, mode) column was answered, at most 5 questions per set, scored in the model family.
        assert set(point.scores) == {
            "file:sample_questions.jsonl|closed_book",
            "golden recall|closed_book",
            "file:sample_questions.jsonl|grounded",
            "golden reading|grounded",
        }
        assert all(0 < m["n"] <= 5 and m["numeric_accuracy"] is not None for m in point.scores.values())
        assert sum(point.guard["grounded"].values()) == sum(
            m["n"] for key, m in point.scores.items() if key.endswith("|grounded")
        )
    trained = [p for p in points if p.step]
    assert all(p.cpu_min > 0 and p.train_loss is not None for p in trained)
    assert trained[0].cpu_min < trained[1].cpu_min and trained[2].cpu_min < trained[3].cpu_min
    assert out.is_file() and out.stat().st_size > 10_000 and out.read_bytes()[:4] == b"\x89PNG"
    assert len(json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))) == len(points)


@pytest.mark.slow
def test_learning_curve_on_other_documents_and_questions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("llama_cpp")
    from bench.learning_curve import main

    questions = tmp_path / "staff_questions.jsonl"
    questions.write_text((EXAMPLES / "sample_questions.jsonl").read_text(encoding="utf-8"), encoding="utf-8")
    argv = ["--base", str(build_tiny_base(tmp_path / "tiny-base")), "--workspace", str(tmp_path / "ws")]
    argv += ["--steps", "2", "--profiles", "cpu-small", "--limit", "3", "--threads", "1"]
    argv += ["--quant", "f16", "--skip-base"]
    argv += ["--documents", str(SAMPLE_MD), "--questions", str(questions), "--out", str(tmp_path / "c.png")]
    points = main(argv)

    assert [(p.profile, p.step) for p in points] == [("cpu-small", 2)]
    assert "file:staff_questions.jsonl|grounded" in points[0].scores
    printed = capsys.readouterr().out
    assert printed.count("hand·grounded (n=3)") == 2  # the header printed first, and the table at the end
    # Other documents answer with the default settings, as `slm run` in a fresh workspace does.
    assert f"at most {Settings().answer_max_tokens} tokens" in printed
