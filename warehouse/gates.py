"""Queries for the quality gates: conflict detection, the frames the suites validate, gate runs, datasets.

Near-duplicate questions are found with MinHash LSH in SQL (32 hashes of character bigrams in 8 bands of 4),
so only rows sharing a band bucket are compared exactly: the work grows with the number of rows, not with
its square.
"""

from __future__ import annotations

import json
from difflib import SequenceMatcher
from typing import Any

import duckdb
import pandas as pd

from warehouse.db import fetch_dicts, transaction
from warehouse.golden import SHADOWED_BY_GOLDEN, normalised

LSH_HASHES = 32
LSH_ROWS_PER_BAND = 4
LSH_COMMON_MIN = 50  # a bigram in more questions than this (and this share of them) is template, not content
LSH_COMMON_SHARE = 0.01


def _lsh_pairs(con: duckdb.DuckDBPyConnection, items_table: str, threshold: float, out_table: str) -> None:
    """Pairs (a, b, similarity) of ``items_table(id, q)`` whose bigram Jaccard similarity >= threshold."""
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE _lsh_grams AS SELECT DISTINCT id, substr(q, i, 2) AS g FROM ("
        f"  SELECT id, q, unnest(range(1, greatest(length(q), 2))) AS i FROM {items_table} WHERE length(q) > 0)"
    )
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _lsh_sizes AS SELECT id, count(*) AS n FROM _lsh_grams GROUP BY id"
    )
    # Bigrams shared by many questions (a template's 的标准是多少) say nothing about which questions are
    # near duplicates, but would put every templated question into the same buckets: they are left out of
    # the signatures (the exact similarity below still counts them).
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _lsh_common AS SELECT g FROM _lsh_grams GROUP BY g"
        f" HAVING count(*) > greatest({LSH_COMMON_MIN}, {LSH_COMMON_SHARE} * (SELECT count(*) FROM _lsh_sizes))"
    )
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE _lsh_bands AS SELECT id, seed // {LSH_ROWS_PER_BAND} AS band,"
        "  hash(list(h ORDER BY seed)) AS bucket FROM ("
        "    SELECT id, s.seed, min(hash(g, s.seed)) AS h"
        f"    FROM (SELECT * FROM _lsh_grams WHERE g NOT IN (SELECT g FROM _lsh_common)),"
        f"      range(0, {LSH_HASHES}) AS s(seed) GROUP BY id, s.seed"
        ") GROUP BY id, band"
    )
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE {out_table} AS"
        " WITH candidates AS (SELECT DISTINCT a.id AS a, b.id AS b FROM _lsh_bands a"
        "   JOIN _lsh_bands b ON a.band = b.band AND a.bucket = b.bucket AND a.id < b.id),"
        " shared AS (SELECT c.a, c.b, count(*) AS inter FROM candidates c"
        "   JOIN _lsh_grams ga ON ga.id = c.a JOIN _lsh_grams gb ON gb.id = c.b AND ga.g = gb.g GROUP BY c.a, c.b)"
        " SELECT s.a, s.b, s.inter / (na.n + nb.n - s.inter) AS similarity FROM shared s"
        " JOIN _lsh_sizes na ON na.id = s.a JOIN _lsh_sizes nb ON nb.id = s.b"
        f" WHERE s.inter / (na.n + nb.n - s.inter) >= {float(threshold)}"
    )
    for table in ("_lsh_grams", "_lsh_sizes", "_lsh_bands", "_lsh_common"):
        con.execute(f"DROP TABLE IF EXISTS {table}")


# Numerals and the category words that tell tiers apart (正/副高级, 院内/院外, 以上/以下).
_NUMERALS = set(
    "0123456789一二三四五六七八九十百千万两零〇甲乙丙丁ABCDEFabcdef正副高中初内外上下前后省市县硕博本专"
)


