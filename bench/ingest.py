"""Ingest speed against raw PyMuPDF text extraction, side by side in one process.

The corpus PDFs (../shared/corpus/pdfs, or --pdfs DIR) are repeated until at least --min-pages pages, each
copy made distinct by a trailing PDF comment so that content-hash dedupe cannot skip it. Two baselines open
each copy with PyMuPDF: one extracts every page's text; the other also runs ``find_tables`` on the pages whose
drawn lines make a grid (what the ingest itself asks PyMuPDF for since it reads rate tables). Ours runs the
whole ingest (extract with tables, normalise, chunk, parse numbers, build facts, write DuckDB) into a fresh
warehouse. Target: at most 2x what PyMuPDF alone spends on the same text and tables (our own overhead);
both ratios are printed. Table detection is PyMuPDF's per-character Python and roughly triples PyMuPDF's
own time on these PDFs (pages without a ruled grid are not searched).

Then the three routes side by side, each whole ingests into a fresh warehouse: the text route (the corpus run
above), the table route (the project's rate-table PDF, tests/data/make_rate_tables.py, in distinct copies:
ruled tables found and written as row lines) and the OCR route (examples/sample_rules.pdf rendered to images
at the OCR resolution and saved as an image-only PDF), with the OCR route's recall of the text route's
(value, unit, subject) over the same pages. ``--dpi-sweep`` also times OCR of one page at 150/200/300 dpi
and how much of its text layer each reads.

    .venv/bin/python bench/ingest.py [--min-pages 500] [--pdfs DIR] [--table-copies 10] [--ocr-pages 7]
        [--dpi-sweep]
"""

from __future__ import annotations

import argparse
import difflib
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
from tasks.ingest.ocr import OCR_DPI, read_page  # noqa: E402
from tasks.ingest.tables import ruled_grid  # noqa: E402
from tests.data.make_rate_tables import rate_table_pdf  # noqa: E402
from warehouse import ledger  # noqa: E402
from warehouse.db import open_warehouse  # noqa: E402

SAMPLE_PDF = ROOT / "examples" / "sample_rules.pdf"

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


def baseline_with_tables(copies: list[Path]) -> float:
    """What PyMuPDF alone costs for what the ingest reads from a PDF: every page's text, and ``find_tables`` on
    the pages whose drawn lines make a grid (the same pages the table route searches)."""
    start = time.perf_counter()
    for copy in track(copies, description="PyMuPDF text+tables", transient=True):
        with pymupdf.open(copy) as doc:
            for page in doc:
                page.get_text("text")
                drawings = page.get_cdrawings()
                if drawings and ruled_grid(drawings):
                    page.find_tables(use_layout=False)
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
    parser.add_argument("--table-copies", type=int, default=10, help="copies of the rate-table PDF")
    parser.add_argument("--ocr-pages", type=int, default=7, help="pages of the sample read by OCR")
    parser.add_argument("--dpi-sweep", action="store_true", help="also time OCR at 150/200/300 dpi")
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
        raw_runs, table_runs, our_runs = [], [], []
        for round_no in range(args.rounds):  # alternate the three so machine noise hits all alike
            raw_runs.append(baseline(copies))
            table_runs.append(baseline_with_tables(copies))
            seconds, facts = ours(copies, tmp_path / f"ws{round_no}")
            our_runs.append(seconds)
    raw_seconds, our_seconds = statistics.median(raw_runs), statistics.median(our_runs)
    tables_seconds = statistics.median(table_runs)
    ratio = our_seconds / tables_seconds
    title = f"ingest benchmark: {len(copies)} files, {pages} pages, median of {args.rounds} rounds"
    table = Table(title=title)
    for column in ("run", "seconds", "pages/s", "facts/s", "ratio to PyMuPDF text", "ratio to text+tables"):
        table.add_column(column, justify="right")
    table.add_row(
        "PyMuPDF text only", f"{raw_seconds:.2f}", f"{pages / raw_seconds:.0f}", "-", "1.00x",
        f"{raw_seconds / tables_seconds:.2f}x",
    )  # fmt: skip
    table.add_row(
        "PyMuPDF text + find_tables", f"{tables_seconds:.2f}", f"{pages / tables_seconds:.0f}", "-",
        f"{tables_seconds / raw_seconds:.2f}x", "1.00x",
    )  # fmt: skip
    table.add_row(
        "slm ingest (all stages + DuckDB)", f"{our_seconds:.2f}", f"{pages / our_seconds:.0f}",
        f"{facts / our_seconds:.0f}", f"{our_seconds / raw_seconds:.2f}x", f"{ratio:.2f}x",
    )  # fmt: skip
    console.print(table)
    verdict = "meets" if ratio <= TARGET_RATIO else "MISSES"
    console.print(
        f"{facts} facts; ratio to what PyMuPDF alone spends on the same text and tables {ratio:.2f}x {verdict} "
        f"the target of at most {TARGET_RATIO:.0f}x"
    )

    with tempfile.TemporaryDirectory() as tmp:
        routes = route_runs(Path(tmp), args.table_copies, args.ocr_pages)
    table = Table(title="ingest by route (whole ingest into a fresh warehouse)")
    for column in ("route", "input", "pages", "seconds", "pages/s", "facts", "ingest message (last file)"):
        table.add_column(
            column, justify="right" if column in ("pages", "seconds", "pages/s", "facts") else "left"
        )
    table.add_row(
        "text", f"corpus PDFs ({len(copies)} files)", str(pages), f"{our_seconds:.2f}",
        f"{pages / our_seconds:.1f}", str(facts), "",
    )  # fmt: skip
    for run in routes["runs"]:
        table.add_row(
            run["route"], run["input"], str(run["pages"]), f"{run['seconds']:.2f}",
            f"{run['pages'] / run['seconds']:.2f}", str(run["facts"]), run["message"],
        )  # fmt: skip
    console.print(table)
    recall = routes["recall"]
    console.print(
        f"OCR route recall of the text route's (value, unit, subject) on the same {args.ocr_pages} pages:"
        f" {recall['hit']}/{recall['expected']} = {recall['hit'] / recall['expected']:.3f}"
        f" (OCR read {recall['read']} distinct facts); missed: {recall['missed'][:8]}"
    )
    if args.dpi_sweep:
        dpi_sweep(console)


