"""Metric functions on hand-written answers, question files, and the champion/challenger decision."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from tasks.answer.prompts import CONTEXT_INSTRUCTION, NO_EVIDENCE, RULES_LABEL, SYSTEM_PROMPT
from tasks.answer.reply import Reply, own_text
from tasks.evaluate.evaluate import (
    EvalItem,
    LedgerView,
    QuestionFileError,
    aggregate,
    check_answer,
    compare,
    evaluate,
    fmt,
    judged_items,
    load_questions,
    mcnemar_p,
    question_set,
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
    item = EvalItem("q", "出差超过15天怎么算？", type="text")
    assert check_answer(item, "超过15天的部分按70%执行", LedgerView(frozenset(LEDGER)))[2] == ["70%"]


def test_the_item_document_scopes_the_ledger() -> None:
    item = EvalItem("d1", "伙食补助费每天多少？", numbers=("100",), type="numeric", doc="a.pdf")
    view = LedgerView.build([("a.pdf", "100", None), ("b.pdf", "30000", None)], {})
    assert score_item(item, "每天100元，另有30000元补贴", view).invented == ["30000元"]


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
    # Symmetric: swapping the models gives the same p, for discordant counts (b, c) on either side and with
    # concordant items (which carry no information) mixed in.
    for broke, fixed, both, neither in [(1, 5, 0, 0), (5, 1, 3, 2), (0, 4, 1, 0), (2, 3, 4, 4), (7, 0, 0, 9)]:
        champion = [True] * broke + [False] * fixed + [True] * both + [False] * neither
        challenger = [False] * broke + [True] * fixed + [True] * both + [False] * neither
        assert champion != challenger
        p = mcnemar_p(champion, challenger)
        assert mcnemar_p(challenger, champion) == p, (broke, fixed)
        assert p == mcnemar_p(champion[: broke + fixed], challenger[: broke + fixed])  # concordant: no effect
    assert mcnemar_p([True, False] * 3, [False, True] * 3) == 1.0  # as often broken as fixed
    assert mcnemar_p([True] + [False] * 5, [False] + [True] * 5) == pytest.approx(14 / 64)  # b=1, c=5


def test_evaluate_batches_the_questions() -> None:
    seen: list[int] = []

    def answer_batch(questions: list[str]) -> list[str]:
        seen.append(len(questions))
        return ["每天100元。"] * len(questions)

    result = evaluate([MEALS] * 5, answer_batch, LEDGER, batch_size=2)
    assert seen == [2, 2, 1] and len(result.model) == 5
    assert result.metrics["model"]["numeric_accuracy"] == 1.0
    assert result.metrics["guard_actions"] == {"unguarded": 5}


# --- metrics that cannot be gamed ---------------------------------------------------------------------------

TIERS = EvalItem(
    "t1",
    "我是讲师，去北京出差住一晚能报多少？",
    answer="中级职称人员住宿费每人每天不超过400元。",
    numbers=("400",),
    type="numeric",
    doc="rules.pdf",
)
TIER_LEDGER = LedgerView.build(
    [("rules.pdf", v, None) for v in ("600", "500", "400", "100", "80", "50000")],
    {"rules.pdf": "第一条 住宿费标准。第二条 伙食补助费。第三条 2024年1月1日起施行。"},
)


def test_an_answer_listing_every_tier_is_wrong() -> None:
    listing = score_item(TIERS, "高级职称600元，副高500元，中级400元。", TIER_LEDGER)
    assert not listing.numbers_ok and not listing.passed
    assert listing.other_subject == ["600元", "500元"] and listing.invented == []
    assert score_item(TIERS, "讲师住宿每天不超过400元。", TIER_LEDGER).passed


def test_a_range_counts_only_as_the_same_range() -> None:
    assert not score_item(TIERS, "住宿费400-999元。", TIER_LEDGER).numbers_ok
    ranged = EvalItem("r", "会议费标准？", numbers=("400-600",), type="numeric", doc="rules.pdf")
    assert score_item(ranged, "每人400-600元。", TIER_LEDGER).numbers_ok
    assert not score_item(ranged, "每人400元。", TIER_LEDGER).numbers_ok


def test_units_must_agree_when_both_sides_carry_one() -> None:
    item = EvalItem(
        "w",
        "多大的合同要招标？",
        answer="5万元以上的合同须招标。",
        numbers=("5",),
        type="numeric",
        doc="rules.pdf",
    )
    assert score_item(item, "合同金额5万元以上须招标。", TIER_LEDGER).numbers_ok
    assert score_item(item, "50000元以上。", TIER_LEDGER).numbers_ok
    five_yuan = score_item(item, "5元以上。", TIER_LEDGER)
    assert not five_yuan.numbers_ok and five_yuan.invented == ["5元"]
    bare = EvalItem("b", "多大的合同要招标？", numbers=("5",), type="numeric")  # no reference: digits only
    assert (
        states_number("5万元", "5")
        and score_item(bare, "5万元以上", LedgerView(frozenset({Decimal(50000)}))).numbers_ok
    )


def test_an_echoed_prompt_is_no_answer_and_no_abstention() -> None:
    parrot = SYSTEM_PROMPT + CONTEXT_INSTRUCTION
    assert own_text(parrot, PET.question) == ""
    assert own_text(SYSTEM_PROMPT + "回答", PET.question) == ""  # a copy cut short by max tokens: a scrap
    assert own_text("可以。", PET.question) == "可以。"  # a short answer of its own stays
    # The retry prompt echoed down to its rules label, too short for a copied run, is no answer either (seen
    # passing from the untuned base on the corpus: the label was all "its own" text).
    retry_echo = f"{SYSTEM_PROMPT}{CONTEXT_INSTRUCTION}\n\n{NO_EVIDENCE}\n\n{RULES_LABEL}\n【"
    assert own_text(retry_echo, PET.question) == ""
    echoed = score_item(PET, parrot, LEDGER)
    assert echoed.echoed and not echoed.abstained and not echoed.passed
    assert not score_item(PET, "宠物托运费可以报销吗？", LEDGER).passed  # the question echoed back
    assert score_item(PET, "宠物托运费可以报销吗？文件中没有相关规定。", LEDGER).abstained
    assert score_item(PET, "“文件中没有相关规定。”", LEDGER).passed
    assert score_item(PET, "没有明确规定。", LEDGER).passed
    # restating the question's subject before the number is an answer, not an echo
    restated = score_item(MEALS, "出差伙食补助费每人每天100元。", LEDGER)
    assert restated.passed and not restated.echoed


def test_keywords_copied_from_the_question_or_prompt_are_no_hit() -> None:
    item = EvalItem("k", "报销单据需要谁审批？", keywords=("规章制度",), type="text")
    assert score_item(item, SYSTEM_PROMPT, LEDGER).keyword_share == 0.0
    assert score_item(item, "按学校规章制度由处长签字。", LEDGER).keyword_share == 1.0


def test_dates_articles_and_long_digit_strings_are_checked_for_invention() -> None:
    item = EvalItem("a", "住宿费标准在哪一条？", type="text", doc="rules.pdf")
    assert check_answer(item, "见第一条，2024年1月1日起施行。", TIER_LEDGER)[2] == []
    invented = check_answer(item, "见第九十九条，2025年3月1日起施行，电话12345678。", TIER_LEDGER)[2]
    assert invented == ["第九十九条", "2025年3月1日", "12345678"]


def test_metrics_without_items_are_n_a() -> None:
    metrics = aggregate(
        [score_item(MEALS.__class__("x", "多少？", numbers=("100",), type="numeric"), "100元", LEDGER)]
    )
    assert metrics["keyword_coverage"] is None and metrics["abstention_accuracy"] is None
    assert fmt(metrics["keyword_coverage"]) == "n/a" and fmt(0.5) == "50%"


def test_model_and_shown_families_tell_the_model_from_the_fallback() -> None:
    quoted = Reply(
        "伙食补助费每人每天150元。", "根据规定：“伙食补助费每人每天100元。”", "quoted_evidence", "150元"
    )
    kept = Reply(
        "伙食补助费每人每天100元。", "伙食补助费每人每天100元。", "passed", "伙食补助费每人每天100元。"
    )
    result = evaluate([MEALS, MEALS], lambda qs: [quoted, kept], LEDGER)
    assert [r.passed for r in result.model] == [False, True]
    assert [r.passed for r in result.shown] == [True, True]
    assert result.model[0].invented == ["150元"] and result.model[0].replaced
    assert (
        result.metrics["model"]["numeric_accuracy"] == 0.5
        and result.metrics["shown"]["numeric_accuracy"] == 1.0
    )
    assert result.metrics["guard_actions"] == {"quoted_evidence": 1, "passed": 1}
    # a guard abstention on an unanswerable item is not the model abstaining
    abstained = evaluate([PET], lambda qs: [Reply("", "文件中没有相关规定。", "abstained")], LEDGER)
    assert not abstained.model[0].passed and abstained.shown[0].passed


def test_question_sets_and_the_items_each_mode_is_judged_on() -> None:
    recall = EvalItem("r", "q1", source="held_out:abc", split="recall")
    reading = EvalItem("g", "q2", source="held_out:abc", split="reading")
    hand = EvalItem("h", "q3", source="file:sample_questions.jsonl")
    assert [question_set(i) for i in (recall, reading, hand)] == [
        "golden recall",
        "golden reading",
        "file:sample_questions.jsonl",
    ]
    assert judged_items([recall, reading, hand], "closed_book") == [recall, hand]
    assert judged_items([recall, reading, hand], "grounded") == [reading, hand]


def test_a_range_states_two_expected_ends_and_a_reference_condition_is_no_other_subject() -> None:
    both = EvalItem(
        "c", "专家咨询费一天多少？", answer="标准为400-600元/人天。", numbers=("400", "600"), type="numeric"
    )
    assert score_item(both, "每人每天400-600元。", TIER_LEDGER).numbers_ok
    assert not score_item(both, "每人每天400-500元。", TIER_LEDGER).numbers_ok
    condition = EvalItem(
        "d",
        "管理费按几个点提？",
        answer="经费5万元及以下的部分按100%核定。",
        numbers=("100",),
        type="numeric",
    )
    assert score_item(condition, "5万元及以下的部分按100%。", TIER_LEDGER).numbers_ok
    assert not score_item(condition, "按100%，另外600元。", TIER_LEDGER).numbers_ok


@pytest.mark.parametrize(
    ("questions", "documents"),
    [
        (Path(__file__).parents[1] / "examples" / "sample_questions.jsonl", ["examples/sample_rules.pdf"]),
        (
            Path(__file__).parents[2] / "shared" / "questions" / "dev_questions.jsonl",
            [
                f"../shared/corpus/text/univ_sdvcst_{n}.txt"
                for n in ("travel", "reimbursement", "research_funds")
            ],
        ),
    ],
    ids=["sample", "corpus"],
)
def test_hand_phrased_reference_answers_score_right_and_the_echo_scores_nothing(
    con, settings, questions: Path, documents: list[str]
) -> None:
    from tasks.evaluate.evaluate import ledger_view
    from tasks.ingest.documents import ingest_file

    root = Path(__file__).parents[1]
    for name in documents:
        ingest_file(con, root / name, settings)
    view = ledger_view(con)
    items = load_questions(questions)
    wrong = [i.id for i in items if not score_item(i, i.answer, view).passed]
    assert wrong == []
    assert not any(score_item(i, SYSTEM_PROMPT + CONTEXT_INSTRUCTION, view).passed for i in items)
