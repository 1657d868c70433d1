"""One ledger vocabulary: one fact type, one matcher of stated numbers to facts, one abstain sentence, one set
of numeral and heading patterns (#16)."""

from __future__ import annotations

from dataclasses import fields
from decimal import Decimal

from tasks.answer import answer as answer_module
from tasks.answer.prompts import CONTEXT_INSTRUCTION, NO_EVIDENCE, SYSTEM_PROMPT
from tasks.distill.teachers.base import FactRef
from tasks.distill.teachers.extractive import unanswerable_rows
from tasks.ingest.chunk import LEADING_MARKER
from tasks.ingest.facts import Fact, agrees, match_numbers
from tasks.ingest.numbers import find_numbers, readings, units_agree
from tasks.vocabulary import ABSTAIN_TEXT
from warehouse.ledger import FACT_FIELDS


def _fact(fact_id: str, value: str, unit: str, raw: str, subject: str, value_max: str | None = None) -> Fact:
    return Fact(fact_id, value, value_max, unit, raw, "", subject, f"{subject}{raw}。", 0, len(raw))


LODGING = _fact("lodging", "50000", "元", "5万元", "单笔支出")
BOOKS = _fact("books", "3000", "元", "3千元", "图书资料费")
MEALS = _fact("meals", "100", "元/人·天", "每人每天100元", "伙食补助费")
DAYS = _fact("days", "100", "天", "100天", "借款期限")
TIERS = _fact("tiers", "1500", "元", "1500-2400元", "专家咨询费", value_max="2400")
LEDGER = (LODGING, BOOKS, MEALS, DAYS, TIERS)


def _ids(text: str, **options: object) -> list[tuple[str, ...]]:
    return [tuple(f.fact_id for f in s.facts) for s in match_numbers(text, LEDGER, **options)]  # type: ignore[arg-type]


# --- the one fact type ---------------------------------------------------------------------------------------


def test_a_fact_gives_its_numbers_as_decimals_and_a_range_both_ends() -> None:
    assert MEALS.values() == (Decimal("100"),)
    assert TIERS.values() == (Decimal("1500"), Decimal("2400"))
    assert Fact("f", "0.3333", None, "", "三分之一", "", "比例", "", 0, 4).values() == (Decimal("0.3333"),)


def test_the_teacher_view_is_the_fact_type_and_the_warehouse_columns_are_its_fields() -> None:
    assert FactRef is Fact
    assert {f.name for f in fields(Fact)} == set(FACT_FIELDS)
    row = {name: getattr(TIERS, name) for name in FACT_FIELDS} | {
        "chunk_id": "c1",
        "doc": "a.pdf",
        "heading_path": "",
    }
    read = Fact.from_row(row)
    assert read.chunk_id == "c1" and read.values() == TIERS.values()
    # A record without its chunk (a teacher's ChunkContext holds the chunk) reads too.
    assert Fact.from_row({k: v for k, v in row.items() if k != "chunk_id"}).chunk_id == ""


# --- the one matcher -----------------------------------------------------------------------------------------


def test_scaled_numbers_match_the_ledger_value_in_the_base_unit() -> None:
    assert _ids("单笔支出5万元以上的，须经集体研究。") == [("lodging",)]
    assert _ids("图书资料费不超过3千元。") == [("books",)]
    assert _ids("单笔支出50000元以上的须审批。") == [("lodging",)]


def test_a_number_no_fact_has_matches_nothing() -> None:
    assert _ids("伙食补助费每人每天150元。") == [()]


def test_ranges_match_any_end_by_default_and_only_the_same_range_when_asked() -> None:
    assert _ids("专家咨询费为1500-2400元。", whole_range=True) == [("tiers",)]
    assert _ids("专家咨询费1500元至2000元。") == [("tiers",)]  # one shared end is enough by default
    assert _ids("专家咨询费1500元至2000元。", whole_range=True) == [()]
    assert _ids("专家咨询费最高2400元。", whole_range=True) == [("tiers",)]  # one number may be a range's end


def test_unit_disagreement_rules_a_fact_out_only_when_asked() -> None:
    assert _ids("每人每天100元。") == [("meals", "days")]
    assert _ids("每人每天100元。", same_unit=True) == [("meals",)]  # 元/人·天 agrees with 元, not with 天
    assert _ids("借款期限100天。", same_unit=True) == [("days",)]


def test_numbers_the_question_gave_need_no_fact() -> None:
    stated = match_numbers("出差5天共500元。", LEDGER, given="出差5天，每天补助100元，共多少钱？")
    assert [(s.mention.raw, s.given, s.facts) for s in stated] == [("5天", True, ()), ("500元", False, ())]


def test_agreement_within_fraction_rounding_only_when_tolerant() -> None:
    third = (Decimal("0.3333"),)
    assert not agrees(third, {Decimal("0.33333")})
    assert agrees(third, {Decimal("0.33333")}, tolerant=True)


def test_readings_and_units() -> None:
    ten_wan = find_numbers("10万元")[0]
    assert readings(ten_wan) == {("100000", None), ("10", None)}
    assert units_agree("元/人·天", "元") and units_agree("", "天") and not units_agree("元", "天")


# --- one abstain sentence, one set of numeral and heading patterns ------------------------------------------


def test_every_prompt_and_every_stage_says_the_one_abstain_sentence() -> None:
    for prompt in (SYSTEM_PROMPT, CONTEXT_INSTRUCTION, NO_EVIDENCE):
        assert f"“{ABSTAIN_TEXT}”" in prompt
    assert answer_module.ABSTAIN_TEXT is ABSTAIN_TEXT
    rows = unanswerable_rows("伙食补助费每人每天100元。", 3, "seed")
    assert rows and {r.answer for r in rows} == {ABSTAIN_TEXT}


def test_leading_numbering_is_one_pattern() -> None:
    for text in (
        "第二十条 住宿费",
        "第 3 条住宿费",
        "（十二）住宿费",
        "三、住宿费",
        "2. 住宿费",
        "第兩條住宿费",
    ):
        assert LEADING_MARKER.sub("", text) == "住宿费", text
