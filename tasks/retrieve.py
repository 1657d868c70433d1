"""Retrieval over the warehouse chunks: BM25 (the ``bm25s`` library) over Chinese character bigrams.

Chinese has no spaces, and a word segmenter brings its own dictionary and its own mistakes on finance terms
(伙食补助费, 专家咨询费); overlapping character bigrams need neither and match those terms well. Latin words
and numbers are kept whole, so "500" or "GB" match as written. Each chunk is indexed with its heading path
(第三章 差旅费 > 第十八条), which names the topic that the chunk text often leaves implicit.

An index is cached per warehouse content (a hash of the chunk ids, which are content hashes), so asking many
questions against the same warehouse builds it once; ingesting a document changes the key.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass

import bm25s
import duckdb
import numpy as np

from tasks.normalize import fold
from warehouse.ledger import chunk_texts

__all__ = ["ChunkIndex", "Hit", "clear_cache", "tokens"]

_CJK_RUN = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]+")
_WORD = re.compile(r"[A-Za-z]+|\d+(?:\.\d+)?")
_CACHE_SIZE = 8  # indexes kept (per doc filter and warehouse content); each is small
_cache: OrderedDict[str, ChunkIndex] = OrderedDict()
_cache_lock = threading.Lock()


@dataclass(frozen=True)
class Hit:
    """One retrieved chunk and its BM25 score (higher is better; only comparable within one query)."""

    chunk_id: str
    doc: str
    heading_path: str
    text: str
    score: float


def tokens(text: str) -> list[str]:
    """Character bigrams of every CJK run (a lone character stands for itself), plus Latin words and numbers."""
    folded = fold(text)
    out: list[str] = []
    for run in _CJK_RUN.findall(folded):
        if len(run) == 1:
            out.append(run)
        else:
            out.extend(run[i : i + 2] for i in range(len(run) - 1))
    out.extend(m.group().lower() for m in _WORD.finditer(folded))
    return out


class ChunkIndex:
    """A BM25 index of the warehouse chunks (optionally of one document)."""

    def __init__(self, rows: list[tuple[str, str, str, str]], key: str) -> None:
        # rows: (chunk_id, doc name, heading_path, text)
        self.rows = rows
        self.key = key
        self._retriever: bm25s.BM25 | None = None
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
        with _cache_lock:
            cached = _cache.get(key)
            if cached is not None:
                _cache.move_to_end(key)
                return cached
        index = cls(rows, key)  # type: ignore[arg-type]
        with _cache_lock:
            _cache[key] = index
            while len(_cache) > _CACHE_SIZE:
                _cache.popitem(last=False)
        return index

    def __len__(self) -> int:
        return len(self.rows)

    def search(self, question: str, k: int = 3) -> list[Hit]:
        """The ``k`` best chunks for ``question``; chunks sharing no token with it are never returned."""
        if self._retriever is None or k <= 0:
            return []
        vocab = self._retriever.vocab_dict
        query = [t for t in tokens(question) if t in vocab]
        if not query:
            return []
        scores = np.asarray(self._retriever.get_scores(query))
        order = np.argsort(-scores, kind="stable")[:k]
        hits = []
        for i in order:
            if scores[i] <= 0:
                break
            chunk_id, doc, heading, text = self.rows[int(i)]
            hits.append(Hit(chunk_id, doc, heading, text, float(scores[i])))
        return hits


def clear_cache() -> None:
    """Forget every cached index (tests; or after deleting documents in place)."""
    with _cache_lock:
        _cache.clear()
