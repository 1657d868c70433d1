"""The numeric fact ledger: every rule number of a document with its unit, qualifier, subject and sentence.

Numbers are found once over the whole document text (so a number is never cut by a chunk boundary), then
each fact is assigned to the first chunk that contains it, with its span inside that chunk.
"""

from __future__ import annotations

import bisect
import hashlib
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from decimal import Decimal
from typing import Any

from tasks.ingest.chunk import LEADING_MARKER, Chunk
from tasks.ingest.numbers import NumberMention, canonical, rule_numbers, units_agree, values_match
from tasks.ingest.tables import TableCell
from warehouse.ledger import FACT_FIELDS

# What ends a sentence of rules text (a semicolon ends one rule of a list). The one definition: answering
# splits answers and definitions with it too.
SENTENCE_BREAK = re.compile(r"[。；;！？!?\n]")
# A comma or colon between digits is part of a number (1,200元), not a clause break.
_CLAUSE_BREAK = re.compile(r"[，：。；;！？!?\n]|(?<!\d)[,:]|[,:](?!\d)")
# Words between a subject and its number that are not part of the subject ("住宿费标准为每人每天不超过").
_FILLER = re.compile(
    r"(?:按照|按|为|是|给予|实行|标准|的|在|须|应当|应|可|最高|最多|不得|均|统一|一般|原则上|每人每天|每人每餐"
    r"|每人每月|每人次|每人|每天|每次|每月|每年|每餐|每项|每个|每学时|每小时|每公里|不超过|不低于|不高于|超过|低于"
    r"|高于|不足|至少|达到|满|控制在|以内|以下|以上|含|包干|定额|之间|介于|于|由|从|至|或|和|及|、|\s)+$"
)
_SUBJECT_NOUN = re.compile(
    r"[\u4e00-\u9fffA-Za-z]{0,10}?(?:费用|费|补助|补贴|经费|资金|款项|款|标准|限额|金额|津贴|报酬|酬金|奖励|比例"
    r"|期限|时限|时间|会期|天数|人数|次数|里程|时长|预算|支出|合同|采购|借款|预付款|发票|手续|项目|会议|对象)"
)
_MAX_SUBJECT = 16


@dataclass(frozen=True)
class Fact:
    """One rule number of the ledger: the one fact type. Ingestion makes it, the warehouse stores its fields
    (``warehouse.ledger.FACT_FIELDS``), teachers, the answer guard and review read it back (``from_row``).

    Values are canonical decimal strings as stored; ``values()`` gives them as numbers.
    """

    fact_id: str
    value: str
    value_max: str | None  # upper end of a range ("1500-2400元"), else None
    unit: str
    raw: str
    qualifier: str
    subject: str
    context: str
    span_start: int  # inside the chunk's text
    span_end: int
    # Keyword-only, "" where the chunk is known from elsewhere (a teacher's ChunkContext holds its facts).
    chunk_id: str = field(default="", kw_only=True)
    # A number read from a table cell: its place in the table as printed on its page, "r5c3"; else "".
    cell: str = field(default="", kw_only=True)

    def values(self) -> tuple[Decimal, ...]:
        """The number(s) it states: its value, and for a range also the upper end."""
        if self.value_max is None:
            return (Decimal(self.value),)
        return Decimal(self.value), Decimal(self.value_max)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Fact:
        """From a warehouse fact row or record; extra columns (doc, heading_path) are ignored."""
        return cls(**{f.name: row[f.name] for f in fields(cls) if f.name in row})


# The warehouse keeps the column list (it may not import tasks); the one fact type must say the same.
if {f.name for f in fields(Fact)} != set(FACT_FIELDS):
    raise ImportError(f"Fact fields and warehouse.ledger.FACT_FIELDS differ: {sorted(FACT_FIELDS)}")


@dataclass(frozen=True)
class StatedNumber:
    """A rule number stated in a text, and the ledger facts it may refer to."""

    mention: NumberMention
    given: bool  # every value of it is also stated in the given text (the question): no fact is needed
    facts: tuple[Fact, ...]  # facts with its value; () when given


