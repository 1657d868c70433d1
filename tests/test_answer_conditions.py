"""Tiered rules and enumerating sentences: the right tier for the amount a question states, and a right
answer that states the tier's bracket with its rate is shown, not replaced.

The rules text and the questions were written by hand for these tests (an invented 课题管理费 schedule, not a
corpus or sample rule).
"""

from __future__ import annotations

from decimal import Decimal

import duckdb
import pytest

from tasks.answer.answer import answer
from tasks.answer.fact_retrieve import (
    CONDITION_FIT,
    CONDITION_MISS,
    Condition,
    FactIndex,
    condition_factor,
    conditions_of,
    question_amounts,
)
from tasks.answer.retrieve import ChunkIndex
from tasks.distill.teachers.base import FactRef

RULES = (
    "课题经费管理细则\n"
    "\n"
    "第一章 总则\n"
    "\n"
    "第三条 课题管理费纳入学校科研发展基金，按课题经费总额分段累进提取：30万及以下的部分按照6%的比例提取；"
    "超过30万元至80万元的部分按照4%的比例提取；超过80万元的部分按照1%的比例提取。\n"
    "\n"
    "第四条 课题组成员的专家咨询费标准为每人每天600元。\n"
    "\n"
    "第五条 课题结题后结余经费由学校统筹使用，3年后仍未使用的，按规定收回。\n"
)
RULES_FILE = ("课题经费管理细则.txt", RULES)


def _fact(context: str, raw: str) -> FactRef:
    return FactRef("f", "0", None, "%", raw, "", "", context, 0, 0)


def test_a_tiers_bracket_is_read_from_its_clause() -> None:
    assert conditions_of(_fact("30万及以下的部分按照6%的比例提取", "6%")) == (
        Condition(None, Decimal("300000"), "元"),
    )
    assert conditions_of(_fact("超过30万元至80万元的部分按照4%的比例提取", "4%")) == (
        Condition(Decimal("300000"), Decimal("800000"), "元"),
    )
    assert conditions_of(_fact("超过80万元的部分按照1%的比例提取", "1%")) == (
        Condition(Decimal("800000"), None, "元"),
    )
    assert conditions_of(_fact("每人每天不超过600元", "600元")) == ()  # a plain limit is no bracket


def test_question_amounts_and_how_a_bracket_fits_them() -> None:
    [(value, unit)] = question_amounts("我的课题一共才25万，管理费提几个点？")
    assert (value, unit) == (Decimal("250000"), "元")
    [(just_above, _)] = question_amounts("超过30万的那部分按几个点？")
    assert just_above > Decimal("300000")
    low, middle = (
        Condition(None, Decimal("300000"), "元"),
        Condition(Decimal("300000"), Decimal("800000"), "元"),
    )
    assert condition_factor([low], [(value, unit)]) == CONDITION_FIT
    assert condition_factor([middle], [(value, unit)]) == CONDITION_MISS
    assert condition_factor([middle], [(just_above, "元")]) == CONDITION_FIT
    # an amount of another kind (days) neither helps nor hurts a bracket on money
    assert condition_factor([low], [(Decimal("3"), "天")]) == 1.0


@pytest.mark.parametrize(
    ("question", "rate"),
    [
        ("我的课题经费总共才25万，学校提管理费按几个点提？", "6"),
        ("课题经费有60万，超过30万的那部分管理费按多少比例提取？", "4"),
        ("课题到账经费120万，其中80万以上那一段提取比例是多少？", "1"),
    ],
)
def test_the_tier_holding_the_stated_amount_ranks_first(
    rules: duckdb.DuckDBPyConnection, question: str, rate: str
) -> None:
    [top, *_] = FactIndex.build(rules).search(question, k=3)
    assert top.fact.value == rate and top.fact.unit == "%"


def test_a_right_answer_stating_the_bracket_is_shown(rules: duckdb.DuckDBPyConnection) -> None:
    """The answer names the tier's bracket (30万) with the rate: both numbers stand in the rule's sentence, whose
    topic (课题管理费, before the colon) is what the question asks about, though the ledger's subject is poor."""
    question = "我的课题经费总共才25万，学校提管理费按几个点提？"
    draft = "课题经费30万及以下的部分按照6%的比例提取管理费。"
    result = answer(question, lambda *a, **k: draft, ChunkIndex.build(rules), rules)
    assert result.guard_action == "passed", result.notes
    assert result.text == draft
    wrong = answer(question, lambda *a, **k: "按照4%的比例提取。", ChunkIndex.build(rules), rules)
    assert wrong.guard_action == "quoted_evidence" and "6%" in wrong.text and "4%" not in wrong.text


def test_a_question_about_nothing_the_rules_say_still_abstains(rules: duckdb.DuckDBPyConnection) -> None:
    abstain = "文件中没有相关规定。"
    result = answer("出差打车的钱一天最多能报多少？", lambda *a, **k: abstain, ChunkIndex.build(rules), rules)
    assert result.text == abstain


def test_sharing_the_topics_words_is_not_enough_for_another_question(
    rules: duckdb.DuckDBPyConnection,
) -> None:
    """ "课题经费" is in the tiered sentence's lead, but the question asks about scholarships: no tier is an answer."""
    abstain = "文件中没有相关规定。"
    question = "课题经费能不能给学生发奖学金？每人每年最多发多少？"
    result = answer(question, lambda *a, **k: abstain, ChunkIndex.build(rules), rules)
    assert result.text == abstain, result.notes
