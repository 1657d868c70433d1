"""A rule for a place the question names answers it, not the general rule beside it.

The lexicon's regions are provinces and the cities in them; a rule may name its own districts or counties
("到本市东港区、西湖县出差的"). Where the best-fitting fact names a place the question names, the general rate
is no near-equal: a draft stating it is refused and the place's rule is shown. The rules text and the
questions were written by hand for these tests (an invented 差旅费办法, not a corpus or sample rule).
"""

from __future__ import annotations

import duckdb

from tests.rules_text import answer_drafted

RULES = (
    "差旅费办法\n"
    "\n"
    "第一条 市内交通费按出差自然（日历）天数计算，每人每天补助80元。其中，东港区、西湖县每人每天补助40元。\n"
    "\n"
    "第二条 住宿费每人每天不超过450元。\n"
)
RULES_FILE = ("差旅费办法.txt", RULES)
GENERAL = "市内交通费按出差自然（日历）天数计算，每人每天补助80元。"


def test_the_general_rate_does_not_answer_for_a_district_the_rules_name(
    rules: duckdb.DuckDBPyConnection,
) -> None:
    result = answer_drafted(rules, "我要去西湖县跑一趟公事，在那边的市内交通补助一天按多少钱算？", GENERAL)
    assert result.guard_action != "passed", result.notes
    assert "40元" in result.text and "80元" not in result.text, result.text


def test_the_districts_rate_passes_for_it(rules: duckdb.DuckDBPyConnection) -> None:
    draft = "东港区、西湖县每人每天补助40元。"
    result = answer_drafted(rules, "去东港区办事，市内交通补助一天多少钱？", draft)
    assert result.guard_action == "passed", result.notes


def test_the_general_rate_passes_where_no_named_place_is_asked(rules: duckdb.DuckDBPyConnection) -> None:
    result = answer_drafted(rules, "去杭州出差，在当地打车一天能补多少？", GENERAL)
    assert result.guard_action == "passed", result.notes
    assert result.text == GENERAL