def agrees(
    stated: Collection[Decimal],
    fact: Collection[Decimal],
    *,
    whole_range: bool = False,
    tolerant: bool = False,
) -> bool:
    """Whether a number stated with the values ``stated`` (one value, or a range's two ends) states a fact with
    the values ``fact``. By default one shared value is enough; with ``whole_range`` a range states only the
    same range ("100-999元" is not the 100元 of a fact), a single number still any end of a fact's range.
    ``tolerant`` allows the 4-decimal rounding of fractions (0.3333 ~ 1/3)."""

    def has(value: Decimal, among: Collection[Decimal]) -> bool:
        return any(values_match(value, v) for v in among) if tolerant else value in among

    if whole_range and len(stated) > 1:
        return all(has(v, fact) for v in stated) and all(has(v, stated) for v in fact)
    return any(has(v, fact) for v in stated)


def match_numbers(
    text: str,
    facts: Iterable[Fact],
    *,
    given: str = "",
    whole_range: bool = False,
    same_unit: bool = False,
) -> list[StatedNumber]:
    """Every rule number of ``text`` with the facts among ``facts`` it may refer to: those with its value
    (see :func:`agrees` for ``whole_range``), with ``same_unit`` only those whose unit agrees
    (``tasks.ingest.numbers.units_agree``). A number whose values all stand in ``given`` (the question) is
    marked given and needs no fact. Value scale is the parser's: "5万元" states a fact of 50000."""
    candidates = [(f, frozenset(f.values())) for f in facts]
    asked = {v for m in rule_numbers(given) for v in m.values()} if given else set()
    out = []
    for mention in rule_numbers(text):
        values = mention.values()
        if all(v in asked for v in values):
            out.append(StatedNumber(mention, True, ()))
            continue
        matched = tuple(
            f
            for f, fact_values in candidates
            if agrees(values, fact_values, whole_range=whole_range)
            and (not same_unit or units_agree(mention.unit, f.unit))
        )
        out.append(StatedNumber(mention, False, matched))
    return out


