"""The nightly job: sync new annotations, run the release gate, and only if the dataset changed: train,
evaluate, promote or refuse, export. Otherwise record "no change" and stop."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.gates import gate_task
from flows.prefect_tasks import sync_review_task
from flows.results import NightlyRun
from flows.train_and_evaluate import train_and_evaluate
from runtime.config import Settings, load_settings
from tasks.train.challenger import already_trained
from warehouse.db import settings_warehouse


@flow(name="nightly", log_prints=True)
def nightly(workspace: str | None = None, max_steps: int | None = None) -> NightlyRun:
    settings = load_settings(workspace)
    logger = get_run_logger()
    for batch_id in _open_batches(settings):
        sync_review_task(settings, batch_id)
    dataset = gate_task(settings, "release").dataset
    assert dataset is not None  # a passing release gate always freezes one
    if already_trained(settings, dataset.dataset_id):
        message = f"no change: dataset {dataset.dataset_id} was already trained on; nothing to do"
        logger.info(message)
        create_markdown_artifact(key="nightly", markdown=f"# Nightly\n\n{message}", description="no change")
        return NightlyRun(False, dataset)
    result = train_and_evaluate(workspace, dataset.dataset_id, max_steps=max_steps)
    create_markdown_artifact(
        key="nightly",
        description="retrained",
        markdown=f"# Nightly\n\nnew dataset {dataset.dataset_id}: challenger "
        f"{'promoted' if result.evaluation.promoted else 'refused'}",
    )
    return NightlyRun(True, dataset, result)


def _open_batches(settings: Settings) -> list[str]:
    from review import server
    from warehouse.review import list_batches

    if settings.review_policy != "labelstudio" or not server.status(settings).running:
        return []
    with settings_warehouse(settings, read_only=True) as con:
        return [b["batch_id"] for b in list_batches(con) if b["status"] != "synced"]
