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
(乌鲁木齐 is in 新疆; "去广州" is not "赴西藏、青海、新疆等地区").
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import bm25s
import duckdb
import numpy as np

from tasks.answer.reading import (
    Category,
    Lexicon,
    Query,
    expand,
    learn_categories,
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
from warehouse.ledger import list_facts

__all__ = [
    "Category",
    "FactHit",
    "FactIndex",
    "Lexicon",
    "Query",
    "clear_cache",
    "expand",
    "learn_categories",
    "lexicon",
    "query_for",
]

# Weights of the fact index's own adjustments (the query's weights are in tasks.answer.reading).
UNIT_MISS = 0.85  # factor on a fact whose unit is not one the question asks for (when it asks for one)
PLACE_MISS = 0.8  # factor on a fact naming places when the question names only other places, or none
CHUNK_WEIGHT = 0.35  # share of the chunk's (normalised) score added to each of its facts' (normalised) score

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
        for fact, row in facts:
            _, doc, heading, _ = chunks.rows[row]
            text = f"{fact.subject} {fact.context}"
            members = [c.member for c in by_doc.get(doc, []) if c.category in text and c.member not in text]
            corpus.append(fact_tokens(fact, heading, members, phrases))
            self._regions.append(frozenset(r for r in lexicon().regions if r in fold(fact.context)))
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