def _drop_numbered_variants(con: duckdb.DuckDBPyConnection, pairs_table: str) -> None:
    """Near-duplicates that differ only in numerals or tier words ask about different categories
    (一类/三类人员住宿费, 正/副高级), so their numbers may differ. Candidate pairs are few: Python is fine."""
    pairs = con.execute(f"SELECT a, b FROM {pairs_table}").fetchall()
    drop = [(a, b) for a, b in pairs if _differ_only_in_numerals(a, b)]
    if drop:
        frame = pd.DataFrame({"a": [a for a, _ in drop], "b": [b for _, b in drop]})
        con.register("_drop_pairs", frame)
        try:
            con.execute(f"DELETE FROM {pairs_table} WHERE (a, b) IN (SELECT (a, b) FROM _drop_pairs)")
        finally:
            con.unregister("_drop_pairs")


def _differ_only_in_numerals(a: str, b: str) -> bool:
    matcher = SequenceMatcher(None, a, b, autojunk=False)
    changed = [a[i1:i2] + b[j1:j2] for tag, i1, i2, j1, j2 in matcher.get_opcodes() if tag != "equal"]
    return bool(changed) and all(ch in _NUMERALS for piece in changed for ch in piece)


def detect_conflicts(con: duckdb.DuckDBPyConnection, similarity_threshold: float) -> dict[str, int]:
    """Recompute the conflicts table over all rows that are not rejected; returns counts per kind."""
    with transaction(con):
        con.execute("DELETE FROM conflicts")
        con.execute(
            "CREATE OR REPLACE TEMP TABLE _cand AS SELECT row_id, chunk_id, evidence, numbers, fact_ids,"
            f" {normalised('question')} AS q FROM qa_rows WHERE status <> 'rejected'"
        )
        con.execute(
            "INSERT INTO conflicts (conflict_id, kind, row_a, row_b, numbers_a, numbers_b, reason)"
            " SELECT md5('same_question' || a.row_id || b.row_id), 'same_question', a.row_id, b.row_id,"
            "  a.numbers, b.numbers, 'same question, different numbers'"
            " FROM _cand a JOIN _cand b ON a.q = b.q AND a.row_id < b.row_id"
            " WHERE len(a.numbers) > 0 AND len(b.numbers) > 0 AND list_sort(a.numbers) <> list_sort(b.numbers)"
        )
        # Citing a fact means stating its value, or claiming it without stating it: the conflict is one row
        # stating the fact's number while another cites the same fact with a different number.
        con.execute(
            "INSERT INTO conflicts (conflict_id, kind, row_a, row_b, fact_id, numbers_a, numbers_b, reason)"
            " WITH cites AS (SELECT c.row_id, c.numbers, f.fact_id, f.raw,"
            "   len(list_intersect(c.numbers, list_filter([f.value, f.value_max], lambda x: x IS NOT NULL)))"
            "   > 0 AS states_it"
            "   FROM (SELECT row_id, numbers, unnest(fact_ids) AS fact_id FROM _cand) c JOIN facts f USING (fact_id)"
            "   WHERE len(c.numbers) > 0)"
            " SELECT md5('same_fact' || a.row_id || b.row_id || a.fact_id), 'same_fact', a.row_id, b.row_id,"
            "  a.fact_id, a.numbers, b.numbers, 'both cite ledger fact ' || a.raw || ', numbers disagree'"
            " FROM cites a JOIN cites b ON a.fact_id = b.fact_id AND a.row_id < b.row_id"
            " WHERE a.states_it <> b.states_it AND NOT list_has_any(a.numbers, b.numbers)"
            " QUALIFY row_number() OVER (PARTITION BY a.row_id, b.row_id ORDER BY a.fact_id) = 1"
        )
        con.execute(
            "CREATE OR REPLACE TEMP TABLE _questions AS SELECT q AS id, q FROM _cand"
            " WHERE len(numbers) > 0 GROUP BY q"
        )
        _lsh_pairs(con, "_questions", similarity_threshold, "_near")
        _drop_numbered_variants(con, "_near")
        con.execute(
            "INSERT INTO conflicts (conflict_id, kind, row_a, row_b, numbers_a, numbers_b, similarity, reason)"
            " SELECT md5('near_duplicate' || ra.row_id || rb.row_id), 'near_duplicate', ra.row_id, rb.row_id,"
            "  ra.numbers, rb.numbers, n.similarity,"
            "  'near-duplicate questions (similarity ' || round(n.similarity, 2) || '), numbers disagree'"
            " FROM _near n JOIN _cand ra ON ra.q = n.a JOIN _cand rb ON rb.q = n.b"
            " WHERE len(ra.numbers) > 0 AND len(rb.numbers) > 0 AND NOT list_has_any(ra.numbers, rb.numbers)"
            " ON CONFLICT DO NOTHING"
        )
        # A row quoting a fact in its evidence but stating a number that is neither that fact nor any other
        # fact of its chunk contradicts the ledger (the prototype's 5000 where the rule says 30000).
        con.execute(
            "INSERT INTO conflicts (conflict_id, kind, row_a, fact_id, numbers_a, numbers_b, reason)"
            " WITH chunk_values AS (SELECT chunk_id, list(DISTINCT value) || coalesce(list(DISTINCT value_max)"
            "   FILTER (WHERE value_max IS NOT NULL), []) AS vals FROM facts GROUP BY chunk_id),"
            " located AS (SELECT r.*, strpos(c.text, r.evidence) - 1 AS ev_start FROM _cand r"
            "   JOIN chunks c USING (chunk_id) WHERE len(r.numbers) > 0 AND length(r.evidence) > 0)"
            " SELECT md5('contradicts_ledger' || r.row_id || f.fact_id), 'contradicts_ledger', r.row_id,"
            "  f.fact_id, r.numbers, list_filter([f.value, f.value_max], lambda x: x IS NOT NULL),"
            "  'states ' || array_to_string(r.numbers, ',') || ' where the cited source says ' || f.raw"
            " FROM located r JOIN facts f ON f.chunk_id = r.chunk_id"
            " JOIN chunk_values cv ON cv.chunk_id = r.chunk_id"
            " WHERE r.ev_start >= 0 AND f.span_start >= r.ev_start AND f.span_end <= r.ev_start + length(r.evidence)"
            "  AND NOT list_has_any(r.numbers, list_filter([f.value, f.value_max], lambda x: x IS NOT NULL))"
            "  AND len(list_filter(r.numbers, lambda x: NOT list_contains(cv.vals, x))) > 0"
            " ON CONFLICT DO NOTHING"
        )
        for table in ("_cand", "_questions", "_near"):
            con.execute(f"DROP TABLE IF EXISTS {table}")
    return dict(con.execute("SELECT kind, count(*) FROM conflicts GROUP BY kind").fetchall())


