"""The build-dataset flow: ingest, ledger, distil, verify, pre-review gate, review (pause for people, or the
auto policy), sync, release gate, frozen dataset. Composition only: the work is in tasks/ and review/."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from prefect import flow, get_run_logger, pause_flow_run
from prefect.input import RunInput
from prefect.runtime import flow_run

from flows.distill_fan_out import distill_step
from flows.gates import gate_task
from flows.prefect_tasks import (
    auto_review_task,
    ingest_task,
    push_review_task,
    sync_review_task,
)
from flows.results import BuiltDataset, ReviewBatch
from runtime.config import Settings, load_settings


class ReviewDone(RunInput):
    """What resumes a flow paused for review (the webhook, `slm review resume`, or the Prefect UI form)."""

    batch_id: str
    partial: bool = False
    annotated: int = 0
    remaining: int = 0


class ReviewTimedOut(RuntimeError):
    """Reviewers did not finish the batch within review_timeout_s."""


@contextlib.contextmanager
def _webhook(settings: Settings, batch: Mapping[str, Any] | ReviewBatch) -> Iterator[None]:
    """Resume from Label Studio's webhook while paused, when our server is up; else wait for the CLI or UI."""
    from review import server
    from review.resume import resume_flow, resume_input
    from review.webhook import WebhookReceiver, register_webhook

    logger = get_run_logger()
    if not server.status(settings).running:
        logger.info("Label Studio not running here: resume with `slm review resume` or the Prefect UI")
        yield
        return
    client = server.client_for(settings)
    receiver = WebhookReceiver(
        None,
        settings,
        client,
        lambda run_id, batch_id, progress: resume_flow(
            run_id, resume_input(batch_id, progress, partial=False)
        ),
        port=settings.review_webhook_port,
    )
    with receiver:
        register_webhook(client, batch["ls_project_id"], receiver.url, receiver.secret, settings)
        yield


def wait_for_review(settings: Settings, batch: Mapping[str, Any] | ReviewBatch) -> ReviewDone:
    """Pause this flow run until the batch is resumed with a ``ReviewDone`` input, or fail after the timeout.
    ``batch``: the pushed ``ReviewBatch``, or the warehouse's batch row (both read by key).

    The warehouse is not held open while paused, so `slm` commands and the webhook check can use it."""
    with _webhook(settings, batch):
        try:
            return pause_flow_run(
                wait_for_input=ReviewDone, timeout=int(settings.review_timeout_s), poll_interval=2
            )
        except Exception as exc:
            if "timed out" in str(exc).lower() or "timeout" in type(exc).__name__.lower():
                raise ReviewTimedOut(
                    f"review batch {batch['batch_id']} was not completed within {settings.review_timeout_s:.0f} s;"
                    " its rows stay in Label Studio: finish them and run the flow again"
                ) from exc
            raise


@flow(name="build-dataset", log_prints=True)
def build_dataset(
    paths: list[str],
    workspace: str | None = None,
    teacher: str | None = None,
    review_policy: str | None = None,
) -> BuiltDataset:
    overrides = {k: v for k, v in {"teacher": teacher, "review_policy": review_policy}.items() if v}
    settings = load_settings(workspace, **overrides)
    logger = get_run_logger()
    ingested = ingest_task(settings, paths)
    distilled = distill_step(settings)  # in this process, or on Dask (distill_runner)
    pre_review = gate_task(settings, "pre_review").message
    review: dict[str, Any] | None = None
    synced = None
    if settings.review_policy == "auto":
        review = auto_review_task(settings)
        logger.warning("review policy auto: the ledger decided, no person reviewed (demos and CI only)")
    else:
        batch = push_review_task(settings, str(flow_run.id))
        if batch:
            logger.info(
                f"review batch {batch.batch_id}: {batch.rows} tasks at {batch.url}; fact tasks first (each number"
                " verified once at its sentence decides every row citing it), see the `review` artifact"
            )
            done = wait_for_review(settings, batch)
            review = {"resumed_with": done.model_dump() if hasattr(done, "model_dump") else done}
            synced = sync_review_task(settings, batch.batch_id)
    release = gate_task(settings, "release")
    assert release.dataset is not None  # a passing release gate always freezes one
    return BuiltDataset(
        settings.review_policy,
        ingested,
        distilled,
        pre_review,
        release.message,
        release.dataset,
        review,
        synced,
    )
