"""The hand-phrased question set over the bundled sample (examples/sample_questions.jsonl).

The questions were written by reading examples/sample_rules.md; these checks keep the file honest: it loads
as a question file, its numbers are numbers the sample states, its unanswerable items are about topics the
sample never mentions, and no question is a copy of the sample's wording.
"""

from __future__ import annotations

from collections import Counter
from decimal import Decimal

import pytest

from tasks.evaluate.evaluate import EvalItem, load_questions
from tasks.ingest.numbers import NumberMention, canonical, find_numbers, rule_numbers
from tests.conftest import EXAMPLES, SAMPLE_MD, SAMPLE_PDF

QUESTIONS = EXAMPLES / "sample_questions.jsonl"
SCALES = {"万": Decimal(10_000), "亿": Decimal(100_000_000)}
COPY_RUN = 12  # a question sharing this many consecutive characters with the sample copies its wording

# The topic each unanswerable question is about: a word the question uses and the sample never does.
UNANSWERABLE_TOPICS = {
    "sample-other-01": "话费",
    "sample-other-02": "体检",
    "sample-other-03": "版面费",
    "sample-other-04": "安家费",
    "sample-other-05": "会员费",
    "sample-other-06": "降温",
}


@pytest.fixture(scope="module")
def items() -> list[EvalItem]:
    return load_questions(QUESTIONS)


@pytest.fixture(scope="module")
def sample() -> str:
    return SAMPLE_MD.read_text(encoding="utf-8")


def written(mention: NumberMention) -> set[tuple[Decimal, Decimal | None]]:
    """(value, range end) of a mention, both as parsed and as written before 万/亿 scaling ("5万元" -> 5)."""
    pairs = {(mention.value, mention.value_max)}
    for mark, scale in SCALES.items():
        if mark in mention.raw:
            pairs.add(
                (mention.value / scale, None if mention.value_max is None else mention.value_max / scale)
            )
    return {(Decimal(canonical(v)), None if m is None else Decimal(canonical(m))) for v, m in pairs}


def expected(number: str) -> tuple[Decimal, Decimal | None]:
    """An item's number ("100", "0.8", "1500-2400") read by the same parser: exactly one mention."""
    mentions = find_numbers(number)
    assert len(mentions) == 1 and mentions[0].raw == number, f"{number!r} is not one number"
    (pair,) = written(mentions[0])  # no 万/亿 in an item's number, so one pair
    return pair


def stated(pairs: set[tuple[Decimal, Decimal | None]], number: str) -> bool:
    value, value_max = expected(number)
    if value_max is not None:  # a range must be the same range
        return (value, value_max) in pairs
    return any(value in (v, m) for v, m in pairs)


def test_file_loads_with_enough_items_of_each_type(items: list[EvalItem]) -> None:
    counts = Counter(i.type for i in items)
    assert len(items) >= 30
    assert counts["numeric"] >= 20
    assert counts["text"] >= 4
    assert counts["unanswerable"] >= 4
    assert set(counts) <= {"numeric", "text", "unanswerable"}


def test_ids_are_unique_and_follow_the_naming(items: list[EvalItem]) -> None:
    ids = [i.id for i in items]
    assert len(ids) == len(set(ids))
    for i in items:
        prefix, topic, number = i.id.split("-")
        assert prefix == "sample" and topic and number.isdigit() and len(number) == 2, i.id


def test_every_item_names_the_document_as_ingest_registers_it(items: list[EvalItem]) -> None:
    # `slm ingest examples/sample_rules.pdf` registers the document under the file's name.
    assert SAMPLE_PDF.is_file()
    assert {i.doc for i in items} == {SAMPLE_PDF.name}
    assert all(i.answer.strip() for i in items)


def test_numeric_items_state_numbers_of_the_sample(items: list[EvalItem], sample: str) -> None:
    in_sample: set[tuple[Decimal, Decimal | None]] = set()
    for mention in rule_numbers(sample):
        in_sample |= written(mention)
    numeric = [i for i in items if i.type == "numeric"]
    for item in numeric:
        assert item.numbers, f"{item.id}: a numeric item without numbers"
        assert not item.keywords, item.id
        for number in item.numbers:
            assert stated(in_sample, number), f"{item.id}: {number} is not a rule number of the sample"
            # the reference answer says the number too (5 for 5万元 is stated by "5万元")
            in_answer = {p for m in rule_numbers(item.answer) for p in written(m)}
            assert stated(in_answer, number), f"{item.id}: the reference answer does not state {number}"


def test_text_items_have_keywords_from_the_rule(items: list[EvalItem], sample: str) -> None:
    for item in (i for i in items if i.type == "text"):
        assert 1 <= len(item.keywords) <= 3, item.id
        assert not item.numbers, item.id
        for word in item.keywords:
            assert word in sample, f"{item.id}: keyword {word!r} is not the rule's wording"
            assert word in item.answer, f"{item.id}: the reference answer lacks {word!r}"


def test_unanswerable_items_are_about_topics_the_sample_never_mentions(
    items: list[EvalItem], sample: str
) -> None:
    unanswerable = {i.id: i for i in items if i.type == "unanswerable"}
    assert set(unanswerable) == set(UNANSWERABLE_TOPICS)
    for item_id, topic in UNANSWERABLE_TOPICS.items():
        item = unanswerable[item_id]
        assert topic in item.question, f"{item_id}: the question is not about {topic!r}"
        assert topic not in sample, f"{item_id}: the sample mentions {topic!r}"
        assert not item.numbers and not item.keywords, item_id


def runs_of(text: str) -> set[str]:
    return {text[k : k + COPY_RUN] for k in range(len(text) - COPY_RUN + 1)}


def test_no_question_copies_the_sample_wording(items: list[EvalItem], sample: str) -> None:
    runs = runs_of(sample)
    for item in items:
        copied = sorted(runs_of(item.question) & runs)
        assert not copied, f"{item.id} copies the sample: {copied[0]!r}"


def test_the_checks_can_fail(sample: str) -> None:
    """The helpers reject what they must: a number the sample lacks, a range read as one end, a copy."""
    in_sample = {p for m in rule_numbers(sample) for p in written(m)}
    assert stated(in_sample, "5")  # 5万元, as written
    assert stated(in_sample, "80")  # 八十元
    assert stated(in_sample, "1500-2400")
    assert not stated(in_sample, "1500-2500")
    assert not stated(in_sample, "777")
    assert not stated(in_sample, "2024")  # a year of a document number, not a rule number
    copy = "请问" + "出差人员夜间乘坐火车连续超过6小时的" + "能买什么票？"
    assert runs_of(copy) & runs_of(sample)
    assert not runs_of("出差晚上坐火车坐多久可以买卧铺？") & runs_of(sample)