class SentenceIndex:
    """Sentence bounds by bisection over the break positions of one text (one pass, not one per number)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.breaks = [m.end() for m in SENTENCE_BREAK.finditer(text)]

    def around(self, start: int, end: int) -> tuple[int, int]:
        """Bounds of the sentence holding text[start:end] (ends at 。；！？ inclusive, or at a line break)."""
        i = bisect.bisect_right(self.breaks, start) - 1
        left = self.breaks[i] if i >= 0 else 0
        j = bisect.bisect_right(self.breaks, end)  # the first break character at or after `end`
        right = self.breaks[j] if j < len(self.breaks) else len(self.text)
        if j < len(self.breaks) and self.text[right - 1] == "\n":
            right -= 1
        return left, right


def sentence_around(text: str, start: int, end: int) -> tuple[int, int]:
    """Bounds of the sentence holding text[start:end]; for many lookups in one text use ``SentenceIndex``."""
    return SentenceIndex(text).around(start, end)


def subject_of(text: str, mention: NumberMention, sentence_start: int, sentence_end: int) -> str:
    """The phrase the number belongs to, e.g. 市内交通费 in "市内交通费按每人每天80元包干".

    In order: a noun phrase in the clause before the number, one right after it (三个月内办理报销手续),
    the topic of the sentence, then the clause text itself.
    """
    clauses = [LEADING_MARKER.sub("", c) for c in _CLAUSE_BREAK.split(text[sentence_start : mention.start])]
    own = _FILLER.sub("", clauses[-1])
    nouns = list(_SUBJECT_NOUN.finditer(own))
    if nouns:
        return trim_subject(own[: nouns[-1].end()])  # the whole phrase up to its last noun: 单张发票金额
    after = _CLAUSE_BREAK.split(text[mention.end : sentence_end])[0]
    after = re.sub(r"^(?:（[^）]*）|以上|以下|以内|及以上|及以下|的|（含）|含|内)+", "", after)
    for clause in (after, *clauses[-2::-1]):
        phrase = first_noun_phrase(clause)
        if phrase:
            return trim_subject(phrase)
    for candidate in (own, *(_FILLER.sub("", c) for c in clauses[-2::-1]), after):
        if len(trim_subject(candidate)) >= 2:
            return trim_subject(candidate)
    return "(未识别)"


def first_noun_phrase(clause: str) -> str:
    """The first noun phrase, extended over nouns that follow it directly (伙食补助 + 费)."""
    nouns = list(_SUBJECT_NOUN.finditer(clause))
    if not nouns:
        return ""
    start, end = nouns[0].start(), nouns[0].end()
    for match in nouns[1:]:
        if match.start() != end:
            break
        end = match.end()
    return clause[start:end]


def trim_subject(phrase: str) -> str:
    phrase = phrase.strip(' ，,、：:（(“"')
    # 其 alone is a pronoun ("其差旅费"), 其他 is part of the subject ("其他人员", not "他人员").
    phrase = re.sub(r"^(?:对于|对|其中|凡|如|若|其(?!他)|各类|各项|所有|单位|学院|学校)", "", phrase)
    return phrase[-_MAX_SUBJECT:]


def extract_facts(
    doc_id: str, text: str, chunks: list[Chunk], table_rows: Mapping[str, Sequence[TableCell]] | None = None
) -> list[Fact]:
    """Every rule number of the document ``text`` as a fact attached to its chunk.

    ``table_rows``: table row lines of the text and the cell of each of their "；" clauses
    (``tasks.ingest.tables``); a number in such a clause takes that cell's subject (row + column header)
    and position."""
    table_rows = table_rows or {}
    starts = [c.start_char for c in chunks]
    sentences = SentenceIndex(text)
    facts: list[Fact] = []
    for mention in rule_numbers(text):
        chunk = _chunk_holding(chunks, starts, mention.start, mention.end)
        if chunk is None:
            continue
        sent_start, sent_end = sentences.around(mention.start, mention.end)
        # A "sentence" with no break for pages (one endless line) would be every fact's context and make
        # subject search quadratic; the chunk holding the number bounds both.
        sent_start, sent_end = max(sent_start, chunk.start_char), min(sent_end, chunk.end_char)
        digest = hashlib.sha256(f"{doc_id}:{mention.start}:{mention.raw}".encode()).hexdigest()[:24]
        cell = table_cell(text, mention.start, table_rows)
        facts.append(
            Fact(
                fact_id=digest,
                chunk_id=chunk.chunk_id,
                value=mention.value_str(),
                value_max=None if mention.value_max is None else canonical(mention.value_max),
                unit=mention.unit,
                raw=mention.raw,
                qualifier=mention.qualifier,
                subject=cell.subject if cell else subject_of(text, mention, sent_start, sent_end),
                context=text[sent_start:sent_end].strip(),
                span_start=mention.start - chunk.start_char,
                span_end=mention.end - chunk.start_char,
                cell=cell.position if cell else "",
            )
        )
    return facts


def table_cell(text: str, position: int, table_rows: Mapping[str, Sequence[TableCell]]) -> TableCell | None:
    """The table cell at ``position`` (its row and column header, "三类人员 住宿费", and its place), None when
    the position is not in a table row line."""
    if not table_rows:
        return None
    line_start = text.rfind("\n", 0, position) + 1
    line_end = text.find("\n", position)
    cells = table_rows.get(text[line_start : line_end if line_end >= 0 else len(text)])
    if not cells:
        return None
    clause = text.count("；", line_start, position)
    return cells[clause] if clause < len(cells) else None


def table_fact_count(
    text: str, chunks: Sequence[Chunk], facts: Iterable[Fact], table_rows: Mapping[str, Sequence[TableCell]]
) -> int:
    """How many of ``facts`` stand in table row lines (the table route's share of a document)."""
    chunk_start = {c.chunk_id: c.start_char for c in chunks}
    return sum(1 for f in facts if table_cell(text, chunk_start[f.chunk_id] + f.span_start, table_rows))


def _chunk_holding(chunks: list[Chunk], starts: list[int], start: int, end: int) -> Chunk | None:
    index = bisect.bisect_right(starts, start) - 1
    # Overlapping pieces: walk back to the first chunk that contains the whole span.
    candidates = [
        c for c in chunks[max(index - 3, 0) : index + 1] if c.start_char <= start and end <= c.end_char
    ]
    return candidates[0] if candidates else None
