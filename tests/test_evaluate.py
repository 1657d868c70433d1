"""Metric functions on hand-written answers, question files, and the champion/challenger decision."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from tasks.evaluate import (
    EvalItem,
    QuestionFileError,
    aggregate,
    compare,
    evaluate,
    invented_numbers,
    load_questions,
    mcnemar_p,
    score_item,
    states_number,
)

LEDGER = {Decimal(v) for v in ("1200", "100", "80", "100000", "30000", "15")}
MEALS = EvalItem(
    "m1", "出差伙食补助费每人每天多少？", numbers=("100",), keywords=("伙食补助费",), type="numeric"
)
STIPEND = EvalItem("s1", "硕士研究生助研劳务费每月不超过多少？", numbers=("1200",), type="numeric")
PET = EvalItem("u1", "宠物托运费可以报销吗？", type="unanswerable")


@pytest.mark.parametrize("answer", ["每月不超过一千二百元。", "每月不超过1,200 元。", "1200元", "１２００元"])
def test_a_number_matches_however_it_is_written(answer: str) -> None:
    assert states_number(answer, "1200")
    assert score_item(STIPEND, answer, LEDGER).passed


def test_wan_scaling_matches_both_ways() -> None:
    assert states_number("合同金额10万元以上", "10") and states_number("合同金额10万元以上", "100000")
    assert not states_number("合同金额10万元以上", "1000")


def test_a_number_from_another_subject_is_wrong_and_an_invented_one_is_counted() -> None:
    wrong = score_item(
        MEALS, "伙食补助费每人每天80元。", LEDGER
    )  # 80 is the 市内交通费, a real ledger number
    assert not wrong.numbers_ok and not wrong.passed and wrong.invented == []
    invented = score_item(MEALS, "伙食补助费每人每天150元。", LEDGER)
    assert invented.invented == ["150元"] and not invented.passed


def test_numbers_in_the_question_are_not_invented() -> None:
    assert invented_numbers("超过15天的部分按70%执行", "出差超过15天怎么算？", LEDGER) == ["70%"]


def test_the_item_document_scopes_the_ledger() -> None:
    item = EvalItem("d1", "伙食补助费每天多少？", numbers=("100",), type="numeric", doc="a.pdf")
    other_doc = {"a.pdf": {Decimal("100")}}
    assert score_item(item, "每天100元，另有30000元补贴", LEDGER, other_doc).invented == ["30000元"]


def test_abstention_must_not_state_a_number() -> None:
    assert score_item(PET, "文件中没有相关规定。", LEDGER).passed
    hedged = score_item(PET, "文件中没有相关规定，一般按100元报销。", LEDGER)
    assert not hedged.passed and not hedged.abstained
    assert not score_item(MEALS, "文件中没有相关规定。", LEDGER).passed


def test_aggregate_defines_each_metric_with_counts() -> None:
    results = [
        score_item(MEALS, "伙食补助费每人每天100元。", LEDGER),
        score_item(STIPEND, "不超过1200元。", LEDGER),
        score_item(STIPEND, "不超过999元。", LEDGER),
        score_item(PET, "文件中没有相关规定。", LEDGER),
    ]
    metrics = aggregate(results)
    assert metrics["n"] == 4 and metrics["n_numeric"] == 3
    assert metrics["numeric_accuracy"] == pytest.approx(2 / 3)
    assert metrics["accuracy"] == pytest.approx(3 / 4)
    assert metrics["invented_number_rate"] == pytest.approx(1 / 4)
    assert metrics["abstention_accuracy"] == 1.0
    assert metrics["per_type"]["numeric"]["n"] == 3


def test_question_file_format_and_errors(tmp_path: Path) -> None:
    good = tmp_path / "q.jsonl"
    good.write_text(
        json.dumps(
            {"question": "伙食补助费每天多少？", "numbers": ["100"], "type": "numeric"}, ensure_ascii=False
        )
        + "\n"
        + json.dumps({"question": "宠物费能报吗？", "type": "unanswerable"}, ensure_ascii=False)
        + "\n",
        encoding="utf-8",
    )
    items = load_questions(good)
    assert [i.type for i in items] == ["numeric", "unanswerable"] and items[0].id
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "x"}\n{"numbers": ["1"]}\n', encoding="utf-8")
    with pytest.raises(QuestionFileError, match=r"bad.jsonl:2: an object with a non-empty 'question'"):
        load_questions(bad)
    bad.write_text('{"question": "多少？", "numbers": ["很多"]}\n', encoding="utf-8")
    with pytest.raises(QuestionFileError, match="is not a number"):
        load_questions(bad)


def _results(passes: list[bool]) -> list:
    items = [
        EvalItem(f"i{k}", f"伙食补助费问题{k}？", numbers=("100",), type="numeric")
        for k in range(len(passes))
    ]
    return [
        score_item(item, "每天100元。" if ok else "每天150元。", LEDGER)
        for item, ok in zip(items, passes, strict=True)
    ]


def test_a_worse_challenger_is_refused_and_the_regressions_named() -> None:
    champion = _results([True] * 16 + [False] * 4)  # 80%
    challenger = _results([True] * 10 + [False] * 10)  # 50%: the prototype's kind of drop
    decision = compare(champion, challenger)
    assert not decision.promote
    assert any("accuracy may be worse" in r for r in decision.reasons)
    assert decision.regressed == [f"i{k}" for k in range(10, 16)]


def test_a_better_challenger_is_promoted_and_a_tiny_noisy_set_decides_nothing_rashly() -> None:
    champion = _results([True] * 10 + [False] * 30)
    better = _results([True] * 38 + [False] * 2)
    decision = compare(champion, better)
    assert decision.promote and decision.fixed and not decision.regressed
    # Twelve cases, 40% -> 25%: not obviously significant, but not shown to be no worse either: refused.
    assert not compare(_results([True] * 5 + [False] * 7), _results([True] * 3 + [False] * 9)).promote


def test_mcnemar_is_symmetric_and_one_for_identical_models() -> None:
    a = [True, True, False, False, True]
    assert mcnemar_p(a, a) == 1.0
    assert mcnemar_p([True] * 10, [False] * 10) == pytest.approx(2 / 2**10)


def test_evaluate_batches_the_questions() -> None:
    seen: list[int] = []

    def answer_batch(questions: list[str]) -> list[str]:
        seen.append(len(questions))
        return ["每天100元。"] * len(questions)

    metrics, results = evaluate([MEALS] * 5, answer_batch, LEDGER, batch_size=2)
    assert seen == [2, 2, 1] and metrics["numeric_accuracy"] == 1.0 and len(results) == 5