def send_conflicts_to_review(con: duckdb.DuckDBPyConnection) -> int:
    """Rows in a conflict are risky: an auto-verified one goes to people instead."""
    row = con.execute(
        "UPDATE qa_rows SET status = 'needs_review', reviewer = NULL, reviewed_at = NULL,"
        " verify_notes = verify_notes || CASE WHEN verify_notes = '' THEN '' ELSE '; ' END || 'in a conflict'"
        " WHERE status = 'auto_verified' AND row_id IN (SELECT row_a FROM conflicts UNION"
        " SELECT row_b FROM conflicts WHERE row_b IS NOT NULL) RETURNING row_id"
    ).fetchall()
    return len(row)


def _frame(con: duckdb.DuckDBPyConnection, where: str, golden_threshold: float) -> pd.DataFrame:
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE _golden_items AS SELECT item_id AS id, {normalised('question')} AS q,"
        " source LIKE 'held_out:%' AS held FROM golden_items"
    )
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE _gate_rows AS SELECT r.*, {normalised('r.question')} AS q"
        f" FROM qa_rows r WHERE {where}"
    )
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _golden_mix AS SELECT 'g:' || id AS id, q FROM _golden_items"
        " UNION ALL SELECT DISTINCT 'r:' || q AS id, q FROM _gate_rows"
    )
    has_golden = con.execute("SELECT count(*) FROM _golden_items").fetchone()
    if has_golden and has_golden[0]:
        _lsh_pairs(con, "_golden_mix", golden_threshold, "_golden_near")
    else:
        con.execute("CREATE OR REPLACE TEMP TABLE _golden_near (a VARCHAR, b VARCHAR, similarity DOUBLE)")
    # Row questions equal or near to a golden question, and whether that golden item was held out from the
    # rows (its paraphrases are then simply not training rows) or came from a user's file (a real leak).
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _golden_hits AS SELECT g.q AS q, g.held FROM _golden_items g"
        " UNION SELECT substr(n.a, 3) AS q, g.held FROM _golden_near n JOIN _golden_items g ON n.b = 'g:' || g.id"
        "  WHERE n.a LIKE 'r:%'"
        " UNION SELECT substr(n.b, 3) AS q, g.held FROM _golden_near n JOIN _golden_items g ON n.a = 'g:' || g.id"
        "  WHERE n.b LIKE 'r:%'"
    )
    # A conflict is resolved when people reviewed every row in it (approved or corrected, not by auto:*).
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _resolved AS SELECT c.conflict_id FROM conflicts c"
        " JOIN qa_rows ra ON ra.row_id = c.row_a LEFT JOIN qa_rows rb ON rb.row_id = c.row_b"
        " WHERE ra.status IN ('approved', 'corrected') AND coalesce(ra.reviewer, 'auto:') NOT LIKE 'auto:%'"
        "  AND (c.row_b IS NULL OR (rb.status IN ('approved', 'corrected')"
        "   AND coalesce(rb.reviewer, 'auto:') NOT LIKE 'auto:%'))"
    )
    frame = con.execute(
        "SELECT r.row_id, d.name AS doc, r.chunk_id, r.question, r.answer, r.evidence, r.kind, r.status,"
        " r.numbers, r.fact_ids, r.is_numeric::INTEGER AS is_numeric, r.grounded,"
        " length(r.question) AS question_length, length(r.answer) AS answer_length,"
        " (r.kind = 'unanswerable' OR length(trim(r.evidence)) > 0) AS evidence_present,"
        " (NOT r.is_numeric OR r.grounded) AS numeric_grounded,"
        " r.status IN ('approved', 'corrected', 'auto_verified') AS reviewed_or_verified,"
        " EXISTS (SELECT 1 FROM conflicts c WHERE (c.row_a = r.row_id OR c.row_b = r.row_id)"
        "   AND c.conflict_id NOT IN (SELECT conflict_id FROM _resolved)) AS in_conflict,"
        " (SELECT first(c.row_b) FROM conflicts c WHERE c.row_a = r.row_id) AS conflict_partner,"
        " EXISTS (SELECT 1 FROM _golden_hits h WHERE h.q = r.q AND NOT h.held) AS golden_overlap,"
        " EXISTS (SELECT 1 FROM _golden_hits h WHERE h.q = r.q AND h.held) AS near_held_out"
        " FROM _gate_rows r JOIN documents d USING (doc_id) ORDER BY r.row_id"
    ).df()
    for table in ("_golden_items", "_gate_rows", "_golden_mix", "_golden_near", "_golden_hits", "_resolved"):
        con.execute(f"DROP TABLE IF EXISTS {table}")
    return frame


