"""The gates as Prefect tasks: thin wrappers that fail the flow with the gate's message and publish the
report as a markdown artifact (the table of expectations and the Data Docs path)."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from expectations.runner import GateReport
from flows.progress import reported_stage
from flows.results import FrozenDataset, GateResult
from runtime.config import Settings
from warehouse.db import settings_warehouse


class GateFailed(RuntimeError):
    """A gate did not pass; the message lists the failed expectations with their observed values."""


def gate_markdown(report: GateReport, review_policy: str | None = None) -> str:
    lines = [f"# Gate `{report.gate}`: {'passed' if report.success else 'FAILED'}", "", report.message, ""]
    if review_policy:
        lines += [f"Review policy: **{review_policy}**", ""]
    lines += ["| | expectation | column | observed | unexpected |", "|---|---|---|---|---|"]
    for o in report.outcomes:
        observed = (
            f"{o.observed:.3f}"
            if isinstance(o.observed, float)
            else (o.observed if o.observed is not None else "")
        )
        lines.append(
            f"| {'pass' if o.success else '**FAIL**'} | {o.description or o.expectation} | {o.column or ''} "
            f"| {observed} | {o.unexpected_count} |"
        )
    if report.conflicts:
        lines += ["", "Conflicts: " + ", ".join(f"{k} {v}" for k, v in sorted(report.conflicts.items()))]
    if report.offending:
        lines += ["", "| row | question | numbers | conflict partner |", "|---|---|---|---|"]
        for r in report.offending[:20]:
            question = r["question"].replace("|", "\\|")
            lines.append(
                f"| {r['row_id']} | {question} | {','.join(r['numbers'])} | {r['conflict_partner'] or ''} |"
            )
    if report.data_docs_index:
        lines += ["", f"Data Docs: `{report.data_docs_index}`"]
    return "\n".join(lines)


@task(name="quality-gate", cache_policy=NO_CACHE)
@reported_stage
def gate_task(settings: Settings, gate: str) -> GateResult:
    """Run ``gate`` as `slm gate` does (a passing release gate freezes the dataset); publish the report;
    raise ``GateFailed`` (failing the flow) when it does not pass."""
    from tasks.train.release import run_gate_and_freeze

    with settings_warehouse(settings) as con:
        outcome = run_gate_and_freeze(con, settings, gate)
    report = outcome.report
    create_markdown_artifact(
        key=f"gate-{gate.replace('_', '-')}",
        markdown=gate_markdown(report, settings.review_policy),
        description=report.message[:250],
    )
    if not report.success:
        raise GateFailed(report.message)
    return GateResult(report, FrozenDataset.of(outcome.dataset) if outcome.dataset else None)
