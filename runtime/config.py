"""The one configuration of the project.

Precedence, highest first: explicit overrides (the command line), ``SLM_*`` environment variables,
``slm.toml`` in the workspace, ``slm.toml`` in the current folder, the defaults below.
Secrets are ``SecretStr`` so that printing or logging the settings never shows them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

CONFIG_FILE_NAME = "slm.toml"
SECRETS_FILE_NAME = "secrets.toml"  # in the workspace, mode 0600; holds API keys and tokens
DEFAULT_WORKSPACE = Path("workspace")


class Settings(BaseSettings):
    """Every tunable of the pipeline. Field names double as ``SLM_<NAME>`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="SLM_", extra="ignore")

    workspace: Path = Field(
        DEFAULT_WORKSPACE, description="Folder holding the warehouse, artifacts and reports."
    )

    # Ingestion
    max_file_mb: float = Field(200.0, description="Files larger than this are refused, not half-read.")
    max_pages: int = Field(
        1000, description="PDFs with more pages are refused (raise for huge compilations)."
    )
    min_text_chars_per_page: int = Field(
        20, description="A PDF page with fewer characters and an image is scanned: it goes through OCR."
    )
    ocr_min_confidence: float = Field(
        0.85,
        ge=0.0,
        le=1.0,
        description="An OCR'd page under this mean confidence: its facts always go to a person for review.",
    )

    # Chunking
    chunk_size: int = Field(
        600, description="Maximum characters per chunk before splitting at sentence ends."
    )
    chunk_overlap: int = Field(
        80, description="Characters of the previous piece repeated when a long article is split."
    )

    # Distillation
    teacher: str = Field("extractive", description="extractive | gemini | openai | llamacpp")
    per_fact: int = Field(2, description="Questions per ledger fact (phrasings).")
    unanswerable_share: float = Field(0.05, description="Share of rows that ask what the rules do not cover.")
    distill_concurrency: int = Field(8, description="Chunks sent to a model teacher at once.")
    distill_runner: str = Field(
        "none",
        description="Where teacher calls run: none (in this process) | dask (Prefect tasks on a Dask cluster:"
        " dask_scheduler's, or a local one of dask_workers processes). Rows are written here either way.",
    )
    dask_workers: int = Field(2, ge=1, description="Worker processes of the local Dask cluster.")
    dask_scheduler: str | None = Field(
        None, description="A running Dask scheduler (tcp://host:8786) instead of a local cluster."
    )
    distill_batch_chunks: int = Field(
        16, ge=1, description="Chunks of one document per Dask task (one teacher per batch on a worker)."
    )
    review_numeric_rows: bool = Field(True, description="Numeric rows go to people even when grounded.")
    review_policy: str = Field("labelstudio", description="labelstudio | auto (demos and CI only)")
    review_timeout_s: float = Field(
        7 * 24 * 3600.0, description="How long a flow waits paused for reviewers."
    )
    labelstudio_url: str | None = Field(
        None, description="A Label Studio run elsewhere (else ours on loopback)."
    )
    labelstudio_port: int = Field(8089, description="Port of our Label Studio server on 127.0.0.1.")
    labelstudio_venv: Path | None = Field(
        None, description="Virtual environment for the Label Studio server."
    )
    labelstudio_version: str = Field("1.23.2", description="Label Studio server version to install.")
    labelstudio_start_timeout_s: float = Field(
        240.0, description="Wait this long for /health on first start."
    )
    labelstudio_attempts: int = Field(5, description="Attempts per Label Studio call when it is down.")
    labelstudio_backoff_s: float = Field(1.0, description="First backoff between Label Studio attempts.")
    review_webhook_port: int = Field(8090, description="Port of the webhook receiver on 127.0.0.1.")
    teacher_timeout_s: float = Field(60.0, description="Per-call timeout of a model teacher.")
    teacher_max_attempts: int = Field(6, description="Attempts per chunk across retries and key rotation.")
    teacher_backoff_s: float = Field(1.0, description="First backoff; doubles per retry, with jitter.")
    key_cooldown_s: float = Field(60.0, description="How long a rate-limited key rests before reuse.")
    price_input_per_mtok: float = Field(0.30, description="USD per million prompt tokens (cost estimate).")
    price_output_per_mtok: float = Field(2.50, description="USD per million output tokens (cost estimate).")
    gemini_model: str = Field("gemini-2.5-flash", description="Gemini model name.")
    gemini_base_url: str | None = Field(None, description="Override the Gemini endpoint (tests, proxies).")
    openai_base_url: str = Field("http://127.0.0.1:8080/v1", description="OpenAI-compatible endpoint.")
    openai_model: str = Field("qwen2.5-7b-instruct", description="Model name at the OpenAI endpoint.")
    llamacpp_model_path: str | None = Field(None, description="GGUF file for the llamacpp teacher.")
    llamacpp_threads: int = Field(2, description="CPU threads for llama.cpp.")

    # Quality gates and datasets
    min_numeric_share: float = Field(
        0.20, description="Least share of rows that state a number (both gates)."
    )
    similarity_threshold: float = Field(
        0.8, description="Character-bigram similarity above which two questions are near duplicates."
    )
    valid_share: float = Field(0.1, description="Share of a frozen dataset held out for validation.")
    context_share: float = Field(
        1.0,  # bench/learning_curve.py: hand-phrased grounded 50% at 0.3, 69% at 1.0 (30 steps)
        ge=0.0,
        le=1.0,
        description="Share of dataset rows also trained with the chunks answering retrieves for them as context.",
    )
    golden_size: int = Field(40, description="Questions held out from reviewed rows as the golden set.")

    # Models and training
    base_model: str = Field(
        "gemma3-270m", description="Base model: HF id or folder, a .gguf file, or gemma3-270m."
    )
    models_cache: Path | None = Field(None, description="Where converted base models are cached.")
    train_profile: str = Field("cpu-small", description="cpu-small | gpu-qlora | prototype")
    train_epochs: float = Field(
        3.0, description="Epochs (early stopping on the validation split may end sooner)."
    )
    train_save_steps: int = Field(50, description="Checkpoint and evaluate every N optimiser steps.")
    train_early_stopping_patience: int = Field(
        3, description="Evaluations without improvement before stopping."
    )
    train_device: str = Field("auto", description="auto | cuda | mps | cpu")
    train_seed: int = Field(0, description="Seed for LoRA initialisation and data order.")
    train_threads: int = Field(
        0, description="Torch CPU threads; 0 = all cores (fewer on a busy shared machine)."
    )
    answer_max_tokens: int = Field(
        96,
        description="Longest answer generated, by `slm ask`, `slm chat` and evaluation alike (evaluation "
        "scores what users get).",
        validation_alias=AliasChoices(
            "answer_max_tokens", "SLM_ANSWER_MAX_TOKENS", "eval_max_new_tokens", "SLM_EVAL_MAX_NEW_TOKENS"
        ),
    )
    answer_repeat_penalty: float = Field(
        1.1,
        description="Repetition penalty on the answer's own recent tokens (llama.cpp's repeat_penalty, the "
        "same in transformers; the prompt is not penalised); 1.0 turns it off.",
    )
    export_quant: str = Field("q8_0", description="GGUF quantisation of exports: f16 | q8_0 | q4_k_m")
    promotion_margin: float = Field(
        0.05, description="A challenger is refused if a metric may be worse by more than this (95% interval)."
    )

    # Orchestration
    bind_host: str = Field(
        "127.0.0.1",
        description="Address our servers listen on (Label Studio, webhook receiver, Prefect, model server).",
    )
    allow_remote_bind: bool = Field(
        False, description="Allow a non-loopback bind_host (exposes the servers to the network)."
    )
    warehouse_lock_wait_s: float = Field(
        30.0, description="How long an slm command waits for another one holding the warehouse."
    )
    prefect_port: int = Field(4200, description="Port of our Prefect server on 127.0.0.1.")
    work_pool: str = Field(
        "slm-process",
        description="Prefect process work pool for our deployments (the CPU stages with --pool-per-stage).",
    )
    gpu_work_pool: str = Field(
        "slm-gpu",
        description="Work pool of the GPU stages (train-and-evaluate, export, nightly) with `slm deploy"
        " --pool-per-stage`; its worker runs where the GPU is.",
    )
    deploy_repository: str | None = Field(
        None,
        description="Git repository a worker clones the project from (default: this checkout as a file://"
        " URL, which only workers on this machine can reach).",
    )
    deploy_commit: str | None = Field(
        None, description="Commit the workers check out (default: HEAD of this checkout)."
    )
    nightly_cron: str = Field("0 2 * * *", description="When the nightly retrain-and-evaluate runs.")
    timezone: str = Field("Asia/Shanghai", description="Time zone of the nightly schedule.")

    # Secrets: read from the environment or a 0600 file in the workspace, never printed.
    gemini_api_keys: SecretStr | None = Field(
        None,
        description="Comma-separated Gemini API keys (also GEMINI_API_KEYS).",
        validation_alias=AliasChoices("gemini_api_keys", "SLM_GEMINI_API_KEYS", "GEMINI_API_KEYS"),
    )
    openai_api_key: SecretStr | None = Field(
        None,
        description="Key for an OpenAI-compatible teacher endpoint (also OPENAI_API_KEY).",
        validation_alias=AliasChoices("openai_api_key", "SLM_OPENAI_API_KEY", "OPENAI_API_KEY"),
    )
    labelstudio_token: SecretStr | None = Field(None, description="Label Studio API token.")

    @property
    def warehouse_path(self) -> Path:
        return self.workspace / "warehouse.duckdb"

    @property
    def reports_dir(self) -> Path:
        return self.workspace / "reports"

    @property
    def artifacts_dir(self) -> Path:
        return self.workspace / "artifacts"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # toml_file is bound per call by load_settings(); with several files the later ones win.
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))

    def masked(self) -> dict[str, Any]:
        """Effective settings as plain values, secrets replaced by a mask (or ``None`` when unset)."""
        shown: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                shown[name] = "********" if value.get_secret_value() else None
            elif isinstance(value, Path):
                shown[name] = str(value)
            else:
                shown[name] = value
        return shown