def pre_review_frame(con: duckdb.DuckDBPyConnection, golden_threshold: float = 0.8) -> pd.DataFrame:
    """Every candidate row (all statuses)."""
    return _frame(con, "true", golden_threshold)


def release_frame(con: duckdb.DuckDBPyConnection, golden_threshold: float = 0.8) -> pd.DataFrame:
    """The rows that would be trained on: everything not rejected (pending rows fail the gate, not vanish),
    less what the golden set keeps out (its rows, facts of its reading split, phrasings of its recall split)."""
    frame = _frame(con, f"r.status <> 'rejected' AND NOT ({SHADOWED_BY_GOLDEN})", golden_threshold)
    # Paraphrases of a held-out golden question are not trained on (see trainable_rows), so not checked.
    return frame[~frame["near_held_out"]].reset_index(drop=True)


def record_gate_run(
    con: duckdb.DuckDBPyConnection,
    gate_run_id: str,
    gate: str,
    success: bool,
    rows: int,
    report: dict[str, Any],
    data_docs_path: str | None,
) -> None:
    con.execute(
        "INSERT INTO gate_runs (gate_run_id, gate, success, row_count, report, data_docs_path)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        [
            gate_run_id,
            gate,
            success,
            rows,
            json.dumps(report, ensure_ascii=False, default=str),
            data_docs_path,
        ],
    )


