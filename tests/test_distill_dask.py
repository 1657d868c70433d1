"""Distillation fanned out on Dask through Prefect (issue #20, part 1): the corpus PDFs distilled by Prefect
tasks on a LocalCluster of 2 worker processes give exactly the rows of the in-process run; the workers only
call the teacher (the flow's process writes), a re-run is free (the teacher cache), and the cluster a run
starts is gone when it ends."""

from __future__ import annotations

import contextlib
import shutil
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from runtime.config import ConfigError, Settings, load_settings
from tasks.distill.distill import ChunkJob, batches_by_document, chunk_context, distill, make_teacher
from tasks.ingest.documents import ingest_paths
from tests.conftest import CORPUS, _library_helper, describe, import_or_require, require_or_skip
from warehouse import distill as queries
from warehouse.db import open_warehouse

# Every column a row is made of (not when or by which run it was stored).
ROW_COLUMNS = (
    "row_id", "doc", "chunk_id", "teacher", "question", "answer", "evidence", "kind", "unsure", "numbers",
    "is_numeric", "evidence_found", "grounded", "fact_ids", "verify_notes", "status", "reviewer",
)  # fmt: skip


def _corpus_pdfs() -> list[Path]:
    pdfs = sorted((CORPUS / "pdfs").glob("*.pdf"))
    if not pdfs:
        require_or_skip(f"{CORPUS / 'pdfs'} holds no PDF (the shared corpus lives beside the clone)")
    return pdfs


def _ingested(workspace: Path, pdfs: list[Path]) -> Settings:
    settings = load_settings(workspace, teacher="extractive")
    with open_warehouse(settings.warehouse_path) as con:
        results = ingest_paths(con, pdfs, settings)
    assert all(r.status == "added" for r in results), [r.message for r in results]
    return settings


def _rows(settings: Settings) -> list[tuple[Any, ...]]:
    with open_warehouse(settings.warehouse_path, read_only=True) as con:
        rows = queries.list_rows(con)
    return sorted(tuple(str(r[c]) for c in ROW_COLUMNS) for r in rows)


def _descendants() -> dict[tuple[int, float], psutil.Process]:
    found = {}
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            found[(proc.pid, proc.create_time())] = proc
    return found


def _alive_since(before: dict[tuple[int, float], psutil.Process], wait_s: float = 30.0) -> list[str]:
    """Processes started since ``before`` still alive after up to ``wait_s`` (multiprocessing's own helpers,
    which live as long as the interpreter, aside)."""
    deadline = time.monotonic() + wait_s
    while True:
        left = [
            p
            for key, p in _descendants().items()
            if key not in before and not _library_helper(p) and p.status() != psutil.STATUS_ZOMBIE
        ]
        if not left or time.monotonic() > deadline:
            return [describe(p) for p in left]
        time.sleep(0.5)


def _jobs(settings: Settings) -> list[ChunkJob]:
    """The chunks a first run distils, in document order (their cache keys do not matter here)."""
    with open_warehouse(settings.warehouse_path, read_only=True) as con:
        return [ChunkJob(chunk_context(r), "") for r in queries.chunks_with_facts(con, None, None)]


def _batch_task_runs(expected: int, timeout_s: float = 60.0) -> dict[str, str]:
    """The `distill-batch` task runs the Prefect server recorded (name -> state), once at least ``expected``
    are there, all completed (workers report their task runs as events, shortly after they end)."""
    from prefect import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    deadline = time.monotonic() + timeout_s
    while True:
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(
                task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="distill-batch"))
            )
        found = {r.name: r.state_type.value if r.state_type else "" for r in runs}
        settled = len(found) >= expected and all(state == "COMPLETED" for state in found.values())
        if settled or time.monotonic() > deadline:
            return found
        time.sleep(1.0)


@pytest.mark.slow
def test_corpus_distilled_on_two_dask_workers_gives_the_rows_of_the_in_process_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import_or_require("prefect_dask")
    import_or_require("distributed")
    from prefect.testing.utilities import prefect_test_harness

    from flows.distill_fan_out import distill_step

    monkeypatch.chdir(tmp_path)
    pdfs = _corpus_pdfs()
    here = _ingested(tmp_path / "here", pdfs)
    # The same ledger, copied rather than ingested twice (ingesting the corpus is most of this test's time).
    (tmp_path / "dask").mkdir()
    shutil.copy(here.warehouse_path, tmp_path / "dask" / here.warehouse_path.name)
    # Batches of 64 chunks: the four documents become about ten tasks, so both workers take some.
    on_dask = load_settings(
        tmp_path / "dask",
        teacher="extractive",
        distill_runner="dask",
        dask_workers=2,
        distill_batch_chunks=64,
    )
    with open_warehouse(here.warehouse_path) as con:
        local = distill(con, here, make_teacher(here))
    assert local.rows_added > 100 and local.failed == 0

    expected = len(batches_by_document(_jobs(on_dask), 64))
    assert expected > len(pdfs)  # more tasks than documents
    before = _descendants()
    with prefect_test_harness(server_startup_timeout=120):
        harness = _descendants()  # the test server's own process stays until the harness ends
        started = time.monotonic()
        first = distill_step(on_dask)
        # The cluster lived as long as the subflow: its scheduler's workers are gone now.
        assert not _alive_since(harness), "a Dask worker outlived the flow"
        batch_runs = _batch_task_runs(expected=len(pdfs) + 1)
        again = distill_step(on_dask)
        elapsed = time.monotonic() - started
    assert not _alive_since(before)

    assert (first.chunks, first.cached, first.failed) == (local.chunks, 0, 0), elapsed
    assert first.rows_added == local.rows_added
    # The teacher ran in Prefect task runs, one per batch (on the Dask workers), not in this process.
    # (fewer than ``expected`` only if a clause repeated word for word was asked once for two chunks)
    assert len(pdfs) < len(batch_runs) <= expected, batch_runs
    assert all(state == "COMPLETED" for state in batch_runs.values()), batch_runs
    assert _rows(on_dask) == _rows(here)
    # The re-run finds every chunk in the teacher cache: nothing recomputed, nothing added.
    assert (again.cached, again.calls, again.rows_added) == (again.chunks, 0, 0)
    assert _rows(on_dask) == _rows(here)


def test_an_unknown_runner_is_refused_naming_the_setting(tmp_path: Path) -> None:
    from flows.distill_fan_out import distill_step

    settings = load_settings(tmp_path / "ws", distill_runner="spark")
    with pytest.raises(ConfigError, match="distill_runner 'spark'"):
        distill_step(settings)


def test_slm_distill_takes_the_configured_runner(tmp_path: Path) -> None:
    """`slm distill` fans out as the flows do: with distill_runner set it goes to the Dask path (here refused
    for a runner that does not exist, with the setting named and exit 2, before any row is written)."""
    from tests.test_cli import slm

    done = slm("--workspace", "ws", "distill", cwd=tmp_path, env={"SLM_DISTILL_RUNNER": "spark"})
    assert done.returncode == 2, done.stdout + done.stderr
    assert "distill_runner 'spark'" in done.stdout + done.stderr and "Traceback" not in done.stderr
