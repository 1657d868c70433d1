"""Retrieval recall and latency on the sample rules, and (with --gguf) grounded answering under the guard.

Retrieval: one question per ledger fact ("<subject>的标准是多少？"), recall@1/3/5 of the fact's chunk, index
build time (first and cached) and search latency. Answering: the first N questions through
``tasks.answer.answer.answer`` with a llama.cpp generator; prints each guard action, the guard counts and seconds
per answer.

    .venv/bin/python bench/answer.py [--file examples/sample_rules.md] [--gguf model.gguf --n 8 --lora a.gguf]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runtime.config import load_settings  # noqa: E402
from tasks.answer.answer import GuardStats, answer  # noqa: E402
from tasks.answer.retrieve import ChunkIndex, clear_cache  # noqa: E402
from tasks.ingest.documents import ingest_file  # noqa: E402
from warehouse.db import open_warehouse  # noqa: E402
from warehouse.ledger import list_facts  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", type=Path, default=ROOT / "examples" / "sample_rules.md")
    parser.add_argument("--gguf", type=Path, help="answer with this GGUF through the guard")
    parser.add_argument("--lora", type=Path, help="a LoRA GGUF for --gguf")
    parser.add_argument("--n", type=int, default=8, help="questions to answer with --gguf")
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    console = Console()
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(Path(tmp) / "ws")
        with open_warehouse(settings.warehouse_path) as con:
            console.print(ingest_file(con, args.file, settings).message)
            clear_cache()
            started = time.perf_counter()
            index = ChunkIndex.build(con)
            build_s = time.perf_counter() - started
            started = time.perf_counter()
            ChunkIndex.build(con)
            cached_s = time.perf_counter() - started
            facts = list_facts(con)
            questions = [(f"{f['subject']}的标准是多少？", f["chunk_id"]) for f in facts]
            found = {1: 0, 3: 0, 5: 0}
            latencies = []
            for question, chunk_id in questions:
                started = time.perf_counter()
                hits = index.search(question, 5)
                latencies.append(time.perf_counter() - started)
                ranked = [h.chunk_id for h in hits]
                for k in found:
                    found[k] += chunk_id in ranked[:k]
            table = Table(title=f"retrieval over {len(index)} chunks, {len(questions)} fact questions")
            for column in (
                "recall@1",
                "recall@3",
                "recall@5",
                "build s",
                "cached build s",
                "search ms (median)",
            ):
                table.add_column(column, justify="right")
            table.add_row(
                *(f"{found[k] / len(questions):.1%}" for k in (1, 3, 5)),
                f"{build_s:.3f}",
                f"{cached_s:.4f}",
                f"{statistics.median(latencies) * 1000:.2f}",
            )
            console.print(table)
            if args.gguf:
                from tasks.answer.serve import LlamaCppGenerator

                generator = LlamaCppGenerator(args.gguf, lora_path=args.lora)
                stats = GuardStats()
                seconds = []
                for question, _ in questions[: args.n]:
                    started = time.perf_counter()
                    result = answer(question, generator, index, con, max_tokens=args.max_tokens, stats=stats)
                    seconds.append(time.perf_counter() - started)
                    console.print(f"[bold]{question}[/] [{result.guard_action}] {result.text[:80]}")
                generator.close()
                console.print(f"guard: {stats.report()}; {statistics.mean(seconds):.1f} s per answer")


if __name__ == "__main__":
    main()
