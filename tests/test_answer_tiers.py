"""A rule that sets one rate per tier in a single sentence, and a rate given as a range.

The rules text was written by hand for these tests (an invented 培训与咨询 rule, not a corpus or sample rule);
the questions too.
"""

from __future__ import annotations

import duckdb

from tasks.answer.answer import answer
from tasks.answer.prompts import EVIDENCE_LEAD
from tasks.answer.retrieve import ChunkIndex
from tests.rules_text import answer_drafted

RULES = (
    "培训与咨询经费管理规定\n"
    "\n"
    "第一章 讲课费\n"
    "\n"
    "第六条 讲课费（税后）按以下标准执行：副高级职称人员每学时不超过400元，正高级职称人员每学时不超过800元，"
    "院士每学时不超过1200元。\n"
    "\n"
    "第二章 咨询费\n"
    "\n"
    "第九条 以会议形式组织的咨询，高级专业技术职称人员的咨询费为每人每天1200-2000元，"
    "其他专业人员的咨询费为每人每天600-1200元。\n"
)
RULES_FILE = ("培训与咨询经费管理规定.txt", RULES)

LECTURE = "请了外校一位教授来讲课，一个学时最多能给多少讲课费？"
CONSULTING = "开评审会请了几位外单位的教授，开一天会，每人给多少咨询费？"


def test_the_tier_the_question_names_answers_not_another_tier_of_the_same_sentence(
    rules: duckdb.DuckDBPyConnection,
) -> None:
    # A 教授 is 正高级职称: the 院士 rate of the same sentence is another tier's, however well it is ranked.
    result = answer_drafted(rules, LECTURE, "一个学时最多能给1200元讲课费。")
    assert result.guard_action != "passed", result.notes
    assert "800元" in result.text and "1200" not in result.text, result.text


def test_the_named_tier_s_rate_passes(rules: duckdb.DuckDBPyConnection) -> None:
    result = answer_drafted(rules, LECTURE, "一个学时最多能给800元讲课费。")
    assert result.guard_action == "passed", result.notes


def test_the_named_tier_s_number_without_its_unit_is_no_answer(rules: duckdb.DuckDBPyConnection) -> None:
    # "800" alone could be anything (a cap of 800 what?): the guard wants the rule's 800元.
    result = answer_drafted(rules, LECTURE, "讲课费标准可以上浮不超过800。")
    assert result.guard_action != "passed", result.notes
    assert "没有写单位" in result.notes[0], result.notes
    assert "800元" in result.text, result.text


def test_a_range_stated_by_one_end_is_not_the_range(rules: duckdb.DuckDBPyConnection) -> None:
    # 1200 is one end of the 教授's range and the other end of the other tier's: neither answer.
    result = answer_drafted(rules, CONSULTING, "每人每天给1200元咨询费。")
    assert result.guard_action != "passed", result.notes
    assert "1200-2000元" in result.text, result.text


def test_the_whole_range_passes(rules: duckdb.DuckDBPyConnection) -> None:
    result = answer_drafted(rules, CONSULTING, "每人每天给1200-2000元咨询费。")
    assert result.guard_action == "passed", result.notes


def test_the_best_fitting_sentence_leads_the_first_prompt(rules: duckdb.DuckDBPyConnection) -> None:
    # The model reads the sentence that holds the answer first, before the three retrieved excerpts.
    prompts: list[str] = []

    def model(messages: list[dict[str, str]], *args: object, **kwargs: object) -> str:
        prompts.append(messages[1]["content"])
        return "一个学时最多能给800元讲课费。"

    result = answer(LECTURE, model, ChunkIndex.build(rules), rules)
    assert result.guard_action == "passed", result.notes
    [prompt] = prompts
    lead, _, excerpts = prompt.partition("规定原文：\n【")
    assert lead.startswith(EVIDENCE_LEAD) and "正高级职称人员每学时不超过800元" in lead, lead
    assert excerpts.startswith("1】") and excerpts.endswith(LECTURE)
    # No fact fits a question the rules do not answer: no lead, the excerpts alone.
    prompts.clear()
    answer("出国参加学术会议的注册费怎么报销？", model, ChunkIndex.build(rules), rules)
    assert prompts and all(not p.startswith(EVIDENCE_LEAD) for p in prompts), prompts
