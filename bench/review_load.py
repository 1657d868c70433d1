"""How many tasks a person must open: row by row (every row waiting for review) vs fact-first (issue #17).

For the sample and for the four corpus PDFs in ../shared/corpus/pdfs: ingest and distil (extractive teacher,
default settings) in a temporary workspace, refresh conflicts as the pre-review gate does, then plan the review
batch (``review.push.plan_batch``: fact tasks + row tasks; no Label Studio needed). A simulated person then
answers every task (each fact correct, each row task as the ledger suggests) through the same code that applies
a Label Studio export, and the bench checks that every numeric row approved got there through a person: a
row task, or ledger facts every one of which a person verified. Target: fact-first opens at most 30% as many
tasks as there are rows.

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
from review.facts import LEDGER  # noqa: E402
from review.push import plan_batch  # noqa: E402
from runtime.config import load_settings  # noqa: E402
from tasks.distill.distill import distill, make_teacher  # noqa: E402
from tasks.ingest.documents import ingest_paths  # noqa: E402
from warehouse import review as queries  # noqa: E402
from warehouse.db import open_warehouse  # noqa: E402
from warehouse.gates import detect_conflicts, send_conflicts_to_review  # noqa: E402

TARGET = 0.30
PERSON = "bench@example.org"


def _choice(verdict: str) -> list[dict[str, Any]]:
    return [{"from_name": "verdict", "to_name": "answer", "type": "choices", "value": {"choices": [verdict]}}]


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
            keys = [*plan.row_ids, *plan.fact_ids]
            queries.create_batch(con, "rb-bench", 1, None, plan.row_ids, plan.fact_ids, plan.suggested)
            queries.set_task_ids(con, "rb-bench", {k: i + 1 for i, k in enumerate(keys)})
            facts = set(plan.fact_ids)
            tasks = [
                {
                    "id": i + 1,
                    "data": {"kind": "fact", "fact_id": k, "batch_id": "rb-bench"}
                    if k in facts
                    else {"kind": "row", "row_id": k, "batch_id": "rb-bench"},
                    "annotations": [
                        {
                            "id": i + 1,
                            "completed_by": 1,
                            "result": _choice("accept" if k in facts else plan.suggested.get(k, "accept")),
                            "updated_at": "2026-01-01T00:00:00Z",
                        }
                    ],
                }
                for i, k in enumerate(keys)
            ]
            sync.apply_export(con, "rb-bench", {"users": {"1": PERSON}, "tasks": tasks}, None)
            still = con.execute("SELECT count(*) FROM qa_rows WHERE status = 'needs_review'").fetchone()[0]
            # Every approved numeric row: a person's row verdict, or every cited fact verified by a person.
            unchecked = con.execute(
                "SELECT count(*) FROM qa_rows r WHERE r.status IN ('approved', 'corrected') AND r.is_numeric"
                " AND r.reviewer IS DISTINCT FROM ? AND NOT (r.reviewer LIKE ? AND len(r.fact_ids) > 0"
                "  AND NOT EXISTS (SELECT 1 FROM unnest(r.fact_ids) AS u(f) WHERE u.f NOT IN"
                "   (SELECT fact_id FROM fact_verdicts WHERE verdict IN ('correct', 'corrected'))))",
                [PERSON, LEDGER + "%"],
            ).fetchone()[0]
            by_ledger = con.execute(
                "SELECT count(*) FROM qa_rows WHERE reviewer LIKE ? AND status = 'approved'", [LEDGER + "%"]
            ).fetchone()[0]
        return {
            "name": name,
            "rows": rows,
            "waiting": waiting,
            "numeric_waiting": numeric_waiting,
            "row_by_row": waiting,
            "fact_tasks": len(plan.fact_ids),
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
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
