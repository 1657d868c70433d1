"""Train a challenger on a frozen dataset, evaluate it against the champion and the base, promote or refuse,
and export the champion as GGUF. Composition only."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.prefect_tasks import evaluate_task, export_task, train_task
from flows.results import ExportedModel, TrainedAndEvaluated
from runtime.config import load_settings
from tasks.evaluate.report import embedded_markdown


@flow(name="train-and-evaluate", log_prints=True)
def train_and_evaluate(
    workspace: str | None = None,
    dataset_id: str | None = None,
    base: str | None = None,
    profile: str | None = None,
    max_steps: int | None = None,
    export: bool = True,
) -> TrainedAndEvaluated:
    settings = load_settings(workspace)
    challenger = train_task(settings, dataset_id, base, profile, max_steps)
    verdict = evaluate_task(settings, challenger, base)
    create_markdown_artifact(
        key="evaluation-report",
        markdown=embedded_markdown(verdict.report_md),  # the charts inline: the UI cannot open report files
        description="promoted" if verdict.promoted else "refused",
    )
    if not verdict.promoted:
        get_run_logger().warning("challenger refused: " + "; ".join(verdict.reasons))
    # The champion, or the base while there is none: what `slm ask` should serve.
    exported = export_flow(workspace) if export else None
    return TrainedAndEvaluated(challenger, verdict, exported)


@flow(name="export", log_prints=True)
def export_flow(workspace: str | None = None, quant: str | None = None) -> ExportedModel:
    settings = load_settings(workspace)
    return export_task(settings, quant)