def recent_gate_runs(con: duckdb.DuckDBPyConnection, limit: int = 20) -> list[tuple[Any, ...]]:
    """(gate, success, row_count, created_at, report JSON, Data Docs path) of the newest gate runs."""
    return con.execute(
        "SELECT gate, success, row_count, created_at, report, data_docs_path FROM gate_runs"
        " ORDER BY created_at DESC LIMIT ?",
        [limit],
    ).fetchall()


def conflicts_for(con: duckdb.DuckDBPyConnection, limit: int = 20) -> list[dict[str, Any]]:
    cursor = con.execute(
        "SELECT c.kind, c.row_a, c.row_b, c.fact_id, c.numbers_a, c.numbers_b, c.reason,"
        " ra.question AS question_a, rb.question AS question_b FROM conflicts c"
        " JOIN qa_rows ra ON ra.row_id = c.row_a LEFT JOIN qa_rows rb ON rb.row_id = c.row_b"
        f" ORDER BY c.kind, c.row_a LIMIT {int(limit)}"
    )
    return fetch_dicts(cursor)


def dataset_exists(con: duckdb.DuckDBPyConnection, dataset_id: str) -> bool:
    row = con.execute("SELECT count(*) FROM datasets WHERE dataset_id = ?", [dataset_id]).fetchone()
    return bool(row and row[0])


def register_dataset(
    con: duckdb.DuckDBPyConnection, info: dict[str, Any], splits: list[tuple[str, str]]
) -> None:
    with transaction(con):
        con.execute(
            "INSERT INTO datasets (dataset_id, prompt_format, row_count, train_count, valid_count, numeric_share,"
            " counts, gate_run_id, path) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                info["dataset_id"],
                info["prompt_format"],
                info["row_count"],
                info["train_count"],
                info["valid_count"],
                info["numeric_share"],
                json.dumps(info["counts"], ensure_ascii=False),
                info["gate_run_id"],
                info["path"],
            ],
        )
        frame = pd.DataFrame(
            {
                "dataset_id": info["dataset_id"],
                "row_id": [r for r, _ in splits],
                "split": [s for _, s in splits],
            }
        )
        con.register("_dataset_rows", frame)
        try:
            con.execute("INSERT INTO dataset_rows SELECT dataset_id, row_id, split FROM _dataset_rows")
        finally:
            con.unregister("_dataset_rows")


def list_datasets(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    cursor = con.execute(
        "SELECT dataset_id, created_at, row_count, train_count, valid_count, numeric_share, path"
        " FROM datasets ORDER BY created_at DESC"
    )
    return fetch_dicts(cursor)


def trainable_rows(con: duckdb.DuckDBPyConnection, golden_threshold: float = 0.8) -> list[dict[str, Any]]:
    """Rows a dataset is frozen from: reviewed or ledger-verified, never a golden-set question or a near
    paraphrase of a held-out one, never a reading item's fact or a recall item's phrasing (the same rows the
    release gate validated)."""
    frame = release_frame(con, golden_threshold)
    frame = frame[frame["reviewed_or_verified"]]
    return [
        {
            "row_id": r.row_id,
            "question": r.question,
            "answer": r.answer,
            "kind": r.kind,
            "status": r.status,
            "is_numeric": bool(r.is_numeric),
            "doc": r.doc,
            "chunk_id": r.chunk_id,
            "fact_ids": list(r.fact_ids),
        }
        for r in frame.itertuples(index=False)
    ]
