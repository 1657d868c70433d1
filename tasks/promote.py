"""Champion and challenger: every trained adapter is a challenger, evaluated on the golden set next to the
champion (or, before the first promotion, the untuned base) and the base, on the same items. It replaces the
champion only if it is not worse (tasks.evaluate.compare); otherwise it is refused and the report lists the
items that regressed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from tasks.config import Settings
from tasks.evaluate import Decision, EvalItem, compare, run_and_store
from tasks.report import write_report
from warehouse import models as registry

AnswerBatch = Callable[[list[str]], list[str]]


@dataclass
class PromotionResult:
    challenger_id: str
    promoted: bool
    decision: Decision
    scores: dict[str, dict[str, Any]]
    eval_runs: dict[str, str]
    report_md: Path
    report_html: Path


def challenge(
    con: duckdb.DuckDBPyConnection,
    settings: Settings,
    challenger_id: str,
    items: list[EvalItem],
    answerers: dict[str, AnswerBatch],
    context: dict[str, Any] | None = None,
    loss_png: Path | None = None,
    grounded: dict[str, AnswerBatch] | None = None,
) -> PromotionResult:
    """Evaluate ``answerers`` (keys: base, challenger, and champion when there is one) on ``items``,
    decide, record the outcome in the model registry, and write the report.

    ``grounded`` answerers (same keys; retrieval and the numeric guard) are scored and reported beside the
    closed-book ones as ``"<label> grounded"``; the decision stays on closed book, where the model alone
    answers, so a regression cannot hide behind retrieval."""
    scores: dict[str, dict[str, Any]] = {}
    results: dict[str, list] = {}
    runs: dict[str, str] = {}
    champion = registry.get_champion(con)
    for label, answer_batch in answerers.items():
        model_id = (
            challenger_id
            if label == "challenger"
            else (champion or {}).get("model_id")
            if label == "champion"
            else None
        )
        run_id, metrics, items_out = run_and_store(
            con, items, answer_batch, label, "golden", model_id=model_id
        )
        scores[label], results[label], runs[label] = metrics, items_out, run_id
    for label, answer_batch in (grounded or {}).items():
        model_id = challenger_id if label == "challenger" else None
        run_id, metrics, _ = run_and_store(
            con, items, answer_batch, label, "golden", mode="grounded", model_id=model_id
        )
        scores[f"{label} grounded"], runs[f"{label} grounded"] = metrics, run_id
    reference = "champion" if "champion" in results else "base"
    decision = compare(results[reference], results["challenger"], margin=settings.promotion_margin)
    summary = {
        k: scores["challenger"][k] for k in ("n", "accuracy", "numeric_accuracy", "invented_number_rate")
    }
    if decision.promote:
        registry.set_status(
            con,
            challenger_id,
            "champion",
            status="promoted",
            eval_metrics=summary,
            note=f"promoted over the {reference}: " + "; ".join(decision.reasons),
        )
    else:
        registry.set_status(
            con,
            challenger_id,
            "rejected",
            status="refused",
            eval_metrics=summary,
            note=f"refused against the {reference}: " + "; ".join(decision.reasons),
        )
    name = f"eval-{challenger_id[:12]}"
    md, page = write_report(
        settings.reports_dir,
        name,
        scores,
        decision,
        results[reference],
        results["challenger"],
        {
            "challenger": challenger_id,
            "compared with": reference,
            "review policy": settings.review_policy,
            **(context or {}),
        },
        loss_png,
    )
    return PromotionResult(challenger_id, decision.promote, decision, scores, runs, md, page)


def force_promote(con: duckdb.DuckDBPyConnection, model_id: str, reason: str, who: str) -> None:
    """People may overrule the gate; it is recorded in the model's note."""
    registry.set_status(
        con, model_id, "champion", status="forced", note=f"promoted by {who} with --force: {reason}"
    )
