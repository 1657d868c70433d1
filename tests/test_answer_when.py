"""Questions asking for a time or a date ("最晚几点", "拖到什么时候"), and a rule's clause after a semicolon.

The ledger holds amounts, not times of day or dates, so a question asking for one is answered from the rule
sentence that writes it, quoted with its source; a draft that writes no time (an abstention included) does not
answer it. A fact whose sentence begins after a semicolon ("3年后仍未使用的，按规定收回") fits through the
sentence's first half. The rules text and the questions were written by hand for these tests (an invented
资金结算办法, not a corpus or sample rule).
"""

from __future__ import annotations

import duckdb

from tasks.answer.answer import answer, asks_when, whole_sentence
from tasks.answer.fact_retrieve import FactIndex
from tasks.answer.prompts import EVIDENCE_LEAD
from tasks.answer.retrieve import ChunkIndex
from tests.rules_text import answer_drafted

RULES = (
    "资金结算办法\n"
    "\n"
    "第一章 报销\n"
    "\n"
    "第六条 财务处受理报销的时间为每周一至周四，报销业务截止\n"
    "下午3:30，节假日除外。\n"
    "\n"
    "第七条 借款应在业务结束后的20日内办理冲账，确有特殊情况需书面说明，最迟不得超过当年的12月20日。\n"
    "\n"
    "第八条 项目完成验收后，结余资金按规定由学校统筹使用；3年后仍未使用的，按规定收回。\n"
    "\n"
    "第九条 差旅住宿费每人每天不超过450元。\n"
    "\n"
    "第十条 每季度初1-3个工作日为上季度结账时间，暂停办理报销业务。\n"
)
RULES_FILE = ("资金结算办法.txt", RULES)
ABSTAIN = "文件中没有相关规定。"


def test_which_questions_ask_for_a_time_or_a_date() -> None:
    assert asks_when("下午去报销，最晚几点之前要到？")
    assert asks_when("借款最晚能拖到什么时候？")
    assert asks_when("每年几月几号之前要结账？")
    assert not asks_when("住宿费每天最多报多少？")
    assert not asks_when("借款多少天内要冲账？")  # a duration is an amount the ledger holds


def test_an_abstaining_draft_is_replaced_by_the_sentence_writing_the_time(
    rules: duckdb.DuckDBPyConnection,
) -> None:
    result = answer_drafted(rules, "下午去财务处报销，最晚几点之前得到？", ABSTAIN)
    assert result.guard_action == "quoted_evidence", result.notes
    assert "3:30" in result.text and "第六条" in result.text and "资金结算办法" in result.text
    assert result.text.count("截止") == 1  # the wrapped line is one sentence, quoted once
    assert any("时间" in note for note in result.notes)


def test_the_quoted_date_leaves_out_another_rules_amount(rules: duckdb.DuckDBPyConnection) -> None:
    result = answer_drafted(rules, "借款有特殊情况一直冲不了账，最晚能拖到什么时候？", ABSTAIN)
    assert result.guard_action == "quoted_evidence", result.notes
    assert "12月20日" in result.text
    assert "20日内" not in result.text  # the clause with the 20-day rule is another number, left out


def test_a_draft_stating_the_time_is_shown(rules: duckdb.DuckDBPyConnection) -> None:
    draft = "报销业务截止到下午3:30，节假日除外。"
    result = answer_drafted(rules, "下午去财务处报销，最晚几点之前得到？", draft)
    assert result.guard_action == "passed", result.notes
    assert result.text == draft


def test_a_date_does_not_answer_a_question_asking_how_many_days(rules: duckdb.DuckDBPyConnection) -> None:
    # The deadline in days is the ledger's 20日; the draft gives the clause with the latest date instead.
    result = answer_drafted(
        rules,
        "借了钱，业务办完以后多少天之内得来冲账？",
        "确有特殊情况需书面说明，最迟不得超过当年的12月20日。",
    )
    assert result.guard_action != "passed", result.notes
    assert "20日内" in result.text, result.text


def test_a_time_question_the_rules_do_not_answer_still_abstains(rules: duckdb.DuckDBPyConnection) -> None:
    result = answer_drafted(rules, "工资每个月几号发到卡上？", ABSTAIN)
    assert result.text == ABSTAIN, result.notes


def test_a_clause_after_a_semicolon_fits_through_its_sentence(rules: duckdb.DuckDBPyConnection) -> None:
    index = FactIndex.build(rules)
    question = "项目验收后剩下的结余资金学校统筹用，一直没用掉的话过几年会被收回？"
    [top, *_] = index.search(question, k=3)
    assert top.fact.value == "3"
    sentence = whole_sentence(top.fact, top.chunk)
    assert sentence.startswith("项目完成验收后") and sentence.endswith("按规定收回。")
    result = answer_drafted(rules, question, ABSTAIN)
    assert result.guard_action == "quoted_evidence", result.notes
    assert "3年" in result.text


def test_the_unit_a_question_asks_in_does_not_make_a_fact_fit(rules: duckdb.DuckDBPyConnection) -> None:
    """ "几个工作日" asks for a count of 工作日; the rule counting 工作日 of the closing period is about something
    else: the abstention stands."""
    result = answer_drafted(rules, "报销单交上去以后，一般要几个工作日钱才能打到卡上？", ABSTAIN)
    assert result.text == ABSTAIN, result.notes


def _first_prompt(con: duckdb.DuckDBPyConnection, question: str) -> str:
    prompts: list[str] = []

    def model(messages: list[dict[str, str]], *args: object, **kwargs: object) -> str:
        prompts.append(messages[1]["content"])
        return ABSTAIN

    answer(question, model, ChunkIndex.build(con), con)
    return prompts[0]


def test_a_time_questions_prompt_is_led_by_the_clause_writing_the_time(
    rules: duckdb.DuckDBPyConnection,
) -> None:
    lead = _first_prompt(rules, "借款有特殊情况一直冲不了账，最晚能拖到什么时候？").split("规定原文：")[0]
    assert lead.startswith(EVIDENCE_LEAD), lead
    first = lead.split("\n")[1]
    assert "12月20日" in first and "20日内" not in first, lead  # the time, not the other rule's 20 days


def test_an_amount_questions_lead_states_one_number_a_line(rules: duckdb.DuckDBPyConnection) -> None:
    # The 20-day rule and the latest date share a sentence: the line the model reads states the days alone.
    lead = _first_prompt(rules, "借了钱，业务办完以后多少天之内得来冲账？").split("规定原文：")[0]
    lines = [line.strip("“”") for line in lead.split("\n")[1:] if line.strip()]
    assert lines and "20日内" in lines[0] and "12月20日" not in lines[0], lead
    assert "12月20日" not in lead  # no time was asked for
