"""How many tasks a person must open: row by row (every row waiting for review) vs fact-first (issue #17).

For the sample and for the four corpus PDFs in ../shared/corpus/pdfs: ingest and distil (extractive teacher,
default settings) in a temporary workspace, refresh conflicts as the pre-review gate does, then plan the review
batch (``review.push.plan_batch``: one fact task per source sentence + row tasks; no Label Studio needed). A
simulated person then answers every task (every number of each sentence correct, each row task as the ledger
suggests) through the same code that applies a Label Studio export, and the bench checks, independently of
the code that decided, that every numeric row approved got there through a person: its own row task, or for
every number it states that the question did not give, a fact stating exactly that value whose subject fits
the question and that a person verified. Target: fact-first opens at most 30% as many tasks as there are rows.

    .venv/bin/python bench/review_load.py [--corpus ../shared/corpus/pdfs] [--per-fact N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from review import sync  # noqa: E402
from review.facts import LEDGER, VERIFIED  # noqa: E402
from review.push import plan_batch  # noqa: E402
from runtime.config import load_settings  # noqa: E402
from tasks.distill.distill import distill, make_teacher  # noqa: E402
from tasks.distill.verify import subject_fits  # noqa: E402
from tasks.ingest.documents import ingest_paths  # noqa: E402
from tasks.ingest.facts import Fact  # noqa: E402
from tasks.ingest.numbers import rule_numbers  # noqa: E402
from warehouse import review as queries  # noqa: E402
from warehouse.db import open_warehouse  # noqa: E402
from warehouse.gates import detect_conflicts, send_conflicts_to_review  # noqa: E402

TARGET = 0.30
PERSON = "bench@example.org"


def _choice(verdict: str) -> list[dict[str, Any]]:
    return [{"from_name": "verdict", "to_name": "answer", "type": "choices", "value": {"choices": [verdict]}}]


def unchecked_rows(con: Any) -> list[str]:
    """Numeric rows in the dataset that no person vouched for: not approved by a person's own row verdict,
    and some number of the answer (one the question did not give) without a person-verified fact of the
    row's chunk stating exactly that value whose subject fits the question. Checked here from the tables,
    not through the code that decided (``review.facts``)."""
    verified = {
        fact_id: Fact.from_row(row)
        for fact_id, row in (
            (r[0], dict(zip([d[0] for d in con.description], r, strict=True)))
            for r in con.execute(
                "SELECT f.* FROM facts f JOIN fact_verdicts v USING (fact_id) WHERE v.verdict IN (SELECT unnest(?))",
                [list(VERIFIED)],
            ).fetchall()
        )
    }
    chunk_of = dict(con.execute("SELECT fact_id, chunk_id FROM facts").fetchall())
    out = []
    for row_id, question, answer, chunk_id, reviewer, verdict in con.execute(
        "SELECT row_id, question, answer, chunk_id, reviewer, review_verdict FROM qa_rows"
        " WHERE status IN ('approved', 'corrected', 'auto_verified') AND is_numeric"
    ).fetchall():
        if verdict is not None and reviewer == PERSON:
            continue  # a person's own verdict on this row
        if not (reviewer or "").startswith(LEDGER):
            out.append(row_id)
            continue
        given = {v for m in rule_numbers(question) for v in m.values()}
        stated = [m for m in rule_numbers(answer) if not set(m.values()) <= given]
        vouched = [
            any(
                chunk_of.get(f.fact_id) == chunk_id
                and set(f.values()) == set(m.values())
                and subject_fits(question, f)
                for f in verified.values()
            )
            for m in stated
        ]
        if not stated or not all(vouched):
            out.append(row_id)
    return out


def measure(name: str, paths: list[Path], per_fact: int | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        overrides = {"per_fact": per_fact} if per_fact else {}
        settings = load_settings(Path(tmp) / "ws", **overrides)
        started = time.monotonic()
        with open_warehouse(settings.warehouse_path) as con:
            ingest_paths(con, paths, settings)
            distill(con, settings, make_teacher(settings))
            detect_conflicts(con, settings.similarity_threshold)
            send_conflicts_to_review(con)  # what the pre-review gate does before the flow pushes
            rows = queries.row_count(con)
            waiting = con.execute("SELECT count(*) FROM qa_rows WHERE status = 'needs_review'").fetchone()[0]
            numeric_waiting = con.execute(
                "SELECT count(*) FROM qa_rows WHERE status = 'needs_review' AND is_numeric"
            ).fetchone()[0]
            plan = plan_batch(con, settings.similarity_threshold)
            # A person answers every task of the batch, through the code that applies a Label Studio export.
            queries.create_batch(con, "rb-bench", 1, None, plan.row_ids, plan.fact_tasks, plan.suggested)
            keys: list[list[str]] = [[r] for r in plan.row_ids] + [list(t) for t in plan.fact_tasks]
            queries.set_task_ids(con, "rb-bench", {k: i + 1 for i, ks in enumerate(keys) for k in ks})
            rows_asked = set(plan.row_ids)
            tasks = [
                {
                    "id": i + 1,
                    "data": {"kind": "row", "row_id": ks[0], "batch_id": "rb-bench"}
                    if ks[0] in rows_asked
                    else {"kind": "fact", "fact_id": ks[0], "fact_ids": ks, "batch_id": "rb-bench"},
                    "annotations": [
                        {
                            "id": i + 1,
                            "completed_by": 1,
                            "result": _choice(plan.suggested.get(ks[0], "accept")),
                            "updated_at": "2026-01-01T00:00:00Z",
                        }
                    ],
                }
                for i, ks in enumerate(keys)
            ]
            sync.apply_export(con, "rb-bench", {"users": {"1": PERSON}, "tasks": tasks}, None)
            still = con.execute("SELECT count(*) FROM qa_rows WHERE status = 'needs_review'").fetchone()[0]
            unchecked = len(unchecked_rows(con))
            by_ledger = con.execute(
                "SELECT count(*) FROM qa_rows WHERE reviewer LIKE ? AND status = 'approved'", [LEDGER + "%"]
            ).fetchone()[0]
        return {
            "name": name,
            "rows": rows,
            "waiting": waiting,
            "numeric_waiting": numeric_waiting,
            "row_by_row": waiting,
            "fact_tasks": len(plan.fact_tasks),
            "facts_asked": len(plan.fact_ids),
            "why": plan.why,
            "row_tasks": len(plan.row_ids),
            "fact_first": plan.tasks,
            "share": plan.tasks / rows if rows else 0.0,
            "by_ledger": by_ledger,
            "still_waiting": still,
            "unchecked": unchecked,
            "seconds": time.monotonic() - started,
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "corpus" / "pdfs")
    parser.add_argument("--per-fact", type=int, default=None, help="Questions per fact (default: settings).")
    args = parser.parse_args(argv)
    sets = [("sample", [ROOT / "examples" / "sample_rules.pdf"])]
    pdfs = sorted(args.corpus.glob("*.pdf")) if args.corpus.is_dir() else []
    if pdfs:
        sets.append((f"corpus ({len(pdfs)} PDFs)", pdfs))
    else:
        print(f"{args.corpus}: no PDFs; measuring the sample only", file=sys.stderr)
    results = [measure(name, paths, args.per_fact) for name, paths in sets]
    table = Table(
        "documents",
        "rows",
        "waiting for people",
        "row-by-row tasks",
        "fact tasks",
        "row tasks",
        "fact-first tasks",
        "tasks / rows",
        "approved via verified facts",
        "waiting after review",
        "numeric rows approved without a person",
        title="review load: tasks a person opens (extractive teacher"
        + (f", per_fact {args.per_fact})" if args.per_fact else ", default settings)"),
    )
    ok = True
    for r in results:
        table.add_row(
            r["name"],
            str(r["rows"]),
            str(r["waiting"]),
            f"{r['row_by_row']} ({r['row_by_row'] / r['rows']:.0%})",
            str(r["fact_tasks"]),
            str(r["row_tasks"]),
            str(r["fact_first"]),
            f"{r['share']:.1%}",
            str(r["by_ledger"]),
            str(r["still_waiting"]),
            str(r["unchecked"]),
        )
        ok = ok and r["unchecked"] == 0
    Console(width=200).print(table)
    for r in results:
        verdict = "meets" if r["share"] <= TARGET else "misses"
        print(
            f"{r['name']}: fact-first opens {r['fact_first']} tasks for {r['rows']} rows ({r['share']:.1%}),"
            f" row by row {r['row_by_row']} ({r['row_by_row'] / r['rows']:.1%}); {verdict} the {TARGET:.0%} target;"
            f" {r['unchecked']} numeric rows approved without a person ({r['seconds']:.1f} s)"
        )
        print(
            f"  {r['fact_tasks']} fact tasks (sentences) ask about {r['facts_asked']} facts;"
            f" {r['row_tasks']} row tasks: " + ", ".join(f"{n} {why}" for why, n in r["why"].items())
        )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