def config_files(workspace: Path) -> list[Path]:
    """Existing config files, lowest precedence first: the current folder's, then the workspace's."""
    files: list[Path] = []
    for path in (Path.cwd() / CONFIG_FILE_NAME, workspace / CONFIG_FILE_NAME):
        if path.is_file() and all(path.resolve() != f.resolve() for f in files):
            files.append(path)
    secrets = workspace / SECRETS_FILE_NAME
    if secrets.is_file():
        if secrets.stat().st_mode & 0o077:
            raise ConfigError(f"{secrets}: secrets file is readable by others; run `chmod 600 {secrets}`")
        files.append(secrets)
    return files


class ConfigError(ValueError):
    """A configuration problem the user must fix; the message names the file."""


def load_settings(workspace: Path | str | None = None, **overrides: Any) -> Settings:
    """Build the effective settings. ``workspace`` (from ``--workspace``) beats ``SLM_WORKSPACE``."""
    ws = (
        Path(workspace)
        if workspace is not None
        else Path(os.environ.get("SLM_WORKSPACE") or DEFAULT_WORKSPACE)
    )
    files = config_files(ws)

    class BoundSettings(Settings):
        # The workspace decides which slm.toml is read, so the files are bound before the sources are built.
        model_config = SettingsConfigDict(env_prefix="SLM_", extra="ignore", toml_file=files or None)

    return BoundSettings(**overrides, workspace=ws)
