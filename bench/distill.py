"""Distillation speed: the extractive teacher's rows per second over the corpus, and a model teacher's
concurrent speed-up against a local fake Gemini server with fixed latency, side by side in one process.

The fake server speaks the Gemini REST protocol to the real google-genai client (tests/fakes); each call
sleeps ``--latency`` seconds, as a remote model would. The sequential run (concurrency 1) and the concurrent
run (``--concurrency``, default 8) distil the same chunks into separate workspaces. Target: at least 5x.

The Dask run (the ``dask`` extra) distils the same chunks again as Prefect tasks on a local Dask cluster of
``--dask-workers`` processes (one thread each; every batch of ``distill_batch_chunks`` chunks calls the model
``--concurrency`` at a time, as the threaded run does), through ``flows.distill_fan_out``, the path
``distill_runner = "dask"`` takes; the cluster is started before the clock (its start is printed apart), and
the flow runs against a temporary Prefect server. It runs twice on the same cluster, into two fresh
workspaces: the first run pays for each worker process's first import of Prefect and the teacher's client,
the second shows the warm cluster. Its ratio is the threaded run's time over its own.

    .venv/bin/python bench/distill.py [--latency 0.1] [--concurrency 8] [--chunks 96] [--dask-workers 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # offline: no telemetry

from runtime.config import Settings, load_settings  # noqa: E402
from tasks.distill.distill import distill, make_teacher  # noqa: E402
from tasks.ingest.documents import ingest_file  # noqa: E402
from tests.fakes.gemini_server import FakeGeminiServer  # noqa: E402
from warehouse.db import open_warehouse  # noqa: E402

TARGET_SPEEDUP = 5.0
BENCH_KEYS = "bench-key-one,bench-key-two"


def corpus_files() -> list[Path]:
    texts = sorted((ROOT.parent / "shared" / "corpus" / "text").glob("*.txt"))
    return texts or [ROOT / "examples" / "sample_rules.md"]


def extractive_rate(workspace: Path) -> tuple[int, float]:
    settings = load_settings(workspace)
    with open_warehouse(settings.warehouse_path) as con:
        for path in corpus_files():
            ingest_file(con, path, settings)
        start = time.perf_counter()
        summary = distill(con, settings, make_teacher(settings, "extractive"))
        return summary.rows_added, time.perf_counter() - start


def gemini_run(workspace: Path, base_url: str, concurrency: int, chunks: int) -> tuple[float, int, int]:
    settings = load_settings(
        workspace,
        gemini_base_url=base_url,
        gemini_api_keys=BENCH_KEYS,
        distill_concurrency=concurrency,
        unanswerable_share=0.0,
    )
    with open_warehouse(settings.warehouse_path) as con:
        for path in [ROOT / "examples" / "sample_rules.md", *corpus_files()]:
            ingest_file(con, path, settings)
        start = time.perf_counter()
        summary = distill(con, settings, make_teacher(settings, "gemini"), limit=chunks)
        return time.perf_counter() - start, summary.usage.calls, summary.failed


def dask_run(
    workspace: Path, base_url: str, concurrency: int, chunks: int, workers: int
) -> tuple[float, float, float, int, int]:
    """The fan-out on a local cluster of ``workers`` processes, twice on the same cluster into two fresh
    workspaces (the first pays for each worker's first imports of Prefect and the teacher's client):
    (cluster start s, first run s, second run s, calls, failed) with the second run's calls and failures."""
    from distributed import LocalCluster
    from prefect.testing.utilities import prefect_test_harness

    from flows.distill_fan_out import dask_task_runner, distill_fan_out

    def prepared(folder: Path) -> Settings:
        settings = load_settings(
            folder,
            gemini_base_url=base_url,
            gemini_api_keys=BENCH_KEYS,
            distill_concurrency=concurrency,
            unanswerable_share=0.0,
            teacher="gemini",
            distill_runner="dask",
        )
        with open_warehouse(settings.warehouse_path) as con:
            for path in [ROOT / "examples" / "sample_rules.md", *corpus_files()]:
                ingest_file(con, path, settings)
        return settings

    cold, warm = prepared(workspace / "first"), prepared(workspace / "second")
    with prefect_test_harness(server_startup_timeout=120):
        start = time.perf_counter()
        with LocalCluster(
            n_workers=workers, processes=True, threads_per_worker=1, dashboard_address=None
        ) as cluster:
            cluster_start = time.perf_counter() - start
            seconds = []
            for settings in (cold, warm):
                settings = settings.model_copy(update={"dask_scheduler": cluster.scheduler_address})
                start = time.perf_counter()
                run = distill_fan_out.with_options(task_runner=dask_task_runner(settings))(
                    settings, limit=chunks
                )
                seconds.append(time.perf_counter() - start)
            return cluster_start, seconds[0], seconds[1], run.calls, run.failed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--chunks", type=int, default=96)
    parser.add_argument("--dask-workers", type=int, default=2)
    parser.add_argument("--no-dask", action="store_true", help="Skip the Dask run.")
    args = parser.parse_args()
    console = Console()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        rows, seconds = extractive_rate(tmp_path / "extractive")
        with FakeGeminiServer(latency_s=args.latency) as server:
            sequential, calls_seq, failed_seq = gemini_run(tmp_path / "seq", server.base_url, 1, args.chunks)
            concurrent, calls_con, failed_con = gemini_run(
                tmp_path / "con", server.base_url, args.concurrency, args.chunks
            )
            dask = None
            if not args.no_dask:
                dask = dask_run(
                    tmp_path / "dask", server.base_url, args.concurrency, args.chunks, args.dask_workers
                )
    table = Table(title="distillation benchmark")
    for column in ("run", "seconds", "throughput", "calls", "failed", "ratio"):
        table.add_column(column, justify="right")
    table.add_row(
        "extractive teacher (corpus texts)", f"{seconds:.2f}", f"{rows / seconds:.0f} rows/s", "-", "-", "-"
    )
    table.add_row(
        f"gemini fake, sequential ({args.latency * 1000:.0f} ms/call)",
        f"{sequential:.2f}",
        f"{args.chunks / sequential:.1f} chunks/s",
        str(calls_seq),
        str(failed_seq),
        "1.00x",
    )
    speedup = sequential / concurrent
    table.add_row(
        f"gemini fake, concurrency {args.concurrency}",
        f"{concurrent:.2f}",
        f"{args.chunks / concurrent:.1f} chunks/s",
        str(calls_con),
        str(failed_con),
        f"{speedup:.2f}x",
    )
    if dask is not None:
        cluster_start, first_s, dask_s, calls_dask, failed_dask = dask
        ratio = concurrent / dask_s
        table.add_row(
            f"gemini fake, Dask {args.dask_workers} workers x concurrency {args.concurrency}, first run",
            f"{first_s:.2f}",
            f"{args.chunks / first_s:.1f} chunks/s",
            "",
            "",
            f"{concurrent / first_s:.2f}x of threaded",
        )
        table.add_row(
            f"gemini fake, Dask {args.dask_workers} workers x concurrency {args.concurrency}, warm workers",
            f"{dask_s:.2f}",
            f"{args.chunks / dask_s:.1f} chunks/s",
            str(calls_dask),
            str(failed_dask),
            f"{ratio:.2f}x of threaded",
        )
    console.print(table)
    if dask is not None:
        console.print(
            f"Dask ({args.dask_workers} workers, warm) vs threaded: {ratio:.2f}x the threaded run's speed"
            f" (first run {concurrent / first_s:.2f}x; local cluster started in {cluster_start:.1f} s, not counted)"
        )
    verdict = "meets" if speedup >= TARGET_SPEEDUP else "MISSES"
    console.print(f"speed-up {speedup:.2f}x {verdict} the target of at least {TARGET_SPEEDUP:.0f}x")


if __name__ == "__main__":
    main()
