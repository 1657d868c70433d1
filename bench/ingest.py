"""Ingest speed against raw PyMuPDF text extraction, side by side in one process.

The corpus PDFs (../shared/corpus/pdfs, or --pdfs DIR) are repeated until at least --min-pages pages, each
copy made distinct by a trailing PDF comment so that content-hash dedupe cannot skip it. The baseline opens
each copy and extracts every page's text with PyMuPDF; ours runs the whole ingest (extract, normalise,
chunk, parse numbers, build facts, write DuckDB) into a fresh warehouse. Target: at most 2x the baseline.

    .venv/bin/python bench/ingest.py [--min-pages 500] [--pdfs DIR]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pymupdf
from rich.console import Console
from rich.progress import track
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runtime.config import load_settings  # noqa: E402
from tasks.ingest.documents import ingest_file  # noqa: E402
from warehouse.db import open_warehouse  # noqa: E402

TARGET_RATIO = 2.0


def make_copies(pdfs: list[Path], min_pages: int, out: Path) -> tuple[list[Path], int]:
    copies: list[Path] = []
    pages = 0
    round_no = 0
    while pages < min_pages:
        for pdf in pdfs:
            data = pdf.read_bytes() + f"\n%bench copy {round_no}\n".encode()
            copy = out / f"{round_no:03d}_{pdf.name}"
            copy.write_bytes(data)
            copies.append(copy)
            with pymupdf.open(copy) as doc:
                pages += doc.page_count
        round_no += 1
    return copies, pages


def baseline(copies: list[Path]) -> float:
    start = time.perf_counter()
    for copy in track(copies, description="PyMuPDF only", transient=True):
        with pymupdf.open(copy) as doc:
            for page in doc:
                page.get_text("text")
    return time.perf_counter() - start


def ours(copies: list[Path], workspace: Path) -> tuple[float, int]:
    """Whole ingest into a fresh warehouse at ``workspace``; returns (seconds, facts written)."""
    settings = load_settings(workspace)
    facts = 0
    start = time.perf_counter()
    with open_warehouse(settings.warehouse_path) as con:
        for copy in track(copies, description="slm ingest", transient=True):
            result = ingest_file(con, copy, settings)
            if result.status != "added":
                raise SystemExit(f"bench: {result.message}")
            facts += result.facts
    return time.perf_counter() - start, facts


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--min-pages", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pdfs", type=Path, default=ROOT.parent / "shared" / "corpus" / "pdfs")
    args = parser.parse_args()
    pdfs = sorted(args.pdfs.glob("*.pdf"))
    if not pdfs:
        raise SystemExit(f"bench: no PDFs in {args.pdfs}")
    console = Console()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        (tmp_path / "in").mkdir()
        copies, pages = make_copies(pdfs, args.min_pages, tmp_path / "in")
        baseline(copies[:2])  # warm the OS cache and PyMuPDF's font tables for both runs alike
        raw_runs, our_runs = [], []
        for round_no in range(args.rounds):  # alternate the two so machine noise hits both alike
            raw_runs.append(baseline(copies))
            seconds, facts = ours(copies, tmp_path / f"ws{round_no}")
            our_runs.append(seconds)
    raw_seconds, our_seconds = statistics.median(raw_runs), statistics.median(our_runs)
    ratio = our_seconds / raw_seconds
    title = f"ingest benchmark: {len(copies)} files, {pages} pages, median of {args.rounds} rounds"
    table = Table(title=title)
    for column in ("run", "seconds", "pages/s", "facts/s", "ratio to PyMuPDF"):
        table.add_column(column, justify="right")
    table.add_row("PyMuPDF text only", f"{raw_seconds:.2f}", f"{pages / raw_seconds:.0f}", "-", "1.00x")
    table.add_row(
        "slm ingest (all stages + DuckDB)",
        f"{our_seconds:.2f}",
        f"{pages / our_seconds:.0f}",
        f"{facts / our_seconds:.0f}",
        f"{ratio:.2f}x",
    )
    console.print(table)
    verdict = "meets" if ratio <= TARGET_RATIO else "MISSES"
    console.print(f"{facts} facts; ratio {ratio:.2f}x {verdict} the target of at most {TARGET_RATIO:.0f}x")


if __name__ == "__main__":
    main()
