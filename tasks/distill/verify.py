"""Verification: is a row's evidence in its chunk, and is every number it states a ledger fact of that chunk
whose subject fits what the question asks about?

A number that occurs elsewhere with another subject is not grounded: a small model answering "洗衣费 100 元"
because 100 元 stands in the chunk for 伙食补助费 is exactly the failure this catches.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from difflib import SequenceMatcher

from tasks.distill.teachers.base import FactRef, QAPair
from tasks.ingest.facts import match_numbers
from tasks.ingest.normalize import fold
from tasks.ingest.numbers import canonical

# Minimum share of the evidence that must appear in one piece in the chunk (extraction noise tolerated).
EVIDENCE_MATCH = 0.85
_NOISE = re.compile(r"[\s，,。.；;：:、“”\"'‘’（）()《》【】\-—]")
_CLAUSE_BREAK = re.compile(r"[，：。；;！？!?\n]|(?<!\d)[,:]|[,:](?!\d)")
_ABSTAIN = re.compile(r"没有相关规定|未作规定|没有规定|未规定|无相关规定|文件中没有")
# Bigrams that say nothing about *what* a question asks (how much, standard, per person per day).
_STOP_BIGRAMS = {
    "多少",
    "标准",
    "规定",
    "报销",
    "是否",
    "什么",
    "可以",
    "按照",
    "不超",
    "超过",
    "每人",
    "人每",
    "每天",
    "以上",
    "以下",
    "根据",
    "文件",
    "有关",
    "关于",
    "上限",
    "金额",
    "时限",
    "比例",
    "数量",
    "最多",
    "需要",
    "办理",
    "学校",
    "执行",
    "的标",
    "准是",
    "是多",
    "少元",
    "定的",
    "有什",
    "么规",
    "时间",
}


@dataclass(frozen=True)
class Verdict:
    numbers: tuple[str, ...]  # canonical values stated in the answer (ranges give both ends)
    is_numeric: bool
    evidence_found: bool
    grounded: bool
    fact_ids: tuple[str, ...]
    status: str  # auto_verified | needs_review | rejected
    notes: tuple[str, ...] = field(default_factory=tuple)


def normalise_for_match(text: str) -> str:
    return _NOISE.sub("", fold(text))


def evidence_in_chunk(evidence: str, chunk_text: str) -> bool:
    """Evidence occurs in the chunk, ignoring spacing and punctuation, tolerating small extraction noise."""
    needle, haystack = normalise_for_match(evidence), normalise_for_match(chunk_text)
    if not needle:
        return False
    if needle in haystack:
        return True
    match = SequenceMatcher(None, haystack, needle, autojunk=False).find_longest_match(
        0, len(haystack), 0, len(needle)
    )
    return match.size / len(needle) >= EVIDENCE_MATCH


def _bigrams(text: str) -> set[str]:
    cjk = "".join(ch for ch in text if "\u4e00" <= ch <= "\u9fff")
    return {cjk[i : i + 2] for i in range(len(cjk) - 1)} - _STOP_BIGRAMS


def subject_fits(question: str, fact: FactRef) -> bool:
    """Whether the fact is about what the question asks: its subject, or the clause holding the number,
    shares meaningful wording with the question."""
    asked = _bigrams(question)
    subject = _bigrams(fact.subject)
    if subject and len(asked & subject) / len(subject) >= 0.34:
        return True
    clause = clause_of(fact)
    return len(asked & _bigrams(clause)) >= 2


def clause_of(fact: FactRef) -> str:
    """The clause of the fact's sentence that holds its number ("每人每天不超过800元")."""
    return clause_around(fact.context, fact.raw)


def clause_around(text: str, raw: str) -> str:
    """The clause of ``text`` that holds ``raw`` (its first occurrence); all of ``text`` when it lacks it."""
    at = text.find(raw)
    if at < 0:
        return text
    breaks = [m.start() for m in _CLAUSE_BREAK.finditer(text)]
    left = max([b + 1 for b in breaks if b < at], default=0)
    right = min([b for b in breaks if b >= at + len(raw)], default=len(text))
    return text[left:right]


def verify_row(
    row: QAPair, chunk_text: str, facts: list[FactRef] | tuple[FactRef, ...], review_numeric_rows: bool = True
) -> Verdict:
    """Check one row against its chunk and the chunk's ledger facts; decide its status."""
    # Any shared value grounds a number here (a range need not be a fact's whole range): distillation
    # reviews numeric rows anyway, and the answer guard is the strict one.
    stated = match_numbers(row.answer, facts, given=row.question)
    mentions = [s.mention for s in stated]
    numbers = tuple(dict.fromkeys(canonical(v) for m in mentions for v in m.values()))
    notes: list[str] = []
    fact_ids: list[str] = []
    grounded_numbers = True
    for number in stated:
        if number.given:
            continue  # the question supplied this number
        if not number.facts:
            grounded_numbers = False
            notes.append(f"{number.mention.raw} is not a ledger fact of this chunk")
            continue
        fitting = [f for f in number.facts if subject_fits(row.question, f)]
        if not fitting:
            grounded_numbers = False
            notes.append(
                f"{number.mention.raw} belongs to {number.facts[0].subject}, not to what the question asks"
            )
            continue
        fact_ids.extend(f.fact_id for f in fitting)
    is_numeric = bool(mentions)

    if row.kind == "unanswerable":
        abstains = bool(_ABSTAIN.search(row.answer)) and not mentions
        if not abstains:
            notes.append("an unanswerable question must be answered with an abstention and no number")
        status = "auto_verified" if abstains and not row.unsure else "needs_review"
        return Verdict(numbers, is_numeric, False, abstains, (), status, tuple(notes))

    evidence_found = evidence_in_chunk(row.evidence, chunk_text) if row.evidence else False
    if not evidence_found:
        notes.append("evidence not found in the chunk")
        return Verdict(numbers, is_numeric, False, False, tuple(fact_ids), "rejected", tuple(notes))
    grounded = grounded_numbers
    if row.unsure:
        notes.append("the teacher marked this row unsure")
    risky = not grounded or row.unsure or (is_numeric and review_numeric_rows)
    status = "needs_review" if risky else "auto_verified"
    return Verdict(numbers, is_numeric, True, grounded, tuple(dict.fromkeys(fact_ids)), status, tuple(notes))
