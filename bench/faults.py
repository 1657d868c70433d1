"""Fault injection: what was tried and what was lost, as a table (issue #10; the README quotes it).

Runs the scenarios of ``tests/reliability`` (the same functions the tests assert on), each in a fresh
folder: kill -9 during every stage, dead and slow dependencies (teacher faults, Label Studio and Prefect
stopped), two processes on one workspace, hostile input, secrets, and hostile uploads and requests against
the web app (issue #18; their per-file and per-request outcomes are printed under each). Everything under
"lost" must be 0.

    .venv/bin/python bench/faults.py [--only SUBSTRING] [--json FILE]

The slow scenarios start real Label Studio and Prefect servers and train tiny models: about 15 minutes on
two cores.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from tests.reliability.outcome import FaultOutcome  # noqa: E402

MODULES = ("crashes", "deps", "concurrency", "hostile", "security", "web")


def _scenarios(only: str | None) -> list[tuple[str, object]]:
    found = []
    for name in MODULES:
        module = importlib.import_module(f"tests.reliability.scenarios_{name}")
        for scenario in module.SCENARIOS:
            label = f"{name}: {scenario.__name__}"
            if not only or only in label:
                found.append((label, scenario))
    return found


def _faults(counts: Counter[str]) -> str:
    return ", ".join(f"{kind} ×{n}" for kind, n in counts.most_common()) or "-"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default=None, help="run the scenarios whose module: name contains this")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    console = Console(highlight=False, width=160)
    results: list[tuple[str, FaultOutcome, float]] = []
    for label, scenario in _scenarios(args.only):
        console.print(f"[bold]{label}[/bold] ...")
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="slm-faults-") as tmp:
            try:
                outcome = scenario(Path(tmp))
            except Exception as exc:  # a scenario that breaks is a finding, not a reason to stop the table
                outcome = FaultOutcome(label, problems=[f"{type(exc).__name__}: {exc}"])
                console.print(traceback.format_exc(limit=3), style="dim")
        elapsed = time.monotonic() - started
        results.append((label, outcome, elapsed))
        verdict = "ok" if outcome.passed else "FAILED: " + "; ".join(outcome.problems)[:300]
        console.print(f"  {verdict} ({elapsed:.0f} s)")
        for line in getattr(outcome, "details", ()):  # what each hostile file or request got (web scenarios)
            console.print(f"    {line}", style="dim", markup=False)

    table = Table(title="fault injection: what was tried and what was lost")
    for column in (
        "scenario",
        "faults injected",
        "runs completed",
        "rows lost",
        "annotations lost",
        "duplicates",
        "secrets found",
        "result",
        "s",
    ):
        table.add_column(column, overflow="fold")
    total_faults: Counter[str] = Counter()
    for label, o, elapsed in results:
        total_faults.update(o.faults)
        table.add_row(
            f"{label}\n[dim]{o.scenario}[/dim]",
            _faults(o.faults),
            str(o.runs_completed),
            str(o.rows_lost),
            str(o.annotations_lost),
            str(o.duplicates),
            str(o.secrets_found),
            "ok" if o.passed else "FAILED",
            f"{elapsed:.0f}",
        )
    passed = sum(o.passed for _, o, _ in results)
    table.add_row(
        "[bold]total[/bold]",
        f"{sum(total_faults.values())} faults of {len(total_faults)} kinds",
        str(sum(o.runs_completed for _, o, _ in results)),
        str(sum(o.rows_lost for _, o, _ in results)),
        str(sum(o.annotations_lost for _, o, _ in results)),
        str(sum(o.duplicates for _, o, _ in results)),
        str(sum(o.secrets_found for _, o, _ in results)),
        f"{passed}/{len(results)} ok",
        f"{sum(e for _, _, e in results):.0f}",
    )
    console.print(table)
    if args.json:
        args.json.write_text(
            json.dumps(
                [
                    {
                        "scenario": label,
                        "description": o.scenario,
                        "faults": dict(o.faults),
                        "runs_completed": o.runs_completed,
                        "rows_lost": o.rows_lost,
                        "annotations_lost": o.annotations_lost,
                        "duplicates": o.duplicates,
                        "secrets_found": o.secrets_found,
                        "problems": o.problems,
                        "details": getattr(o, "details", []),
                        "passed": o.passed,
                        "seconds": round(elapsed, 1),
                    }
                    for label, o, elapsed in results
                ],
                ensure_ascii=False,
                indent=2,
            ),
            encoding="utf-8",
        )
    return 0 if results and passed == len(results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
