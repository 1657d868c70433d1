"""Prefect task wrappers: thin edges around the plain functions, each opening the warehouse for its own
work only (a flow paused for review must not hold the DuckDB file), returning small JSON-able summaries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from runtime.config import Settings
from warehouse.db import settings_warehouse


class IngestFailed(RuntimeError):
    """Some files could not be ingested; the message has one line per file and reason."""


@task(name="ingest", cache_policy=NO_CACHE, retries=1)
def ingest_task(settings: Settings, paths: list[str], allow_failures: bool = False) -> dict[str, Any]:
    from tasks.ingest.documents import ingest_paths

    with settings_warehouse(settings) as con:
        results = ingest_paths(con, [Path(p) for p in paths], settings)
    failed = [r.message for r in results if r.status == "failed"]
    if failed and not allow_failures:
        raise IngestFailed("\n".join(failed))
    return {
        "added": sum(r.status == "added" for r in results),
        "unchanged": sum(r.status == "unchanged" for r in results),
        "failed": failed,
        "facts": sum(r.facts for r in results),
    }


@task(name="distill", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10)
def distill_task(settings: Settings) -> dict[str, Any]:
    """Retries are cheap: finished chunks are cached in the warehouse and not billed again."""
    from tasks.distill.distill import distill, make_teacher

    with settings_warehouse(settings) as con:
        summary = distill(con, settings, make_teacher(settings))
    return {
        "run_id": summary.run_id,
        "teacher": summary.teacher,
        "chunks": summary.chunks,
        "cached": summary.cached,
        "failed": summary.failed,
        "rows_added": summary.rows_added,
        "calls": summary.usage.calls,
        "cost_usd": summary.usage.cost_usd,
        **summary.totals,
    }


@task(name="auto-review", cache_policy=NO_CACHE)
def auto_review_task(settings: Settings) -> dict[str, int]:
    from review.policy import apply_auto_policy

    with settings_warehouse(settings) as con:
        return apply_auto_policy(con, settings.similarity_threshold)


@task(name="push-review-batch", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=5)
def push_review_task(settings: Settings, flow_run_id: str | None) -> dict[str, Any] | None:
    from review import server
    from review.push import push_batch

    with settings_warehouse(settings) as con:
        batch = push_batch(con, settings, server.client_for(settings), flow_run_id)
    return (
        None
        if batch is None
        else {
            "batch_id": batch.batch_id,
            "ls_project_id": batch.ls_project_id,
            "rows": batch.row_count,
            "new_tasks": batch.new_tasks,
            "url": batch.url,
        }
    )


@task(name="sync-review-batch", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=10)
def sync_review_task(settings: Settings, batch_id: str) -> dict[str, Any]:
    """Idempotent: a retry after Label Studio went down applies the archived export, loses nothing."""
    from review import server
    from review.sync import sync_batch

    with settings_warehouse(settings) as con:
        result = sync_batch(con, settings, server.client_for(settings), batch_id)
    return {
        "batch_id": batch_id,
        "applied": result.applied,
        "flagged": len(result.flagged),
        "status": result.status,
    }


@task(name="freeze-dataset", cache_policy=NO_CACHE)
def freeze_task(settings: Settings, gate_run_id: str) -> dict[str, Any]:
    from tasks.train.dataset import freeze_dataset

    with settings_warehouse(settings) as con:
        info = freeze_dataset(con, settings, gate_run_id)
    return {
        "dataset_id": info.dataset_id,
        "path": str(info.path),
        "rows": info.row_count,
        "train": info.train_count,
        "valid": info.valid_count,
        "numeric_share": info.numeric_share,
        "created": info.created,
    }


@task(name="train-challenger", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5)
def train_task(
    settings: Settings, dataset_id: str | None, base: str | None, profile: str | None, max_steps: int | None
) -> dict[str, Any]:
    """A retry resumes from the last checkpoint of the same run folder instead of starting over."""
    from prefect.runtime import task_run

    from tasks.train.challenger import train_challenger

    resume = (task_run.run_count or 1) > 1
    result, model_id = train_challenger(
        settings, dataset_id, base, profile, max_steps, resume=resume, progress=False
    )
    return {
        "model_id": model_id,
        "adapter_dir": str(result.adapter_dir),
        "dataset_id": result.dataset_id,
        "steps": result.optimizer_steps,
        "tokens_per_s": result.tokens_per_s,
        "wall_s": result.wall_s,
        "peak_rss_mb": result.peak_rss_mb,
        "final_eval_loss": result.final_eval_loss,
        "loss_png": str(Path(result.adapter_dir).parent / "loss.png"),
    }


@task(name="evaluate-challenger", cache_policy=NO_CACHE)
def evaluate_task(settings: Settings, challenger: dict[str, Any], base: str | None = None) -> dict[str, Any]:
    """Base, champion (if any) and challenger on the golden set, answered as users are answered: each model
    exported to GGUF (the configured quantisation) and run in llama.cpp through `slm ask`'s path (guard,
    constrained retry, max tokens), closed book and grounded."""
    from tasks.answer.answer import answer_batch
    from tasks.answer.serve import answering_generator
    from tasks.evaluate.golden import golden_items
    from tasks.evaluate.promote import challenge
    from tasks.evaluate.report import describe_review
    from tasks.export.export import exported_gguf
    from warehouse.models import get_champion
    from warehouse.review import review_sources

    base_spec = base or settings.base_model
    with settings_warehouse(settings, read_only=True) as con:
        items = golden_items(con)
        champion = get_champion(con)
    models: dict[str, tuple[Path | None, str | None]] = {
        "base": (None, None),
        "challenger": (Path(challenger["adapter_dir"]), challenger["model_id"]),
    }
    if champion and champion.get("adapter_path") and champion["model_id"] != challenger["model_id"]:
        models["champion"] = (Path(champion["adapter_path"]), champion["model_id"])
    with settings_warehouse(settings) as con:
        generators = {
            label: answering_generator(exported_gguf(con, settings, adapter, base_spec, model_id), settings)
            for label, (adapter, model_id) in models.items()
        }
        batches = {
            mode: {
                label: answer_batch(generator, con, mode, settings.answer_max_tokens)
                for label, generator in generators.items()
            }
            for mode in ("closed_book", "grounded")
        }
        outcome = challenge(
            con,
            settings,
            challenger["model_id"],
            items,
            batches["closed_book"],
            {
                "dataset": challenger.get("dataset_id"),
                "training": f"{challenger['steps']} steps, {challenger['tokens_per_s']:.0f} tokens/s",
                "answered by": f"llama.cpp, {settings.export_quant} GGUF exports, "
                f"at most {settings.answer_max_tokens} tokens, as `slm ask` answers",
                "review (rows approved by)": describe_review(review_sources(con)),
            },
            Path(challenger["loss_png"]),
            batches["grounded"],
        )
    for generator in generators.values():
        generator.close()
    return {
        "promoted": outcome.promoted,
        "reasons": outcome.decision.reasons,
        "scores": outcome.scores,
        "report_md": str(outcome.report_md),
        "report_html": str(outcome.report_html),
    }


@task(name="export-gguf", cache_policy=NO_CACHE)
def export_task(settings: Settings, quant: str | None = None) -> dict[str, Any]:
    """The champion as GGUF; before the first promotion the untuned base is what serves, so it is exported."""
    from tasks.export.export import export_model
    from warehouse.models import get_champion

    with settings_warehouse(settings, read_only=True) as con:
        champion = get_champion(con)
    with settings_warehouse(settings) as con:
        result = export_model(
            Path(champion["adapter_path"]) if champion and champion.get("adapter_path") else None,
            champion["base_spec"] if champion else settings.base_model,
            settings.artifacts_dir / "gguf",
            quant or settings.export_quant,
            cache_dir=settings.models_cache,
            con=con,
            model_id=champion["model_id"] if champion else None,
            reuse=True,
        )
    return {
        "path": str(result.path),
        "quant": result.quant,
        "size_bytes": result.size_bytes,
        "model_id": result.source_model_id,
        "what": "champion" if champion else "untuned base (no champion yet)",
    }
