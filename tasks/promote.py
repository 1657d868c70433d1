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

    ``grounded`` answerers (same keys; retrieval and the numeric guard, as users are answered) are scored and
    reported beside the closed-book ones as ``"<label> grounded"``. The challenger must then be not worse in
    both modes: closed book, where the model alone answers (a regression cannot hide behind retrieval), and
    grounded, which is what `slm ask` serves (a model that reads its context worse is not promoted)."""
    scores: dict[str, dict[str, Any]] = {}
    results: dict[str, list] = {}
    runs: dict[str, str] = {}
    champion = registry.get_champion(con)
    model_ids = {"challenger": challenger_id, "champion": (champion or {}).get("model_id")}  # base: None
    grounded_results: dict[str, list] = {}
    for mode, batches in (("closed_book", answerers), ("grounded", grounded or {})):
        for label, answer_batch in batches.items():
            run_id, metrics, items_out = run_and_store(
                con, items, answer_batch, label, "golden", mode=mode, model_id=model_ids.get(label)
            )
            key = label if mode == "closed_book" else f"{label} grounded"
            scores[key], runs[key] = metrics, run_id
            (results if mode == "closed_book" else grounded_results)[label] = items_out
    reference = "champion" if "champion" in results else "base"
    decision = compare(results[reference], results["challenger"], margin=settings.promotion_margin)
    if "challenger" in grounded_results:
        grounded_reference = "champion" if "champion" in grounded_results else "base"
        decision = _in_both_modes(
            decision,
            compare(
                grounded_results[grounded_reference],
                grounded_results["challenger"],
                margin=settings.promotion_margin,
            ),
        )
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


def _in_both_modes(closed_book: Decision, grounded: Decision) -> Decision:
    """One decision: promote only if neither mode says worse. The reasons and checks name their mode; the
    regressed and fixed items listed are closed book's (the report shows those answers side by side)."""
    return Decision(
        closed_book.promote and grounded.promote,
        [f"closed book: {r}" for r in closed_book.reasons] + [f"grounded: {r}" for r in grounded.reasons],
        {**closed_book.checks, **{f"grounded {name}": check for name, check in grounded.checks.items()}},
        closed_book.regressed,
        closed_book.fixed,
    )


def force_promote(con: duckdb.DuckDBPyConnection, model_id: str, reason: str, who: str) -> None:
    """People may overrule the gate; it is recorded in the model's note."""
    registry.set_status(
        con, model_id, "champion", status="forced", note=f"promoted by {who} with --force: {reason}"
    )
