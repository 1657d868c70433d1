"""Retrieval over the warehouse chunks: BM25 (the ``bm25s`` library) over Chinese character bigrams.

Chinese has no spaces, and a word segmenter brings its own dictionary and its own mistakes on finance terms
(伙食补助费, 专家咨询费); overlapping character bigrams need neither and match those terms well. Latin words
and numbers are kept whole, so "500" or "GB" match as written. Each chunk is indexed with its heading path
(第三章 差旅费 > 第十八条), which names the topic that the chunk text often leaves implicit.

An index is cached per warehouse content (a hash of the chunk ids, which are content hashes), so asking many
questions against the same warehouse builds it once; ingesting a document changes the key.

``search(..., expand=True)`` also asks with the rule terms a question's everyday words stand for (打车 ->
市内交通费; the domain lexicon and the categories the chunks define, ``tasks.answer.reading``), weighted below
the question's own words; without it search is exactly what it always was. To find the fact itself rather
than its chunk, use ``tasks.answer.fact_retrieve.FactIndex``.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import bm25s
import duckdb
import numpy as np

from tasks.answer.reading import learn_categories, query_for, tokens, unwritten_expenses
from warehouse.ledger import chunk_texts

__all__ = ["ChunkIndex", "Hit", "IndexCache", "clear_cache", "tokens", "weighted_bm25"]

T = TypeVar("T")
_CACHE_SIZE = 8  # indexes kept (per doc filter and warehouse content); each is small


class IndexCache(Generic[T]):
    """A small thread-safe LRU of built indexes by content key: asking many questions against the same
    warehouse builds an index once."""

    def __init__(self, size: int = _CACHE_SIZE) -> None:
        self.size = size
        self._items: OrderedDict[str, T] = OrderedDict()
        self._lock = threading.Lock()

    def get_or_build(self, key: str, build: Callable[[], T]) -> T:
        with self._lock:
            cached = self._items.get(key)
            if cached is not None:
                self._items.move_to_end(key)
                return cached
        built = build()  # outside the lock: a slow build does not block other lookups
        with self._lock:
            self._items[key] = built
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return built

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


_cache: IndexCache[ChunkIndex] = IndexCache()


@dataclass(frozen=True)
class Hit:
    """One retrieved chunk and its BM25 score (higher is better; only comparable within one query)."""

    chunk_id: str
    doc: str
    heading_path: str
    text: str
    score: float


class ChunkIndex:
    """A BM25 index of the warehouse chunks (optionally of one document)."""

    def __init__(self, rows: list[tuple[str, str, str, str]], key: str) -> None:
        # rows: (chunk_id, doc name, heading_path, text)
        self.rows = rows
        self.key = key
        self._retriever: bm25s.BM25 | None = None
        self._categories: list[Any] | None = None
        corpus = [tokens(f"{heading} {text}") for _, _, heading, text in rows]
        if rows:
            self._retriever = bm25s.BM25()  # Lucene variant, k1=1.5, b=0.75
            self._retriever.index(corpus, show_progress=False)

    @classmethod
    def build(cls, con: duckdb.DuckDBPyConnection, doc: str | None = None) -> ChunkIndex:
        """The index of the chunks of ``con`` (of document ``doc``: file name or doc id prefix), cached."""
        rows = chunk_texts(con, doc)
        digest = hashlib.sha256((doc or "").encode())
        for chunk_id, *_ in rows:
            digest.update(chunk_id.encode())  # chunk ids hash their text: same ids, same content
        key = digest.hexdigest()
        return _cache.get_or_build(key, lambda: cls(rows, key))  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self.rows)

    def categories(self) -> list[Any]:
        """Categories the indexed chunks define (``tasks.answer.reading.learn_categories``), learned once."""
        if self._categories is None:
            learned: list[Any] = []
            for _, doc, _, text in self.rows:
                learned += learn_categories(text, doc)
            self._categories = list(dict.fromkeys(learned))
        return self._categories

    def writes(self, pair: str) -> bool:
        """Whether any indexed chunk (or its heading) writes the character pair ``pair``."""
        return self._retriever is not None and pair in self._retriever.vocab_dict

    def unwritten_expenses(self, question: str) -> list[str]:
        """Expenses the question names that no indexed document writes (see ``reading.unwritten_expenses``)."""
        return unwritten_expenses(question, self.writes)

    def scores(self, parts: Sequence[tuple[Sequence[str], float]]) -> np.ndarray:
        """BM25 score of every chunk (in ``rows`` order) for a query of weighted token lists."""
        return weighted_bm25(self._retriever, parts, len(self.rows))

    def search(self, question: str, k: int = 3, *, expand: bool = False) -> list[Hit]:
        """The ``k`` best chunks for ``question``; chunks sharing no token with it are never returned.

        With ``expand`` the question is also asked with the rule terms its everyday words stand for (the
        domain lexicon and the categories these chunks define, see ``tasks.answer.reading.expand``), weighted
        below the question's own words; a chunk matching only those terms can then be returned."""
        if self._retriever is None or k <= 0:
            return []
        if expand:
            scores = self.scores(query_for(question, self.categories()).parts())
        else:
            vocab = self._retriever.vocab_dict
            query_tokens = [t for t in tokens(question) if t in vocab]
            if not query_tokens:
                return []
            scores = np.asarray(self._retriever.get_scores(query_tokens))
        order = np.argsort(-scores, kind="stable")[:k]
        hits = []
        for i in order:
            if scores[i] <= 0:
                break
            chunk_id, doc, heading, text = self.rows[int(i)]
            hits.append(Hit(chunk_id, doc, heading, text, float(scores[i])))
        return hits


def weighted_bm25(
    retriever: bm25s.BM25 | None, parts: Sequence[tuple[Sequence[str], float]], size: int
) -> np.ndarray:
    """BM25 scores of every document of ``retriever`` for a query made of (tokens, weight) parts: the
    weighted sum of each part's scores; tokens the index does not know are skipped."""
    total = np.zeros(size, dtype=np.float64)
    if retriever is None:
        return total
    vocab = retriever.vocab_dict
    for part, weight in parts:
        known = [t for t in part if t in vocab]
        if known and weight:
            total += weight * np.asarray(retriever.get_scores(known), dtype=np.float64)
    return total


def clear_cache() -> None:
    """Forget every cached index (tests; or after deleting documents in place)."""
    _cache.clear()
