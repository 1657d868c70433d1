"""Does retrieval find the *fact* a staff question asks for? Recall@1/3/5 on the hand-phrased question sets.

Two sets, numeric items only: ``examples/sample_questions.jsonl`` over ``examples/sample_rules.pdf``, and
``../shared/questions/dev_questions.jsonl`` over ``../shared/corpus/text/univ_sdvcst_{travel,reimbursement,
research_funds}.txt`` (each set ingested into its own temporary workspace). Three retrievers side by side:

- ``chunk``: today's chunk BM25 (``ChunkIndex.search``); a hit at k = one of the top k chunks holds a ledger
  fact of the item's document that states an expected number;
- ``chunk+exp``: the same with the question expanded (``ChunkIndex.search(..., expand=True)``);
- ``fact``: ``FactIndex.search``; a hit at k = one of the top k facts states an expected number.

A fact "states" an expected number as ``tasks.evaluate.evaluate`` scores answers (its raw text read by the one number
parser, value, unit and scale as the reference answer writes them, a range stating two expected ends).
``reachable`` counts the items where some fact of the document states an expected number at all (the ceiling
for every column: a number the ledger does not hold, such as a time of day, cannot be retrieved as a fact).

    .venv/bin/python bench/retrieval.py [--misses]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runtime.config import load_settings  # noqa: E402
from tasks.answer.fact_retrieve import FactIndex  # noqa: E402
from tasks.answer.fact_retrieve import clear_cache as clear_fact_cache  # noqa: E402
from tasks.answer.retrieve import ChunkIndex, clear_cache  # noqa: E402
from tasks.evaluate.evaluate import EvalItem, expected_numbers, load_questions, states  # noqa: E402
from tasks.ingest.documents import ingest_file  # noqa: E402
from tasks.ingest.numbers import NumberMention, canonical  # noqa: E402
from warehouse.db import open_warehouse  # noqa: E402
from warehouse.ledger import list_facts  # noqa: E402

KS = (1, 3, 5)
CORPUS_TEXT = ROOT.parent / "shared" / "corpus" / "text"
SETS = {
    "sample": (ROOT / "examples" / "sample_questions.jsonl", [ROOT / "examples" / "sample_rules.pdf"]),
    "dev": (
        ROOT.parent / "shared" / "questions" / "dev_questions.jsonl",
        [CORPUS_TEXT / f"univ_sdvcst_{name}.txt" for name in ("travel", "reimbursement", "research_funds")],
    ),
}


@dataclass(frozen=True)
class LedgerFact:
    fact_id: str
    doc: str
    chunk_id: str
    raw: str
    subject: str
    mention: NumberMention  # the fact's value, range end and unit as the number parser reads a quantity


def ledger_fact(row: dict) -> LedgerFact:
    value_max = Decimal(row["value_max"]) if row["value_max"] is not None else None
    mention = NumberMention(
        Decimal(row["value"]),
        value_max,
        row["unit"],
        row["qualifier"],
        row["raw"],
        0,
        len(row["raw"]),
        "quantity",
    )
    return LedgerFact(row["fact_id"], row["doc"], row["chunk_id"], row["raw"], row["subject"], mention)


def fact_states(item: EvalItem, fact: LedgerFact) -> bool:
    """Whether ``fact`` (of the item's document) states one of the item's expected numbers, compared as
    ``tasks.evaluate.evaluate`` compares an answer's number: same value (or the number as written before 万), a range
    only as the same range or as two expected ends, the same main unit when both carry one."""
    if item.doc and fact.doc != item.doc:
        return False
    wanted = expected_numbers(item)
    if any(states(fact.mention, e) for e in wanted):
        return True
    m = fact.mention
    if m.value_max is None:
        return False
    ends = {canonical(m.value), canonical(m.value_max)}
    return len(ends & {canonical(e.value) for e in wanted if e.value_max is None}) == 2


def recall(
    items: Sequence[EvalItem], ranked: Callable[[EvalItem], list[list[LedgerFact]]], misses: list[str] | None
) -> dict[int, int]:
    """Hits at each k: ``ranked(item)`` gives, per rank, the facts that rank brings (a chunk brings all its
    facts, a fact itself)."""
    found = dict.fromkeys(KS, 0)
    for item in items:
        groups = ranked(item)
        first = next((r for r, group in enumerate(groups) if any(fact_states(item, f) for f in group)), None)
        for k in KS:
            found[k] += first is not None and first < k
        if misses is not None and (first is None or first >= 3):
            misses.append(f"  {item.id}: {item.question} (want {', '.join(item.numbers)})")
            for group in groups[:3]:
                misses.append("      " + " / ".join(f"{f.raw} [{f.subject}]" for f in group[:4]))
    return found


def run_set(name: str, questions: Path, docs: list[Path], show_misses: bool) -> list[tuple[str, str]]:
    items = [i for i in load_questions(questions) if i.type == "numeric"]
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(Path(tmp) / "ws")
        with open_warehouse(settings.warehouse_path) as con:
            for doc in docs:
                result = ingest_file(con, doc, settings)
                if result.status == "failed":
                    raise SystemExit(result.message)
            clear_cache()
            clear_fact_cache()
            facts = [ledger_fact(r) for r in list_facts(con)]
            by_chunk: dict[str, list[LedgerFact]] = {}
            for fact in facts:
                by_chunk.setdefault(fact.chunk_id, []).append(fact)
            of_id = {f.fact_id: f for f in facts}
            chunks = ChunkIndex.build(con)
            started = time.perf_counter()
            index = FactIndex.build(con)
            build_s = time.perf_counter() - started
            reachable = sum(any(fact_states(item, f) for f in facts) for item in items)

            def chunk_ranked(expand: bool) -> Callable[[EvalItem], list[list[LedgerFact]]]:
                def ranked(item: EvalItem) -> list[list[LedgerFact]]:
                    hits = chunks.search(item.question, max(KS), expand=expand)
                    return [by_chunk.get(h.chunk_id, []) for h in hits]

                return ranked

            def fact_ranked(item: EvalItem) -> list[list[LedgerFact]]:
                return [[of_id[h.fact.fact_id]] for h in index.search(item.question, max(KS))]

            misses: list[str] | None = [] if show_misses else None
            results = {
                "chunk": recall(items, chunk_ranked(False), None),
                "chunk+exp": recall(items, chunk_ranked(True), None),
                "fact": recall(items, fact_ranked, misses),
            }
            started = time.perf_counter()
            for item in items:
                index.search(item.question, 5)
            search_ms = (time.perf_counter() - started) / max(len(items), 1) * 1000
    n = len(items)
    for retriever, found in results.items():
        cells = "  ".join(f"{found[k]:>2}/{n} {found[k] / n:>4.0%}" for k in KS)
        rows.append((f"{name:<7} {retriever:<10}", cells))
    print(
        f"{name}: {n} numeric items, {reachable} reachable (some fact of the document states the number); "
        f"{len(facts)} facts, {len(chunks)} chunks; fact index built in {build_s * 1000:.0f} ms, "
        f"{search_ms:.1f} ms a search"
    )
    if misses:
        print(f"{name}: fact retrieval misses at k=3 (top 3 facts shown)")
        print("\n".join(misses))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--misses", action="store_true", help="list the items fact retrieval misses at k=3")
    parser.add_argument("--set", choices=sorted(SETS), action="append", help="only this set (repeatable)")
    args = parser.parse_args()
    table: list[tuple[str, str]] = []
    for name in args.set or list(SETS):
        questions, docs = SETS[name]
        if not questions.exists() or not all(d.exists() for d in docs):
            print(f"{name}: skipped ({questions} or its documents are not here)")
            continue
        table += run_set(name, questions, docs, args.misses)
    print()
    print(f"{'set     retriever':<18}  " + "  ".join(f"{'recall@' + str(k):>9}" for k in KS))
    for label, cells in table:
        print(f"{label}  {cells}")


if __name__ == "__main__":
    main()
