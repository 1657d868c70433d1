"""Behaviour is unchanged: the bundled sample yields the same ledger, qa rows, gate outcomes, dataset id,
golden set and no-model scores as recorded in ``tests/data/sample_fingerprint.json`` (recorded from the
code before the layout moved, commit 9500925; see ``tests/record_fingerprint.py``). Recorded again on purpose
since: the auto policy's counts gained ``held`` (0 on the sample: no OCR'd page), and the guard's fit rules
(tiered brackets, sentence topics) let the always-right reference model pass one more grounded question
(shown numeric 0.8077 -> 0.8462), and the dataset's context copies asking in everyday words where the
lexicon has them (prompt format ctx-v3: a new dataset id and files), and categories learned from "甲性或者乙性
名词" lists (国际学术会议 names 二类会议: sample shown numeric 0.8077 -> 0.8462 for the scripted models, the
reference 0.8462 -> 0.8846), and the context copies led by the best-fitting facts' sentences (ctx-v4: a new
dataset id and files, the scores unchanged) written for every row (context_share 1.0), and the guard's
abstention where a question names an expense no document writes, with the lexicon's 借 for 借款 (sample shown
numeric 0.9231 -> 0.9615, the echo model's shown abstention 0.8333 -> 1.0), and the context copies led by
the best-fitting facts' one-number statements (ctx-v5: a new dataset id and files, the scores unchanged); the
ledger, rows, gates and golden
parts are as recorded from 9500925.

One pipeline run (about 15 s) feeds one test per part, so a failure's name says which part changed
(ledger, rows, gates, dataset, golden, scores) and its message lists the differing values. A deliberate
change of behaviour is recorded again with ``.venv/bin/python -m tests.record_fingerprint``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.record_fingerprint import DEFAULT_OUT, differences, sample_fingerprint

# Part of the fingerprint -> what it is called in a failure.
PARTS = {
    "ledger": "ledger (sample_rules.pdf: documents, pages, chunks, facts)",
    "ledger_md": "ledger (sample_rules.md: documents, pages, chunks, facts)",
    "distill": "distillation summary",
    "rows_distilled": "qa rows after extractive distillation",
    "rows_after_auto_review": "qa rows after the pre-review gate and the auto review policy",
    "gates": "gate outcomes (pre_review, auto policy, release)",
    "dataset": "frozen dataset",
    "golden": "golden items",
    "scores": "scores",
    "settings": "settings the fingerprint ran with",
}


@pytest.fixture(scope="module")
def recorded() -> dict[str, Any]:
    return json.loads(DEFAULT_OUT.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def now(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return sample_fingerprint(tmp_path_factory.mktemp("fingerprint") / "work")


def _named(part: str, line: str) -> str:
    """A difference line with its part spelt out: the dataset id and each score by name."""
    if line.startswith("dataset.dataset_id"):
        return f"dataset id: {line}"
    if part == "scores":
        model_mode = line.split(".")[1] if "." in line else line
        return f"score {model_mode}: {line}"
    return f"{PARTS.get(part, part)}: {line}"


@pytest.mark.parametrize("part", list(PARTS))
def test_sample_fingerprint_unchanged(part: str, recorded: dict[str, Any], now: dict[str, Any]) -> None:
    lines = differences(recorded.get(part), now.get(part), part)
    assert not lines, (
        f"behaviour changed: {PARTS[part]} differs from {DEFAULT_OUT.name} "
        f"({len(lines)} value(s)):\n" + "\n".join(_named(part, line) for line in lines[:40])
    )


def test_fingerprint_has_no_other_parts(recorded: dict[str, Any], now: dict[str, Any]) -> None:
    assert set(recorded) == set(now) == set(PARTS), (
        f"fingerprint parts: recorded {sorted(recorded)}, now {sorted(now)}, tested {sorted(PARTS)}"
    )


def test_recorded_fingerprint_is_plain(recorded: dict[str, Any]) -> None:
    """No absolute path or run-dependent value slipped into the recording."""
    text = DEFAULT_OUT.read_text(encoding="utf-8")
    assert str(Path(__file__).resolve().parents[1]) not in text and "/tmp" not in text
    assert recorded["dataset"]["dataset_id"] and recorded["ledger"]["facts"] > 0
