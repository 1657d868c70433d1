"""The nightly job: sync new annotations, run the release gate, and only if the dataset changed: train,
evaluate, promote or refuse, export. Otherwise record "no change" and stop."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.gates import gate_task
from flows.prefect_tasks import freeze_task, sync_review_task
from flows.train_and_evaluate import train_and_evaluate
from runtime.config import load_settings
from tasks.train.challenger import last_trained_dataset
from warehouse.db import settings_warehouse


@flow(name="nightly", log_prints=True)
def nightly(workspace: str | None = None, max_steps: int | None = None) -> dict[str, Any]:
    settings = load_settings(workspace)
    logger = get_run_logger()
    for batch_id in _open_batches(settings):
        sync_review_task(settings, batch_id)
    release = gate_task(settings, "release")
    dataset = freeze_task(settings, release["gate_run_id"])
    last = last_trained_dataset(settings)
    if dataset["dataset_id"] == last:
        message = f"no change: dataset {dataset['dataset_id']} was already trained on; nothing to do"
        logger.info(message)
        create_markdown_artifact(key="nightly", markdown=f"# Nightly\n\n{message}", description="no change")
        return {"changed": False, "dataset": dataset}
    result = train_and_evaluate(workspace, dataset["dataset_id"], max_steps=max_steps)
    create_markdown_artifact(
        key="nightly",
        description="retrained",
        markdown=f"# Nightly\n\nnew dataset {dataset['dataset_id']}: challenger "
        f"{'promoted' if result['evaluation']['promoted'] else 'refused'}",
    )
    return {"changed": True, "dataset": dataset, **result}


def _open_batches(settings) -> list[str]:
    from review import server
    from warehouse.review import list_batches

    if settings.review_policy != "labelstudio" or not server.status(settings).running:
        return []
    with settings_warehouse(settings, read_only=True) as con:
        return [b["batch_id"] for b in list_batches(con) if b["status"] != "synced"]
