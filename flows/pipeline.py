"""The whole pipeline as one flow: build the dataset (pausing for people unless the review policy is auto),
then train, evaluate, promote or refuse, and export."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.build_dataset import build_dataset
from flows.train_and_evaluate import train_and_evaluate
from runtime.config import load_settings
from tasks.train.challenger import last_trained_dataset


@flow(name="pipeline", log_prints=True)
def pipeline(
    paths: list[str],
    workspace: str | None = None,
    teacher: str | None = None,
    review_policy: str | None = None,
    base: str | None = None,
    max_steps: int | None = None,
) -> dict[str, Any]:
    dataset = build_dataset(paths, workspace, teacher, review_policy)
    dataset_id = dataset["dataset"]["dataset_id"]
    if last_trained_dataset(load_settings(workspace)) == dataset_id:
        print(f"no change: dataset {dataset_id} was already trained on; nothing trained")
        return {"dataset": dataset, "trained": False}
    trained = train_and_evaluate(workspace, dataset_id, base, max_steps=max_steps)
    return {"dataset": dataset, "trained": True, **trained}
