"""Gate runtime at 1,000, 10,000 and 100,000 rows, and how it grows.

Rows are synthetic but shaped like real ones: templated questions over many subjects and categories
(一类/二类…, 院内/院外), numbers from a ledger, and planted conflicts of every kind (same question with another
number, near-duplicate wording with another number, a number contradicting the quoted fact). Each size runs
conflict detection (MinHash LSH in DuckDB, so candidate pairs grow with the rows, not their square) and the
whole release gate (Great Expectations over pandas). Target: 100,000 rows gated in under 60 s.

    .venv/bin/python bench/gates.py [--sizes 1000,10000,100000]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from expectations.runner import run_gate  # noqa: E402
from runtime.config import load_settings  # noqa: E402
from tests.ledger_seed import fact_in, save_one_chunk  # noqa: E402
from warehouse import gates as queries  # noqa: E402
from warehouse.db import bulk_insert, open_warehouse  # noqa: E402

TARGET_S = 60.0
SUBJECTS = [
    "伙食补助费",
    "市内交通费",
    "住宿费",
    "会议费",
    "培训费",
    "专家咨询费",
    "劳务费",
    "差旅费",
    "印刷费",
    "邮电费",
    "图书资料费",
    "设备购置费",
    "维修费",
    "租赁费",
    "办公用品费",
    "招待费",
    "交通补贴",
    "讲课费",
    "评审费",
    "版面费",
]
TIERS = ["一类", "二类", "三类", "院内", "院外", "校级", "处级", "正高级", "副高级", "其他"]
TEMPLATES = [
    "{s}的标准是多少？",
    "按规定，{s}是多少元？",
    "{s}最多可以报销多少？",
    "{s}的上限是多少？",
    "关于{s}，文件规定的金额是多少？",
    "{s}每人每天多少钱？",
]
CHUNK = "第一条 伙食补助费按每人每天100元包干使用。"


def seed_warehouse(con, rows: int, rng: random.Random) -> int:
    """A document and chunk with one fact, ``rows`` synthetic rows and about 1% planted conflicts."""
    fact = fact_in(CHUNK, "100元", "100", "元/人·天", "伙食补助费", fact_id="f100", chunk_id="c1")
    save_one_chunk(con, CHUNK, [fact], doc_id="d1", chunk_id="c1", name="synthetic.txt", heading="第一条")
    records = []
    planted = 0
    for i in range(rows):
        # Real question sets name many different things: a random 2-4 character item from a common-character
        # range keeps the vocabulary realistic (a tiny vocabulary would make every question look alike).
        item = "".join(chr(rng.randrange(0x4E00, 0x4E00 + 3000)) for _ in range(rng.randrange(2, 5)))
        subject = f"{rng.choice(TIERS)}{item}{rng.choice(SUBJECTS)}"
        question = rng.choice(TEMPLATES).format(s=subject)
        number = str(rng.randrange(1, 5000))
        kind = i % 100
        if kind == 0 and i:  # same question as the previous row, another number
            question, number = records[-1][1], str(int(records[-1][6][0]) + 1)
            planted += 1
        elif kind == 1 and i > 1:  # near duplicate of a row two back, another number
            question = records[-2][1].replace("？", "呢？").replace("多少", "多少钱")
            planted += 1
        is_numeric = i % 5 != 0
        evidence = CHUNK if kind == 2 else f"{subject}按{number}元执行。"
        numbers = [number] if is_numeric else []
        records.append(
            [
                f"r{i:07d}",
                question,
                f"{subject}为{number}元。" if is_numeric else "须附发票。",
                evidence,
                "numeric" if is_numeric else "text",
                is_numeric,
                numbers,
            ]
        )
    bulk_insert(
        con,
        "qa_rows",
        [
            "row_id",
            "question",
            "answer",
            "evidence",
            "kind",
            "is_numeric",
            "numbers",
            "cache_key",
            "chunk_id",
            "doc_id",
            "teacher",
            "evidence_found",
            "grounded",
            "status",
            "reviewer",
        ],
        [[*r, "k", "c1", "d1", "synthetic", True, True, "auto_verified", "auto:ledger"] for r in records],
    )
    return planted


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1000,10000,100000")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    console = Console()
    table = Table(title="gate benchmark (release gate, synthetic rows)")
    for column in (
        "rows",
        "planted",
        "conflicts",
        "conflict detection s",
        "whole gate s",
        "growth vs previous",
    ):
        table.add_column(column, justify="right")
    previous: tuple[int, float] | None = None
    results = []
    for size in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            settings = load_settings(Path(tmp) / "ws")
            with open_warehouse(settings.warehouse_path) as con:
                planted = seed_warehouse(con, size, random.Random(size))
                start = time.perf_counter()
                counts = queries.detect_conflicts(con, settings.similarity_threshold)
                detect_s = time.perf_counter() - start
                start = time.perf_counter()
                run_gate(con, settings, "release")
                gate_s = time.perf_counter() - start
        growth = "-"
        if previous:
            growth = f"{gate_s / previous[1]:.1f}x time for {size / previous[0]:.0f}x rows"
        previous = (size, gate_s)
        results.append((size, gate_s))
        table.add_row(
            f"{size:,}", str(planted), str(sum(counts.values())), f"{detect_s:.2f}", f"{gate_s:.2f}", growth
        )
    console.print(table)
    largest, seconds = results[-1]
    verdict = "meets" if seconds < TARGET_S else "MISSES"
    console.print(
        f"{largest:,} rows gated in {seconds:.1f} s: {verdict} the target of under {TARGET_S:.0f} s"
    )


if __name__ == "__main__":
    main()
