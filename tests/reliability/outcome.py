"""What one fault scenario tried and what it lost; the row type of ``bench/faults.py``'s table."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class FaultOutcome:
    """The result of one scenario. Everything under "lost" must be 0 for the scenario to pass."""

    scenario: str
    faults: Counter[str] = field(default_factory=Counter)  # fault kind -> how many were injected
    runs_completed: int = 0  # runs (or re-runs after a fault) that finished with the expected result
    rows_lost: int = 0  # warehouse rows present after a clean run but missing after the faulty one
    annotations_lost: int = 0  # Label Studio annotations not found in the warehouse afterwards
    duplicates: int = 0  # rows, tasks or annotations stored twice
    secrets_found: int = 0  # planted secret values found in any output
    notes: str = ""
    problems: list[str] = field(default_factory=list)  # properties that did not hold (besides losses)

    @property
    def lost(self) -> int:
        return self.rows_lost + self.annotations_lost + self.duplicates + self.secrets_found

    @property
    def passed(self) -> bool:
        return self.lost == 0 and not self.problems and self.runs_completed > 0

    def add_fault(self, kind: str, count: int = 1) -> None:
        self.faults[kind] += count
