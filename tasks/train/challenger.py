"""Training a challenger: the newest (or a named) frozen dataset, LoRA on the configured base, the run
recorded in the warehouse and the adapter registered as a challenger model."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

import duckdb

from runtime.config import Settings
from warehouse import models as registry
from warehouse.db import open_warehouse, transaction
from warehouse.gates import list_datasets
from warehouse.training import record_train_run


class NoDataset(RuntimeError):
    """Nothing to train on yet: a dataset is frozen when the release gate passes."""


def resolve_dataset(con: duckdb.DuckDBPyConnection, dataset_id: str | None) -> dict[str, Any]:
    datasets = list_datasets(con)
    if not datasets:
        raise NoDataset("no frozen dataset: run `slm gate release` (after review) first")
    if dataset_id is None:
        return datasets[0]
    found = [d for d in datasets if d["dataset_id"].startswith(dataset_id)]
    if len(found) != 1:
        raise NoDataset(
            f"dataset {dataset_id!r} {'is ambiguous' if found else 'not found'} (see `slm datasets`)"
        )
    return found[0]


def run_folder(
    settings: Settings,
    dataset_id: str,
    base: str,
    profile: str,
    max_steps: int | None,
    overrides: dict[str, Any] | None = None,
) -> Path:
    """Same inputs, same folder: so `--resume` finds the checkpoints of an interrupted run. The key holds the
    profile's fields, not only its name, so a changed recipe (an override, or a release changing a profile)
    is another run and never resumes checkpoints of an adapter of another shape."""
    from tasks.train.train import get_profile

    recipe = json.dumps(get_profile(profile, overrides).to_dict(), sort_keys=True, default=str)
    inputs = f"{dataset_id}|{base}|{profile}|{max_steps}|{recipe}"
    key = hashlib.sha256(inputs.encode()).hexdigest()[:10]
    return settings.artifacts_dir / "runs" / f"{dataset_id}-{profile}-{key}"


def train_challenger(
    settings: Settings,
    dataset_id: str | None = None,
    base: str | None = None,
    profile: str | None = None,
    max_steps: int | None = None,
    resume: bool = False,
    progress: bool = True,
    overrides: dict[str, Any] | None = None,
    on_progress: Any = None,
) -> tuple[Any, str]:
    """Train, record and register; returns (TrainResult, model id; "" on a process other than rank 0 of a
    multi-process run, which neither saves nor records). The warehouse is opened before and after
    training, not held during it (training only reads the dataset files), so other commands can use it.
    ``overrides`` replaces profile fields (``train``'s); ``on_progress`` receives training snapshots (``train``'s)."""
    from tasks.models.base_models import model_id_for
    from tasks.train.train import process_rank, train

    with open_warehouse(settings.warehouse_path, read_only=True) as con:
        dataset = resolve_dataset(con, dataset_id)
    base_spec = base or settings.base_model
    profile_name = profile or settings.train_profile
    out_dir = run_folder(settings, dataset["dataset_id"], base_spec, profile_name, max_steps, overrides)
    result = train(
        Path(dataset["path"]),
        base_spec,
        out_dir,
        profile=profile_name,
        max_steps=max_steps,
        resume=resume,
        progress=progress,
        cache_dir=settings.models_cache,
        epochs=settings.train_epochs,
        save_steps=settings.train_save_steps,
        early_stopping_patience=settings.train_early_stopping_patience,
        device=settings.train_device,
        seed=settings.train_seed,
        threads=settings.train_threads or None,
        overrides=overrides,
        on_progress=on_progress,
    )
    if process_rank() != 0:
        return result, ""  # under torchrun / accelerate launch only rank 0 saved the adapter and records it
    model_id = model_id_for(base_spec, result.adapter_dir, settings.models_cache)
    train_metrics = {
        "tokens_per_s": result.tokens_per_s,
        "wall_s": result.wall_s,
        "peak_rss_mb": result.peak_rss_mb,
        "optimizer_steps": result.optimizer_steps,
        "final_train_loss": result.final_train_loss,
        "final_eval_loss": result.final_eval_loss,
        "device": result.device,
    }
    with open_warehouse(settings.warehouse_path) as con:
        _record(con, dataset, base_spec, profile_name, result, model_id, train_metrics)
    return result, model_id


def _record(
    con: duckdb.DuckDBPyConnection,
    dataset: dict[str, Any],
    base_spec: str,
    profile_name: str,
    result: Any,
    model_id: str,
    train_metrics: dict[str, Any],
) -> None:
    """Register the challenger and its training run together, in one transaction: a crash in between
    must not leave a challenger without its run."""
    with transaction(con):
        registry.register_model(
            con,
            model_id,
            "challenger",
            base_spec,
            adapter_path=str(result.adapter_dir),
            dataset_id=dataset["dataset_id"],
            train_metrics=train_metrics,
            status="trained",
        )
        record_train_run(
            con,
            {
                "train_run_id": uuid.uuid4().hex[:16],
                "dataset_id": dataset["dataset_id"],
                "base_spec": base_spec,
                "base_path": result.base.path,
                "base_hash": result.base.content_hash,
                "profile": profile_name,
                "config": json.loads(json.dumps(result.profile, default=str)),
                "device": result.device,
                "wall_s": result.wall_s,
                "tokens_per_s": result.tokens_per_s,
                "peak_rss_mb": result.peak_rss_mb,
                "optimizer_steps": result.optimizer_steps,
                "final_train_loss": result.final_train_loss,
                "final_eval_loss": result.final_eval_loss,
                "loss_curve": [list(p) for p in result.loss_curve],
                "adapter_path": str(result.adapter_dir),
                "model_id": model_id,
            },
        )


def last_trained_dataset(settings: Settings) -> str | None:
    """The dataset the newest training run used, if any: the same dataset again means nothing to retrain."""
    from warehouse.training import list_train_runs

    with open_warehouse(settings.warehouse_path, read_only=True) as con:
        runs = list_train_runs(con, limit=1)
    return runs[0]["dataset_id"] if runs else None


def already_trained(settings: Settings, dataset_id: str) -> bool:
    """Whether the newest training run used ``dataset_id``: the pipeline and the nightly job train only on a
    dataset that changed."""
    return last_trained_dataset(settings) == dataset_id
