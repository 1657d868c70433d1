"""The whole pipeline as one flow: build the dataset (pausing for people unless the review policy is auto),
then train, evaluate, promote or refuse, and export."""

from __future__ import annotations

from prefect import flow

from flows.build_dataset import build_dataset
from flows.results import PipelineRun
from flows.train_and_evaluate import train_and_evaluate
from runtime.config import load_settings
from tasks.train.challenger import already_trained


@flow(name="pipeline", log_prints=True)
def pipeline(
    paths: list[str],
    workspace: str | None = None,
    teacher: str | None = None,
    review_policy: str | None = None,
    base: str | None = None,
    max_steps: int | None = None,
) -> PipelineRun:
    built = build_dataset(paths, workspace, teacher, review_policy)
    dataset_id = built.dataset.dataset_id
    if already_trained(load_settings(workspace), dataset_id):
        print(f"no change: dataset {dataset_id} was already trained on; nothing trained")
        return PipelineRun(built, trained=False)
    return PipelineRun(built, True, train_and_evaluate(workspace, dataset_id, base, max_steps=max_steps))
