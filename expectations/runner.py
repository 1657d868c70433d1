"""The one gate runner: refresh conflicts, pull the rows from DuckDB into pandas, validate them with the
Great Expectations suite, write Data Docs, record the result in the warehouse."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from expectations.suites import SUITES
from runtime.config import Settings
from warehouse import gates as queries

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")  # no telemetry: this machine is offline by design

GATES = tuple(SUITES)
DATA_DOCS_SITE = "slm_data_docs"


@dataclass
class ExpectationOutcome:
    expectation: str
    column: str | None
    success: bool
    observed: Any
    unexpected_count: int
    unexpected_rows: list[str]
    description: str


@dataclass
class GateReport:
    gate: str
    gate_run_id: str
    success: bool
    row_count: int
    outcomes: list[ExpectationOutcome] = field(default_factory=list)
    offending: list[dict[str, Any]] = field(default_factory=list)
    conflicts: dict[str, int] = field(default_factory=dict)
    data_docs_index: str | None = None
    moved_to_review: int = 0

    @property
    def message(self) -> str:
        failed = [o for o in self.outcomes if not o.success]
        if not failed:
            return f"gate {self.gate} passed ({self.row_count} rows)"
        parts = [
            f"{o.description or o.expectation} (observed "
            + (_show(o.observed) if o.observed is not None else f"{o.unexpected_count} offending rows")
            + ")"
            for o in failed
        ]
        return f"gate {self.gate} failed: " + "; ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "gate": self.gate,
            "gate_run_id": self.gate_run_id,
            "success": self.success,
            "row_count": self.row_count,
            "conflicts": self.conflicts,
            "data_docs_index": self.data_docs_index,
            "outcomes": [o.__dict__ for o in self.outcomes],
            "offending": self.offending[:50],
            "message": self.message,
        }


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def run_gate(con: duckdb.DuckDBPyConnection, settings: Settings, gate: str) -> GateReport:
    """Run ``gate`` (pre_review or release) over the warehouse and record the result."""
    if gate not in SUITES:
        raise ValueError(f"unknown gate {gate!r}; choose one of {', '.join(GATES)}")
    conflicts = queries.detect_conflicts(con, settings.similarity_threshold)
    moved = queries.send_conflicts_to_review(con) if gate == "pre_review" else 0
    frame = (
        queries.pre_review_frame(con, settings.similarity_threshold)
        if gate == "pre_review"
        else queries.release_frame(con, settings.similarity_threshold)
    )
    docs_dir = (settings.reports_dir / "data_docs").resolve()  # GX wants an absolute folder
    outcomes, index = _validate(frame, gate, settings.min_numeric_share, docs_dir)
    report = GateReport(
        gate=gate,
        gate_run_id=uuid.uuid4().hex[:16],
        success=all(o.success for o in outcomes),
        row_count=len(frame),
        outcomes=outcomes,
        conflicts=conflicts,
        data_docs_index=index,
        moved_to_review=moved,
    )
    report.offending = _offending_rows(frame, outcomes)
    queries.record_gate_run(
        con, report.gate_run_id, gate, report.success, report.row_count, report.as_dict(), index
    )
    return report


def _validate(
    frame: pd.DataFrame, gate: str, min_numeric_share: float, docs_dir: Path
) -> tuple[list[ExpectationOutcome], str | None]:
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    docs_dir.mkdir(parents=True, exist_ok=True)
    context.add_data_docs_site(
        site_name=DATA_DOCS_SITE,
        site_config={
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        },
    )
    batch = (
        context.data_sources.add_pandas("warehouse")
        .add_dataframe_asset("qa_rows")
        .add_batch_definition_whole_dataframe("rows")
    )
    suite = context.suites.add(SUITES[gate](min_numeric_share))
    validation = context.validation_definitions.add(
        gx.ValidationDefinition(name=gate, data=batch, suite=suite)
    )
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name=f"{gate}_gate",
            validation_definitions=[validation],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=[DATA_DOCS_SITE])],
            result_format={"result_format": "COMPLETE", "unexpected_index_column_names": ["row_id"]},
        )
    )
    result = checkpoint.run(batch_parameters={"dataframe": frame})
    # Custom expectations keep their fixed column and description on the class, not in the result config.
    known = {
        e.expectation_type: (getattr(e, "description", None), getattr(e, "column", None))
        for e in suite.expectations
    }
    outcomes = []
    for run in result.run_results.values():
        for item in run.results:
            config = item.expectation_config
            details = item.result or {}
            unexpected = [
                entry.get("row_id")
                for entry in details.get("unexpected_index_list") or []
                if isinstance(entry, dict) and entry.get("row_id") is not None
            ]
            outcomes.append(
                ExpectationOutcome(
                    expectation=config.type,
                    column=config.kwargs.get("column"),
                    success=bool(item.success),
                    observed=_plain(details.get("observed_value")),
                    unexpected_count=int(details.get("unexpected_count") or 0),
                    unexpected_rows=[str(r) for r in unexpected],
                    description=config.description or known.get(config.type, ("", None))[0] or "",
                )
            )
    index = docs_dir / "index.html"
    return outcomes, str(index) if index.exists() else None


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value][:10]
    return value


def _offending_rows(frame: pd.DataFrame, outcomes: list[ExpectationOutcome]) -> list[dict[str, Any]]:
    """The rows to fix, worst first: id, question, numbers, conflict partner, and which checks they fail."""
    failing: dict[str, list[str]] = {}
    for outcome in outcomes:
        for row_id in outcome.unexpected_rows:
            failing.setdefault(row_id, []).append(outcome.column or outcome.expectation)
    if not failing:
        return []
    by_id = frame.set_index("row_id")
    rows = []
    for row_id, checks in sorted(failing.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        record = by_id.loc[row_id]
        rows.append(
            {
                "row_id": row_id,
                "question": record["question"],
                "numbers": list(record["numbers"]),
                "status": record["status"],
                "conflict_partner": p if isinstance(p := record["conflict_partner"], str) else None,
                "fails": checks,
            }
        )
    return rows
