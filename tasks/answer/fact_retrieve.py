"""Find the fact, not just the chunk: ledger facts ranked for a question in staff's everyday words.

Staff ask "住酒店一晚能报多少" or "打车的钱能报吗"; the rules say 住宿费 and 市内交通费. Three things bridge
the two, all of them data or learned, none of them per-document code:

- the domain lexicon ``tasks/answer/lexicon.toml`` (colloquial word -> rule terms, city -> province, words that ask
  for a unit or a limit), written from general knowledge of Chinese university finance rules;
- categories the documents define themselves ("一类人员住宿费：校级领导及相当职务人员", "住宿费指…房租费用",
  "潍坊市城区（奎文区、潍城区…）"), learned at index time by three generic patterns (是指/指/包括 with a
  、-list, a colon after a short heading, a parenthesised 、-list): a question naming a member (directly or
  through the lexicon: 副校长 -> 校级领导) also asks with the category's words, and a fact naming a class
  (一类会议) is indexed with its members (全校性年度工作会议);
- a BM25 index (the same character-bigram :func:`tasks.answer.reading.tokens` as the chunk index) over the facts
  themselves: each fact is indexed with its subject and the clause holding its number (both counted twice),
  its sentence, its chunk's heading path, tags for its unit and qualifier, and a phrase tag for every rule term
  or category name its text says. Its own number is left out (a question does not know the answer).

A question is read in weighted parts (:class:`Query`): its own words weigh 1, its filler ("我们这边", "能报多少")
and numbers ("出差三天") little; the added rule terms count fully only where a fact says the whole term, their
bigrams a little; units and limits it asks for ("一天", "百分之多少", "最多") are tags. A fact's score adds a
share of its chunk's score (so a fact in the right article wins over a look-alike elsewhere), and is lowered
when its unit is not one the question asks for, or when it names places and the question names only others
(乌鲁木齐 is in 新疆; "去广州" is not "赴西藏、青海、新疆等地区"). A tiered rule's fact ("20万及以下的部分按照8%
核定", "500万元至1000万元的部分为15%") applies to amounts in its bracket: when the question states an amount of
the bracket's kind ("项目经费一共才15万"), a fact whose bracket holds it ranks higher, and one whose bracket does not,
lower (:class:`Condition`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal

import bm25s
import duckdb
import numpy as np

from tasks.answer.reading import (
    Category,
    Query,
    expand,
    lexicon,
    phrase_tag,
    qualifier_tag,
    query_for,
    tokens,
    unit_tag,
)
from tasks.answer.retrieve import ChunkIndex, Hit, IndexCache, weighted_bm25
from tasks.distill.teachers.base import FactRef
from tasks.distill.verify import clause_of
from tasks.ingest.normalize import fold
from tasks.ingest.numbers import NumberMention, rule_numbers
from warehouse.ledger import list_facts

# Weights of the fact index's own adjustments (the query's weights are in tasks.answer.reading).
UNIT_MISS = 0.85  # factor on a fact whose unit is not one the question asks for (when it asks for one)
PLACE_MISS = 0.8  # factor on a fact naming places when the question names only other places, or none
CHUNK_WEIGHT = 0.35  # share of the chunk's (normalised) score added to each of its facts' (normalised) score
CONDITION_FIT = (
    1.25  # factor on a fact whose bracket ("20万及以下的部分") holds an amount the question states
)
CONDITION_MISS = 0.7  # factor on a fact whose every bracket of that kind leaves the question's amounts out

# Qualifiers that bound a condition's number from above or from below ("20万及以下", "超过1000万元").
_UP_TO = frozenset(
    {"不超过", "不高于", "不足", "不满", "未满", "低于", "最高", "最多", "以下", "以内", "及以下"}
)
_FROM = frozenset(
    {"不低于", "不少于", "超过", "高于", "最低", "最少", "至少", "达到", "满", "以上", "及以上"}
)
_SCALED = ("万", "亿")  # "15万" written without 元 is still an amount of money

_cache: IndexCache[FactIndex] = IndexCache()  # per doc filter, warehouse content and lexicon


# --- the fact index ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FactHit:
    """One retrieved fact, the chunk holding it (its score is the chunk's own score for the question), and
    the fact's combined score (higher is better; only comparable within one query)."""

    fact: FactRef
    chunk: Hit
    score: float


def fact_tokens(
    fact: FactRef, heading: str, members: Sequence[str] = (), phrases: Iterable[str] = ()
) -> list[str]:
    """What a fact is indexed with: subject and number clause twice, sentence, heading path, unit and
    qualifier tags, the members of categories the fact names, and a phrase tag for each of ``phrases`` (rule
    terms the lexicon can add, category names) that its text says."""
    own = set(tokens(fact.raw))  # the number asked for ("一天", "100元") is not what a question names
    out = tokens(fact.subject) * 2 + tokens(clause_of(fact)) * 2 + tokens(fact.context) + tokens(heading)
    out = [t for t in out if t not in own]
    if fact.unit:
        out.append(unit_tag(fact.unit))
        main = fact.unit.split("/")[0]
        if main != fact.unit:
            out.append(unit_tag(main))
    out += [qualifier_tag(q) for q in fact.qualifier.split("|") if q]
    for member in members:
        out += tokens(member)
    text = fold(f"{fact.subject} {fact.context} {heading} {' '.join(members)}")
    out += [phrase_tag(p) for p in phrases if p in text]
    return out


def regions_named(fact: FactRef) -> frozenset[str]:
    """The provinces and regions (the lexicon's) that the fact's sentence names."""
    return frozenset(r for r in lexicon().regions if r in fold(fact.context))


@dataclass(frozen=True)
class Condition:
    """The bracket a tiered or threshold rule applies to, read from the numbers of its clause other than the
    fact's own: "20万及以下的部分按照8%核定" holds (None, 200000] 元, "500万元至1000万元的部分为15%"
    [5000000, 10000000], "超过1000万元的部分" (10000000, None)."""

    low: Decimal | None
    high: Decimal | None
    unit: str  # main unit ("元", "天"); "" when written without one

    def holds(self, value: Decimal) -> bool:
        return (self.low is None or value >= self.low) and (self.high is None or value <= self.high)


def _main_unit(mention: NumberMention) -> str:
    """The kind of quantity: its unit's main part, and 元 for a bare amount written with 万/亿."""
    main = mention.unit.split("/")[0]
    return main or ("元" if any(s in mention.raw for s in _SCALED) else "")


def conditions_of(fact: FactRef) -> tuple[Condition, ...]:
    """The brackets the fact's clause puts on it (see :class:`Condition`); () for a plain rule."""
    found = []
    for mention in rule_numbers(clause_of(fact)):
        if mention.raw == fact.raw:
            continue
        words = set(mention.qualifier.split("|"))
        if mention.value_max is not None:
            low, high = mention.value, mention.value_max
        elif words & _UP_TO:
            low, high = None, mention.value
        elif words & _FROM:
            low, high = mention.value, None
        else:
            continue  # a number of the clause that bounds nothing ("按往返各一天计发")
        found.append(Condition(low, high, _main_unit(mention)))
    return tuple(found)


def question_amounts(question: str) -> list[tuple[Decimal, str]]:
    """The amounts a question states, with their kind: "一共才15万" -> (150000, 元). "超过500万的那一段" is read
    just above 500万, "不到3天" just below 3 (a bracket starting or ending there holds it or not)."""
    amounts = []
    for mention in rule_numbers(question):
        words = set(mention.qualifier.split("|"))
        value = mention.value if mention.value_max is None else (mention.value + mention.value_max) / 2
        nudge = abs(value) * Decimal("1e-6") or Decimal("1e-6")
        if words & {"超过", "高于", "以上"} and mention.value_max is None:
            value += nudge
        elif words & {"不足", "不满", "未满", "低于", "以下"} and mention.value_max is None:
            value -= nudge
        amounts.append((value, _main_unit(mention)))
    return amounts


def condition_factor(conditions: Sequence[Condition], amounts: Sequence[tuple[Decimal, str]]) -> float:
    """How a fact's brackets fit the question's amounts: CONDITION_FIT when one holds an amount of its kind,
    CONDITION_MISS when there are amounts of that kind and none is held, 1 otherwise."""
    judged = False
    for condition in conditions:
        kind = [value for value, unit in amounts if unit == condition.unit]
        if not kind:
            continue
        if any(condition.holds(value) for value in kind):
            return CONDITION_FIT
        judged = True
    return CONDITION_MISS if judged else 1.0


class FactIndex:
    """A BM25 index of the ledger facts (optionally of one document), ranked with their chunks."""

    def __init__(
        self,
        facts: list[tuple[FactRef, int]],
        chunks: ChunkIndex,
        categories: list[Category],
        key: str,
    ) -> None:
        # facts: (fact, row of its chunk in ``chunks.rows``)
        self.facts = facts
        self.chunks = chunks
        self.categories = categories
        self.key = key
        self._retriever: bm25s.BM25 | None = None
        by_doc: dict[str, list[Category]] = {}
        for category in categories:
            if category.how in ("colon", "parenthesis"):
                by_doc.setdefault(category.doc, []).append(category)
        phrases = sorted(lexicon().rule_vocabulary | {c.category for c in categories})
        corpus = []
        self._regions: list[frozenset[str]] = []
        self._conditions = [conditions_of(fact) for fact, _ in facts]
        for fact, row in facts:
            _, doc, heading, _ = chunks.rows[row]
            text = f"{fact.subject} {fact.context}"
            members = [c.member for c in by_doc.get(doc, []) if c.category in text and c.member not in text]
            corpus.append(fact_tokens(fact, heading, members, phrases))
            self._regions.append(regions_named(fact))
        if corpus:
            self._retriever = bm25s.BM25()
            self._retriever.index(corpus, show_progress=False)

    @classmethod
    def build(cls, con: duckdb.DuckDBPyConnection, doc: str | None = None) -> FactIndex:
        """The index of the facts of ``con`` (of document ``doc``: file name or doc id prefix), cached per
        warehouse content (chunk ids, fact ids and values) and lexicon."""
        chunks = ChunkIndex.build(con, doc)
        rows = list_facts(con, doc, rules_only=True)
        digest = hashlib.sha256(chunks.key.encode())
        digest.update(lexicon().digest.encode())
        for r in rows:
            digest.update(f"{r['fact_id']}|{r['value']}|{r['value_max']}|{r['unit']}|{r['subject']}".encode())
        key = digest.hexdigest()

        def build() -> FactIndex:
            row_of = {chunk_id: i for i, (chunk_id, *_) in enumerate(chunks.rows)}
            facts = [(FactRef.from_row(r), row_of[r["chunk_id"]]) for r in rows if r["chunk_id"] in row_of]
            return cls(facts, chunks, chunks.categories(), key)

        return _cache.get_or_build(key, build)

    def __len__(self) -> int:
        return len(self.facts)

    def expand(self, question: str) -> list[str]:
        """The rule terms added to ``question``: the lexicon's, then the learned categories'."""
        return expand(question, self.categories)

    def query(self, question: str) -> Query:
        return query_for(question, self.categories)

    def search(self, question: str, k: int = 5) -> list[FactHit]:
        """The ``k`` best facts for ``question``; facts sharing no token with the (expanded) question are never
        returned."""
        if self._retriever is None or k <= 0:
            return []
        query = self.query(question)
        fact_scores = weighted_bm25(self._retriever, query.fact_parts(), len(self.facts))
        chunk_scores = self.chunks.scores(query.parts())
        top_fact = float(fact_scores.max()) if len(fact_scores) else 0.0
        top_chunk = float(chunk_scores.max()) if len(chunk_scores) else 0.0
        if top_fact <= 0:
            return []
        rows = np.array([row for _, row in self.facts])
        combined = fact_scores / top_fact
        if top_chunk > 0:
            combined = combined + CHUNK_WEIGHT * chunk_scores[rows] / top_chunk
        if query.units:
            asked = set(query.units)
            fits = np.array([f.unit in asked or f.unit.split("/")[0] in asked for f, _ in self.facts])
            combined = np.where(fits, combined, combined * UNIT_MISS)
        # A fact about named places is an exception for those places: it ranks lower when the question names
        # other places, or none (the general rule answers "伙食补助费每天多少", not the 新疆 exception).
        elsewhere = np.array([bool(r) and not (r & query.regions) for r in self._regions])
        combined = np.where(elsewhere, combined * PLACE_MISS, combined)
        amounts = question_amounts(question)
        if amounts:
            factors = np.array([condition_factor(c, amounts) if c else 1.0 for c in self._conditions])
            combined = combined * factors
        combined = np.where(fact_scores > 0, combined, 0.0)
        order = np.argsort(-combined, kind="stable")[:k]
        hits = []
        for i in order:
            if combined[i] <= 0:
                break
            fact, row = self.facts[int(i)]
            chunk_id, doc, heading, text = self.chunks.rows[row]
            hits.append(
                FactHit(fact, Hit(chunk_id, doc, heading, text, float(chunk_scores[row])), float(combined[i]))
            )
        return hits


def clear_cache() -> None:
    """Forget every cached fact index (tests; or after deleting documents in place)."""
    _cache.clear()
