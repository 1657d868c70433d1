"""Drafts a weakly trained model writes, which the guard must not show: a number said again in a loop, noise
words in another script, and the exception for named places given as the general rule.

Seen with a 30-step fine-tune of Gemma 3 270M: "出差伙食补助费每人每天120元。iatrics ativement 出了差旅伙食补助费
每人每天120元。 mendatang …" was shown as it was, for a question naming no place. The rules text here was
written by hand for these tests (an invented 差旅费 rule, not a corpus or sample rule).
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from runtime.config import Settings
from tasks.answer.answer import ABSTAIN_TEXT, asks_for_number
from tasks.answer.retrieve import ChunkIndex
from tasks.answer.stop import repeated_statement, stray_words
from tests.rules_text import answer_drafted, ingest_rules

RULES = (
    "差旅费报销办法\n"
    "\n"
    "第一章 伙食补助\n"
    "\n"
    "第五条 伙食补助费按出差自然天数实行定额包干，每人每天90元。\n"
    "\n"
    "第六条 赴西藏、青海、新疆等地区出差的，伙食补助费为每人每天110元。\n"
    "\n"
    "第七条 住宿费标准：一类人员每人每天不超过800元，二类人员每人每天不超过500元。\n"
)
RULES_FILE = ("差旅费报销办法.txt", RULES)
QUESTION = "出差的话，伙食补助费每人每天多少钱？"


def test_a_numbered_statement_said_twice_is_a_loop() -> None:
    looped = "出差伙食补助费每人每天120元。iatrics 出了差旅伙食补助费每人每天120元。"
    assert repeated_statement(looped) is not None
    assert repeated_statement("伙食补助费每人每天90元。") is None
    # a whole statement said twice, however short (seen from a constrained retry: "【25元】\n【25元】")
    assert repeated_statement("【90元】\n【90元】") == "90元"
    assert repeated_statement("每人每天90元；超过部分自理。") is None
    # tiers of one rule repeat their words, not their numbers
    assert repeated_statement("一类人员每人每天不超过800元，二类人员每人每天不超过500元。") is None


def test_latin_words_the_sources_do_not_have_are_noise() -> None:
    assert stray_words("每人每天90元。iatrics ativement", "伙食补助费每人每天90元") == [
        "iatrics",
        "ativement",
    ]
    assert stray_words("按GPS里程计算。", "自驾车按GPS里程计算") == []  # a word the rules use is not noise


def test_the_exception_for_named_places_is_not_the_general_rule(rules: duckdb.DuckDBPyConnection) -> None:
    result = answer_drafted(rules, QUESTION, "伙食补助费每人每天110元。")
    assert result.guard_action != "passed", result.notes
    assert "90元" in result.text and "110" not in result.text
    lhasa = answer_drafted(rules, "去拉萨出差，伙食补助费每人每天多少钱？", "伙食补助费每人每天110元。")
    assert lhasa.guard_action == "passed", lhasa.notes


def test_a_looping_draft_with_noise_is_not_shown(rules: duckdb.DuckDBPyConnection) -> None:
    draft = "出差伙食补助费每人每天90元。iatrics\nativement\n出了差旅伙食补助费每人每天90元。 mendatang"
    result = answer_drafted(rules, QUESTION, draft)
    assert result.guard_action != "passed", result.notes
    assert "iatrics" not in result.text and "mendatang" not in result.text
    assert result.text.count("90元") == 1


def test_noise_alone_is_enough_to_refuse(rules: duckdb.DuckDBPyConnection) -> None:
    result = answer_drafted(rules, QUESTION, "伙食补助费每人每天90元。ativement")
    assert result.guard_action != "passed"
    assert any("外文" in note for note in result.notes), result.notes


def test_a_plain_right_answer_and_the_tiers_are_shown(rules: duckdb.DuckDBPyConnection) -> None:
    right = answer_drafted(rules, QUESTION, "伙食补助费每人每天90元。")
    assert right.guard_action == "passed", right.notes
    tiers = "一类人员每人每天不超过800元，二类人员每人每天不超过500元。"
    shown = answer_drafted(rules, "出差住宿费每人每天的标准是多少？", tiers)
    assert shown.guard_action == "passed", shown.notes


def test_a_question_turned_into_a_statement_is_no_answer(rules: duckdb.DuckDBPyConnection) -> None:
    # Seen with a 30-step fine-tune: "学校有通讯补贴标准。" passed for a rule the documents do not have.
    question = "我的手机话费能报吗？学校有没有通讯补贴标准？"
    result = answer_drafted(rules, question, "学校有通讯补贴标准。")
    assert result.guard_action == "abstained", result.notes
    assert any("把问题说成了陈述" in note for note in result.notes)
    # A yes without a source is no answer either; one that says what the rules say is.
    bare = answer_drafted(rules, "赴新疆出差能领伙食补助费吗？", "能领伙食补助费。")
    assert bare.guard_action != "passed" and "110元" in bare.text, bare.notes
    said = answer_drafted(rules, "赴新疆出差能领伙食补助费吗？", "能，伙食补助费为每人每天110元。")
    assert said.guard_action == "passed", said.notes


def test_a_fact_s_number_in_another_unit_is_not_that_fact(rules: duckdb.DuckDBPyConnection) -> None:
    # Seen from a 30-step challenger's constrained retry: the fact's 120元 written as "标准的120%".
    result = answer_drafted(rules, QUESTION, "伙食补助费按规定标准的90%发放。")
    assert result.guard_action != "passed", result.notes
    assert "90%" not in result.text and "90元" in result.text
    assert answer_drafted(rules, QUESTION, "伙食补助费每人每天90元。").guard_action == "passed"


def test_a_question_no_rule_answers_gets_no_other_rule_s_number(rules: duckdb.DuckDBPyConnection) -> None:
    # Seen from the all-linear 30-step fine-tune: asked about a fee these rules do not have, it wrote another
    # rule's sentence with its numbers, or an answer without one; both were shown as passed.
    asked = "出差回来想报一下体检费，每人最多能报多少？"
    for draft in (
        "伙食补助费按出差自然天数实行定额包干，每人每天90元。",
        "体检费可以报销，按照学校的规定执行。",
    ):
        result = answer_drafted(rules, asked, draft)
        assert result.guard_action == "abstained", (draft, result.guard_action, result.notes)
        assert result.text == ABSTAIN_TEXT
    # The model's own abstention is its answer, and stays the model's.
    own = answer_drafted(rules, asked, ABSTAIN_TEXT)
    assert own.guard_action == "passed" and own.text == ABSTAIN_TEXT, own.notes


def test_a_short_word_said_over_and_over_is_a_loop(rules: duckdb.DuckDBPyConnection) -> None:
    # Seen from the untuned base's constrained retry on the corpus: "【回答】" six times, shown as its answer (its
    # 回答 is now also a piece of the instructions; a word of its own said over and over is a loop).
    for word in ("【回答】", "【答复】"):
        result = answer_drafted(rules, "出差时洗衣服的费用能不能报销？", f"{word}\n" * 6)
        assert result.guard_action != "passed" and word not in result.text, result.notes
    assert any("重复" in note for note in result.notes), result.notes


def test_those_few_days_do_not_ask_how_many() -> None:
    assert not asks_for_number("出差那几天我住在亲戚家，其他费用还能报吗？")
    assert asks_for_number("报销时需要打印成纸质的吗？要打几份？")  # a measure word ending the question asks
    assert not asks_for_number("评审会请了几位外单位的教授来把关，要走什么手续？")  # some professors
    assert asks_for_number("业务办完后几天内要拿发票回来冲账？")
    assert asks_for_number("出差伙食补助一天补多少？")


def test_a_source_named_in_latin_letters_is_no_noise(
    con: duckdb.DuckDBPyConnection, settings: Settings, tmp_path: Path
) -> None:
    # A model that cites its source writes the document's name; a file named in Latin letters is no stray word.
    # (Text of its own: the same text under another name is the same document to the warehouse.)
    ingest_rules(con, settings, tmp_path, "travel_rules.txt", RULES + "\n第八条 本办法自发布之日起施行。\n")
    result = answer_drafted(con, QUESTION, "根据《travel_rules》第五条：伙食补助费每人每天90元。")
    assert result.guard_action == "passed", result.notes
    noisy = answer_drafted(con, QUESTION, "根据《travel_rules》第五条：伙食补助费每人每天90元。iatrics")
    assert noisy.guard_action != "passed", noisy.notes


MEETING_RULES = (
    "会议费管理办法\n"
    "\n"
    "第三条 会议伙食费实行定额管理，会议在院内举办的不超过60元/人天，在院外举办的不超过100元/人天。\n"
    "\n"
    "第四条 会议住宿费每人每天不超过300元。\n"
    "\n"
    "第五条 公务接待对象在10人以内的，陪餐人数不超过3人。\n"
)


def test_another_tier_s_figure_beside_the_answer_is_a_list_not_an_answer(
    con: duckdb.DuckDBPyConnection, settings: Settings, tmp_path: Path
) -> None:
    # Seen from a 30-step challenger on the corpus: asked about a meeting on campus, it copied the whole rule
    # ("院内不超过70元/人天，院外不超过110元/人天"), and the guard passed it because the right figure was in it.
    ingest_rules(con, settings, tmp_path, "会议费管理办法.txt", MEETING_RULES)
    asked = "会议在院内举办的，会议伙食费每人每天最多多少？"
    listed = answer_drafted(con, asked, "会议伙食费院内不超过60元/人天，院外不超过100元/人天。")
    assert listed.guard_action != "passed", listed.notes
    assert any("别的标准" in note for note in listed.notes), listed.notes
    assert "60元" in listed.text and "100元" not in listed.text, listed.text
    alone = answer_drafted(con, asked, "会议在院内举办的，会议伙食费不超过60元/人天。")
    assert alone.guard_action == "passed", alone.notes
    assert listed.retry == "", listed.retry  # the answer's figure was in the draft: its own clause answers
    # A figure in a condition clause is the answer's condition, not another tier. (Here the condition's fact
    # also fits the question; the sample fingerprint's reference answer "接待对象在10人以内的，陪餐人数不超过3人"
    # is the case where only the clause ending in 的 keeps it.)
    guests = "外单位来了8位客人，公务接待时陪餐人数最多几人？"
    condition = answer_drafted(con, guests, "接待对象在10人以内的，陪餐人数不超过3人。")
    assert condition.guard_action == "passed", condition.notes


TRAIN_RULES = "差旅交通办法\n\n第九条 出差人员在晚9时至次日晨6时期间乘车时间5小时以上的，可以购买软座。\n"


def test_a_clock_time_the_sources_do_not_write_is_not_shown(
    con: duckdb.DuckDBPyConnection, settings: Settings, tmp_path: Path
) -> None:
    # Seen from a constrained retry allowed only the rule's 6: "出差人员在晚 6时至次日晨 6小时以上…" was shown.
    ingest_rules(con, settings, tmp_path, "差旅交通办法.txt", TRAIN_RULES)
    asked = "出差人员夜里乘车时间要几小时以上才可以购买软座？"
    wrong = answer_drafted(con, asked, "在晚5时至次日晨5时期间乘车时间5小时以上的，可以购买软座。")
    assert wrong.guard_action != "passed", wrong.notes
    assert any("5时" in note and "没有" in note for note in wrong.notes), wrong.notes
    assert "晚5时" not in wrong.text
    right = answer_drafted(con, asked, "在晚9时至次日晨6时期间乘车时间5小时以上的，可以购买软座。")
    assert right.guard_action == "passed", right.notes


RESEARCH_RULES = (
    "科研经费管理办法\n"
    "\n"
    "第十条 使用科研经费购置单价在20万元以上的仪器设备，应当进行购置论证。\n"
    "\n"
    "第十一条 个人因公借款，单笔现金借款不超过3000元。\n"
)


def test_an_expense_the_rules_never_write_gets_only_an_abstention(
    con: duckdb.DuckDBPyConnection, settings: Settings, tmp_path: Path
) -> None:
    # A question about an expense these rules do not name shares 科研经费 with the equipment rule: the guard must
    # not quote that rule, nor pass "可以报销", for a fee the rules never mention.
    ingest_rules(con, settings, tmp_path, "科研经费管理办法.txt", RESEARCH_RULES)
    asked = "我交的学会会员费能从科研经费里报销吗？"
    assert ChunkIndex.build(con).unwritten_expenses(asked) == ["会员费"]
    for draft in ("可以报销。", "使用科研经费购置单价在20万元以上的仪器设备，应当进行购置论证。"):
        result = answer_drafted(con, asked, draft)
        assert result.guard_action == "abstained", (draft, result.guard_action, result.notes)
        assert result.text == ABSTAIN_TEXT and result.retry == ""
        assert any("会员费" in note for note in result.notes), result.notes
    own = answer_drafted(con, asked, ABSTAIN_TEXT)
    assert own.guard_action == "passed" and own.text == ABSTAIN_TEXT, own.notes
    # A question stating a sum may be answered by a rule by amount, which holds for any expense.
    sum_asked = answer_drafted(
        con, "报一笔3000块的会员费，现金借款最多借多少？", "单笔现金借款不超过3000元。"
    )
    assert sum_asked.guard_action == "passed", sum_asked.notes
    # An expense the rules write, or one the lexicon knows in everyday words, is asked about as before.
    known = answer_drafted(
        con, "用科研经费买一台仪器设备，单价多少以上要做购置论证？", "单价在20万元以上的要论证。"
    )
    assert known.guard_action == "passed", known.notes
    index = ChunkIndex.build(con)
    assert index.unwritten_expenses("出差的房费一晚能报多少？") == []  # 房费: everyday words for 住宿费
    assert index.unwritten_expenses("这笔科研经费的花费超了怎么办？") == []  # words that name no expense
    assert index.unwritten_expenses("这笔费用能报吗？") == []


def test_borrowing_in_everyday_words_finds_the_loan_rule(
    con: duckdb.DuckDBPyConnection, settings: Settings, tmp_path: Path
) -> None:
    # "借点现金" says neither 借款 nor 借钱: 借 alone stands for the loan rules' 借款.
    ingest_rules(con, settings, tmp_path, "科研经费管理办法.txt", RESEARCH_RULES)
    result = answer_drafted(con, "下周出差想先借点现金，一次最多能借多少？", "文件中没有相关规定。")
    assert "3000元" in result.text, (result.guard_action, result.text, result.notes)
