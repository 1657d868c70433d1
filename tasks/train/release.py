"""A quality gate, and what a passing release gate leads to: a frozen dataset. `slm gate` and the flows'
gate step both run it here, so the gate and the freeze cannot drift apart."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import duckdb

from runtime.config import Settings
from tasks.train.dataset import DatasetInfo, freeze_dataset

__all__ = ["GateOutcome", "run_gate_and_freeze"]


@dataclass(frozen=True)
class GateOutcome:
    """The gate's report, and the dataset it froze (only a passing release gate freezes one)."""

    report: Any  # expectations.runner.GateReport
    dataset: DatasetInfo | None = None

    @property
    def success(self) -> bool:
        return bool(self.report.success)


def run_gate_and_freeze(con: duckdb.DuckDBPyConnection, settings: Settings, gate: str) -> GateOutcome:
    """Run ``gate`` over the rows; a passing ``release`` gate freezes (or finds unchanged) the dataset."""
    from expectations.runner import run_gate

    report = run_gate(con, settings, gate)
    frozen = report.success and gate == "release"
    return GateOutcome(report, freeze_dataset(con, settings, report.gate_run_id) if frozen else None)
