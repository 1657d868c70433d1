"""What the Prefect tasks and flows return: small typed records that callers read by attribute, with an
``as_dict()`` (plain JSON: paths as strings) for artifacts and for whoever reads a flow run's result."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


def _plain(value: Any) -> Any:
    if isinstance(value, Result):
        return value.as_dict()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


class Result:
    """Base of the records: ``as_dict()``, and reading by key as that dict reads, so a flow run's result
    means the same to a script that reads it as JSON (``result["evaluation"]["promoted"]``)."""

    def as_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}  # type: ignore[arg-type]

    def __getitem__(self, key: str) -> Any:
        return self.as_dict()[key]

    def __contains__(self, key: object) -> bool:
        return key in self.as_dict()

    def get(self, key: str, default: Any = None) -> Any:
        return self.as_dict().get(key, default)


@dataclass(frozen=True)
class IngestSummary(Result):
    added: int
    unchanged: int
    failed: list[str]
    facts: int


@dataclass(frozen=True)
class DistillRun(Result):
    run_id: str
    teacher: str
    chunks: int
    cached: int
    failed: int
    rows_added: int
    calls: int
    cost_usd: float
    totals: dict[str, Any] = field(default_factory=dict)  # rows_summary(): rows, numeric_share, ...

    @property
    def rows(self) -> int:
        return int(self.totals.get("rows", 0))

    @property
    def numeric_share(self) -> float:
        return float(self.totals.get("numeric_share", 0.0))

    @property
    def facts_covered(self) -> int:
        return int(self.totals.get("facts_covered", 0))

    @property
    def facts_total(self) -> int:
        return int(self.totals.get("facts_total", 0))

    def as_dict(self) -> dict[str, Any]:
        plain = super().as_dict()
        totals = plain.pop("totals")
        return {**plain, **totals}  # flat, as the distill step's result always read


@dataclass(frozen=True)
class ReviewBatch(Result):
    batch_id: str
    ls_project_id: int
    rows: int
    new_tasks: int
    url: str


@dataclass(frozen=True)
class ReviewSync(Result):
    batch_id: str
    applied: int
    flagged: int
    status: str


@dataclass(frozen=True)
class FrozenDataset(Result):
    dataset_id: str
    path: Path
    rows: int
    train: int
    valid: int
    numeric_share: float
    created: bool

    @classmethod
    def of(cls, info: Any) -> FrozenDataset:
        """From ``tasks.train.dataset.DatasetInfo``."""
        return cls(
            info.dataset_id,
            Path(info.path),
            info.row_count,
            info.train_count,
            info.valid_count,
            info.numeric_share,
            info.created,
        )


@dataclass(frozen=True)
class GateResult(Result):
    """A gate that passed (a failing one fails the flow) and, for the release gate, the dataset it froze."""

    report: Any  # expectations.runner.GateReport
    dataset: FrozenDataset | None = None

    @property
    def message(self) -> str:
        return str(self.report.message)

    def as_dict(self) -> dict[str, Any]:
        return {**self.report.as_dict(), "dataset": self.dataset.as_dict() if self.dataset else None}


@dataclass(frozen=True)
class TrainedChallenger(Result):
    model_id: str
    adapter_dir: Path
    dataset_id: str
    steps: int
    tokens_per_s: float
    wall_s: float
    peak_rss_mb: float
    final_eval_loss: float | None
    loss_png: Path


@dataclass(frozen=True)
class EvaluationVerdict(Result):
    promoted: bool
    reasons: list[str]
    scores: dict[str, dict[str, Any]]  # mode (closed_book, grounded) -> model label -> score families
    report_md: Path
    report_html: Path


@dataclass(frozen=True)
class ExportedModel(Result):
    path: Path
    quant: str
    size_bytes: int
    model_id: str
    what: str  # "champion", or "untuned base (no champion yet)"


@dataclass(frozen=True)
class BuiltDataset(Result):
    """The build-dataset flow: each step's result, and the frozen dataset."""

    review_policy: str
    ingest: IngestSummary
    distill: DistillRun
    pre_review: str  # the gate's message
    release: str
    dataset: FrozenDataset
    review: dict[str, Any] | None = None  # counts of the auto policy, or what resumed the paused run
    sync: ReviewSync | None = None


@dataclass(frozen=True)
class TrainedAndEvaluated(Result):
    challenger: TrainedChallenger
    evaluation: EvaluationVerdict
    export: ExportedModel | None = None


@dataclass(frozen=True)
class PipelineRun(Result):
    dataset: BuiltDataset
    trained: bool
    run: TrainedAndEvaluated | None = None  # None: the dataset was trained on before

    def as_dict(self) -> dict[str, Any]:
        # Flat, as before: {"dataset", "trained", "challenger", "evaluation", "export"}.
        run = self.run.as_dict() if self.run else {}
        return {"dataset": self.dataset.as_dict(), "trained": self.trained, **run}


@dataclass(frozen=True)
class NightlyRun(Result):
    changed: bool
    dataset: FrozenDataset
    run: TrainedAndEvaluated | None = None

    def as_dict(self) -> dict[str, Any]:
        run = self.run.as_dict() if self.run else {}
        return {"changed": self.changed, "dataset": self.dataset.as_dict(), **run}