def _scan_of(src: Path, out: Path, pages: int, dpi: int = OCR_DPI) -> Path:
    """An image-only PDF of the first ``pages`` pages of ``src``, each rendered at ``dpi``: a scan."""
    with pymupdf.open(src) as doc, pymupdf.open() as scan:
        for page in list(doc)[:pages]:
            image = scan.new_page(width=page.rect.width, height=page.rect.height)
            image.insert_image(image.rect, pixmap=page.get_pixmap(dpi=dpi))
        scan.save(out)
    return out


def _ingest_timed(
    paths: list[Path], workspace: Path
) -> tuple[float, int, int, str, set[tuple[str, str, str]]]:
    """(seconds, pages, facts, the last message, (value, unit, subject) of the facts) of ingesting ``paths``."""
    settings = load_settings(workspace)
    pages = facts = 0
    message = ""
    triples: set[tuple[str, str, str]] = set()
    with open_warehouse(settings.warehouse_path) as con:
        start = time.perf_counter()
        for path in paths:
            result = ingest_file(con, path, settings)
            if result.status != "added":
                raise SystemExit(f"bench: {result.message}")
            pages, facts, message = pages + result.pages, facts + result.facts, result.message
        seconds = time.perf_counter() - start
        for path in paths:
            triples |= {(f["value"], f["unit"], f["subject"]) for f in ledger.list_facts(con, path.name)}
    return seconds, pages, facts, message.split(": ", 1)[-1], triples


def route_runs(tmp: Path, table_copies: int, ocr_pages: int) -> dict:
    """The table and OCR routes, and the text route on the OCR route's pages for its recall."""
    (tmp / "tables").mkdir()
    tables = []
    for i in range(table_copies):  # distinct bytes, so content-hash dedupe reads each copy
        copy = tmp / "tables" / f"rates_{i:02d}.pdf"
        copy.write_bytes(rate_table_pdf() + f"\n%bench copy {i}\n".encode())
        tables.append(copy)
    runs = []
    seconds, pages, facts, message, _ = _ingest_timed(tables, tmp / "ws-tables")
    runs.append(dict(route="tables", input=f"rate-table PDF x{table_copies}", pages=pages, seconds=seconds,
                     facts=facts, message=message))  # fmt: skip
    with pymupdf.open(SAMPLE_PDF) as doc:
        text_only = tmp / "sample_text.pdf"
        with pymupdf.open() as part:
            part.insert_pdf(doc, from_page=0, to_page=ocr_pages - 1)
            part.save(text_only)
    scan = _scan_of(SAMPLE_PDF, tmp / "sample_scan.pdf", ocr_pages)
    seconds, pages, facts, message, read = _ingest_timed([scan], tmp / "ws-ocr")
    runs.append(dict(route="ocr", input=f"sample rules scanned at {OCR_DPI} dpi", pages=pages, seconds=seconds,
                     facts=facts, message=message))  # fmt: skip
    _, _, _, _, expected = _ingest_timed([text_only], tmp / "ws-text")
    recall = {
        "expected": len(expected),
        "read": len(read),
        "hit": len(expected & read),
        "missed": sorted(expected - read),
    }
    return {"runs": runs, "recall": recall}


def dpi_sweep(console: Console, page_no: int = 1) -> None:
    """OCR of one page of the sample at several resolutions: time and the share of its text layer read."""
    table = Table(title=f"OCR of sample page {page_no + 1} by resolution")
    for column in ("dpi", "image px", "seconds", "mean confidence", "text-layer similarity"):
        table.add_column(column, justify="right")
    with pymupdf.open(SAMPLE_PDF) as doc:
        page = doc[page_no]
        truth = "".join(page.get_text("text").split())
        for dpi in (150, 200, 300):
            with pymupdf.open() as scan:
                image = scan.new_page(width=page.rect.width, height=page.rect.height)
                pix = page.get_pixmap(dpi=dpi)
                image.insert_image(image.rect, pixmap=pix)
                start = time.perf_counter()
                read = read_page(scan[0], dpi=dpi)
                seconds = time.perf_counter() - start
            text = "".join(read.text.split())
            similarity = difflib.SequenceMatcher(None, truth, text).ratio()
            table.add_row(str(dpi), f"{pix.width}x{pix.height}", f"{seconds:.1f}", f"{read.confidence:.3f}",
                          f"{similarity:.3f}")  # fmt: skip
    console.print(table)


if __name__ == "__main__":
    main()
