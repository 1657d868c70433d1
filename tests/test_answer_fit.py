"""Which rule fact an answer may be composed from, when the question's words and the rule's differ.

The rules text was written by hand for these tests (an invented 公务接待 and 差旅 rule, not a corpus or sample
rule); the questions too.
"""

from __future__ import annotations

import duckdb

from tasks.answer.answer import ABSTAIN_TEXT
from tests.rules_text import answer_drafted

RULES = (
    "接待与差旅管理规定\n"
    "\n"
    "第一章 公务接待\n"
    "\n"
    "第九条 接待对象在8人以内的，陪餐人数不超过2人；接待对象超过8人的，陪餐人数不超过接待对象人数的四分之一。\n"
    "\n"
    "第十条 工作餐每人每餐不超过60元。\n"
    "\n"
    "第二章 差旅\n"
    "\n"
    "第十五条 伙食补助费按出差自然天数实行定额包干，每人每天90元。\n"
    "\n"
    "第十六条 讲课时间以半天计算的，最多按照4学时计算。\n"
)
RULES_FILE = ("接待与差旅管理规定.txt", RULES)


def test_a_rule_term_and_the_unit_asked_for_together_make_a_fact_fit(
    rules: duckdb.DuckDBPyConnection,
) -> None:
    # "陪着吃饭" is the lexicon's 陪吃 -> 陪餐 (its subject: 陪餐人数) and "几个人" asks for a count of 人: two
    # signals that agree, though the question shares a single word pair with the rule.
    result = answer_drafted(rules, "来了5位客人，我们这边最多能去几个人陪着吃饭？", ABSTAIN_TEXT)
    assert result.guard_action == "quoted_evidence", result.notes
    assert "2人" in result.text and "第九条" in result.text


def test_the_rule_term_alone_does_not_make_a_fact_of_another_unit_fit(
    rules: duckdb.DuckDBPyConnection,
) -> None:
    # "陪着吃" stands for 陪餐 here too, but the question asks for a sum of money: the 陪餐人数 count is not
    # its answer, whatever the shared term.
    result = answer_drafted(rules, "陪着吃的人自己那份能报多少钱？", ABSTAIN_TEXT)
    assert "2人" not in result.text, result.notes
