"""Distillation fanned out on a Dask cluster through Prefect (``prefect-dask``'s ``DaskTaskRunner``, the
``dask`` extra). Each batch of chunks (``distill_batch_chunks`` chunks of one document) is a Prefect task run
on a Dask worker that only calls the teacher and returns verified rows; the flow's own process stores them
through the warehouse, so DuckDB keeps its one writer and the teacher cache keeps re-runs free.

``distill_runner`` chooses: ``none`` (the ``distill`` task in this process, as before) or ``dask`` (the
``distill-fan-out`` subflow on ``dask_scheduler``'s cluster, or on a local cluster of ``dask_workers``
processes that lives as long as the subflow)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from prefect import flow, task, unmapped
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed

from flows.prefect_tasks import distill_run, distill_task
from flows.progress import StageProgress
from flows.results import DistillRun
from runtime.config import ConfigError, Settings
from tasks.distill.distill import ChunkJob, ChunkResult, distil_chunks, distill, make_teacher
from warehouse.db import settings_warehouse

RUNNERS = ("none", "dask")


@task(name="distill-batch", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def distill_batch_task(jobs: list[ChunkJob], settings: Settings, teacher_name: str) -> list[ChunkResult]:
    """On a Dask worker: the teacher's rows for one batch; no warehouse here."""
    return distil_chunks(jobs, settings, teacher_name)


def detached(settings: Settings) -> Settings:
    """The same values as a plain ``Settings``: ``load_settings`` returns an instance of a class made per
    call (bound to the workspace's slm.toml), which another process cannot unpickle by name."""
    return Settings.model_construct(**{name: getattr(settings, name) for name in Settings.model_fields})


def prefect_fan_out(
    batches: list[list[ChunkJob]], settings: Settings, teacher_name: str
) -> Iterator[list[ChunkResult]]:
    """A ``tasks.distill.distill.FanOut``: one task per batch on the flow's task runner, results as they finish."""
    futures = distill_batch_task.map(batches, unmapped(detached(settings)), unmapped(teacher_name))
    for future in as_completed(futures):
        yield future.result()


def dask_task_runner(settings: Settings) -> Any:
    """The configured cluster: ``dask_scheduler`` when set, else a local one of ``dask_workers`` processes
    (one thread each: a model teacher's own threads do the concurrent calls)."""
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError as exc:
        raise ConfigError(
            "distill_runner = 'dask' needs prefect-dask: pip install -e '.[dask]' (or set distill_runner = 'none')"
        ) from exc
    if settings.dask_scheduler:
        return DaskTaskRunner(address=settings.dask_scheduler)
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": settings.dask_workers,
            "processes": True,
            "threads_per_worker": 1,
            "dashboard_address": None,  # no dashboard port taken on a shared machine
        }
    )


@flow(name="distill-fan-out", log_prints=True)
def distill_fan_out(settings: Settings, limit: int | None = None, doc: str | None = None) -> DistillRun:
    """Run with ``.with_options(task_runner=dask_task_runner(settings))``; ``limit``: at most so many chunks;
    ``doc``: one document's chunks only."""
    with settings_warehouse(settings) as con:
        summary = distill(
            con,
            settings,
            make_teacher(settings),
            doc=doc,
            limit=limit,
            fan_out=prefect_fan_out,
            on_chunk=StageProgress("distill", "chunks"),
        )
    return distill_run(summary)


def _api_named_for_workers() -> contextlib.AbstractContextManager[Any]:
    """Without PREFECT_API_URL (`slm run` with no server), this process's flows report to a temporary server
    only it knows of, and each Dask worker would start one of its own (slow, and its task runs lost). The
    settings a task run carries to its worker then name this process's server."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        return contextlib.nullcontext()
    with get_client(sync_client=True) as client:  # the running temporary server (one per process)
        url = str(client.api_url).rstrip("/")
    return temporary_settings({PREFECT_API_URL: url})


def distill_step(settings: Settings) -> DistillRun:
    """The flows' distillation: in this process, or fanned out on Dask (``distill_runner``)."""
    if settings.distill_runner == "none":
        return distill_task(settings)
    return fanned_out(settings)


def fanned_out(settings: Settings, limit: int | None = None, doc: str | None = None) -> DistillRun:
    """Distillation on the configured Dask cluster (``distill_runner = 'dask'``), as `slm distill` and the flows
    run it."""
    if settings.distill_runner == "dask":
        with _api_named_for_workers():
            runner = dask_task_runner(settings)
            return distill_fan_out.with_options(task_runner=runner)(settings, limit=limit, doc=doc)
    raise ConfigError(
        f"unknown distill_runner {settings.distill_runner!r}; choose one of {', '.join(RUNNERS)}"
    )
