"""Prefect task wrappers: thin edges around the plain functions, each opening the warehouse for its own
work only (a flow paused for review must not hold the DuckDB file), returning small typed records
(``flows.results``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from flows.progress import StageProgress, reported_stage, train_progress
from flows.results import (
    DistillRun,
    EvaluationVerdict,
    ExportedModel,
    IngestSummary,
    ReviewBatch,
    ReviewSync,
    TrainedChallenger,
)
from runtime.config import Settings
from warehouse.db import settings_warehouse


class IngestFailed(RuntimeError):
    """Some files could not be ingested; the message has one line per file and reason."""


@task(name="ingest", cache_policy=NO_CACHE, retries=1)
@reported_stage
def ingest_task(settings: Settings, paths: list[str], allow_failures: bool = False) -> IngestSummary:
    from tasks.ingest.documents import ingest_paths

    with settings_warehouse(settings) as con:
        results = ingest_paths(con, [Path(p) for p in paths], settings)
    failed = [r.message for r in results if r.status == "failed"]
    if failed and not allow_failures:
        raise IngestFailed("\n".join(failed))
    return IngestSummary(
        added=sum(r.status == "added" for r in results),
        unchanged=sum(r.status == "unchanged" for r in results),
        failed=failed,
        facts=sum(r.facts for r in results),
    )


@task(name="distill", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10)
@reported_stage
def distill_task(settings: Settings) -> DistillRun:
    """Retries are cheap: finished chunks are cached in the warehouse and not billed again."""
    from tasks.distill.distill import distill, make_teacher

    with settings_warehouse(settings) as con:
        summary = distill(con, settings, make_teacher(settings), on_chunk=StageProgress("distill", "chunks"))
    return distill_run(summary)


def distill_run(summary: Any) -> DistillRun:
    """The flow's record of a ``tasks.distill.distill.DistillSummary``."""
    return DistillRun(
        run_id=summary.run_id,
        teacher=summary.teacher,
        chunks=summary.chunks,
        cached=summary.cached,
        failed=summary.failed,
        rows_added=summary.rows_added,
        calls=summary.usage.calls,
        cost_usd=summary.usage.cost_usd,
        totals=dict(summary.totals),
    )


def _review_artifact(con: Any, policy: str) -> None:
    """The review economy (fact tasks, row tasks, rows those decide, share people opened) as the run's
    Prefect markdown artifact ``review``; the auto policy's says no person reviewed."""
    from prefect.artifacts import create_markdown_artifact

    from review.facts import economy_markdown

    create_markdown_artifact(
        key="review", markdown=economy_markdown(con, policy), description=f"review policy {policy}"
    )


@task(name="auto-review", cache_policy=NO_CACHE)
@reported_stage
def auto_review_task(settings: Settings) -> dict[str, int]:
    """The auto policy: demos and CI only (the artifact and the flow's log say so)."""
    from review.policy import apply_auto_policy

    with settings_warehouse(settings) as con:
        counts = apply_auto_policy(con, settings.similarity_threshold)
        _review_artifact(con, "auto")
    return counts


@task(name="push-review-batch", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=5)
@reported_stage
def push_review_task(settings: Settings, flow_run_id: str | None) -> ReviewBatch | None:
    from review import server
    from review.push import push_batch

    with settings_warehouse(settings) as con:
        batch = push_batch(con, settings, server.client_for(settings), flow_run_id)
        _review_artifact(con, "labelstudio")
    if batch is None:
        return None
    return ReviewBatch(batch.batch_id, batch.ls_project_id, batch.row_count, batch.new_tasks, batch.url)


@task(name="sync-review-batch", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=10)
@reported_stage
def sync_review_task(settings: Settings, batch_id: str) -> ReviewSync:
    """Idempotent: a retry after Label Studio went down applies the archived export, loses nothing."""
    from review import server
    from review.sync import sync_batch

    with settings_warehouse(settings) as con:
        result = sync_batch(con, settings, server.client_for(settings), batch_id)
        _review_artifact(con, "labelstudio")  # the same key: the report after the verdicts were applied
    return ReviewSync(batch_id, result.applied, len(result.flagged), result.status)


@task(name="train-challenger", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5)
@reported_stage
def train_task(
    settings: Settings, dataset_id: str | None, base: str | None, profile: str | None, max_steps: int | None
) -> TrainedChallenger:
    """A retry resumes from the last checkpoint of the same run folder instead of starting over."""
    from prefect.runtime import task_run

    from tasks.train.challenger import train_challenger

    resume = (task_run.run_count or 1) > 1
    result, model_id = train_challenger(
        settings,
        dataset_id,
        base,
        profile,
        max_steps,
        resume=resume,
        progress=False,  # no bar of its own: the progress goes to the artifact and `slm run`'s listener
        on_progress=train_progress(),
    )
    return TrainedChallenger(
        model_id=model_id,
        adapter_dir=Path(result.adapter_dir),
        dataset_id=result.dataset_id,
        steps=result.optimizer_steps,
        tokens_per_s=result.tokens_per_s,
        wall_s=result.wall_s,
        peak_rss_mb=result.peak_rss_mb,
        final_eval_loss=result.final_eval_loss,
        loss_png=Path(result.adapter_dir).parent / "loss.png",
    )


@task(name="evaluate-challenger", cache_policy=NO_CACHE)
@reported_stage
def evaluate_task(
    settings: Settings, challenger: TrainedChallenger, base: str | None = None
) -> EvaluationVerdict:
    """Base, champion (if any) and challenger on the golden set, each exported to GGUF (the configured
    quantisation) and answered in llama.cpp as `slm ask` answers (``evaluate_challenger``)."""
    from tasks.evaluate.run import evaluate_challenger
    from tasks.export.resolve import close_generator, contenders, generator_for

    context = {
        "dataset": challenger.dataset_id,
        "training": f"{challenger.steps} steps, {challenger.tokens_per_s:.0f} tokens/s",
    }
    with settings_warehouse(settings) as con:
        models = contenders(con, settings, challenger.model_id, base)
        generators = {label: generator_for(con, settings, m, export=True) for label, m in models.items()}
        try:
            outcome = evaluate_challenger(
                con,
                settings,
                challenger.model_id,
                generators,
                context,
                challenger.loss_png,
                on_progress=StageProgress("evaluate-challenger", "answers"),
            )
        finally:
            for generator in generators.values():
                close_generator(generator)
    return EvaluationVerdict(
        outcome.promoted, outcome.reasons, outcome.scores, outcome.report_md, outcome.report_html
    )


@task(name="export-gguf", cache_policy=NO_CACHE)
@reported_stage
def export_task(settings: Settings, quant: str | None = None) -> ExportedModel:
    """The champion as GGUF; before the first promotion the untuned base is what serves, so it is exported."""
    from tasks.export.resolve import resolve_model

    with settings_warehouse(settings) as con:
        model = resolve_model(con, settings, "champion")
        result = model.export(con, settings, quant, reuse=True)
    return ExportedModel(result.path, result.quant, result.size_bytes, result.source_model_id, model.what)
