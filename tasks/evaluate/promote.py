"""Champion and challenger: every trained adapter is a challenger, evaluated on the golden set next to the
champion (or, before the first promotion, the untuned base) and the base, on the same items. It replaces the
champion only if it is not worse (tasks.evaluate.evaluate.compare); otherwise it is refused and the report lists the
items that regressed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from runtime.config import Settings
from tasks.evaluate.evaluate import (
    MODE_NAMES,
    Decision,
    EvalItem,
    Evaluation,
    compare,
    judged_items,
    run_and_store,
)
from tasks.evaluate.report import write_report
from warehouse import models as registry

AnswerBatch = Callable[[list[str]], list[str]]


@dataclass
class PromotionResult:
    challenger_id: str
    promoted: bool
    decision: Decision  # both modes together: promote only if neither says worse
    scores: dict[
        str, dict[str, dict[str, Any]]
    ]  # mode -> label (base, challenger, champion) -> both families
    eval_runs: dict[str, dict[str, str]]  # mode -> label -> eval run id
    report_md: Path
    report_html: Path
    decisions: dict[str, Decision] = field(default_factory=dict)  # per mode


def challenge(
    con: duckdb.DuckDBPyConnection,
    settings: Settings,
    challenger_id: str,
    items: list[EvalItem],
    answerers: dict[str, AnswerBatch],
    context: dict[str, Any] | None = None,
    loss_png: Path | None = None,
    grounded: dict[str, AnswerBatch] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> PromotionResult:
    """Evaluate ``answerers`` (keys: base, challenger, and champion when there is one) closed book and the
    ``grounded`` ones (same keys; retrieval and the numeric guard, as users are answered), decide, record the
    outcome in the model registry, and write the report.

    Each mode is judged on its own items (:func:`tasks.evaluate.evaluate.judged_items`: closed book on the recall
    split, grounded on the reading split, question files in both) and on the *model* family: what the model
    wrote, not the guard's quote or abstention. The challenger must be not worse in both modes: closed book,
    where a regression cannot hide behind retrieval, and grounded, which is what `slm ask` serves."""
    scores: dict[str, dict[str, dict[str, Any]]] = {}
    runs: dict[str, dict[str, str]] = {}
    evaluations: dict[str, dict[str, Evaluation]] = {}
    champion = registry.get_champion(con)
    model_ids = {"challenger": challenger_id, "champion": (champion or {}).get("model_id")}  # base: None
    plan = [
        (mode, batches, judged_items(items, mode))
        for mode, batches in (("closed_book", answerers), ("grounded", grounded or {}))
    ]
    total = sum(len(batches) * len(chosen) for _, batches, chosen in plan)
    answered = 0
    for mode, batches, chosen in plan:
        if not batches or not chosen:
            continue
        for label, answer_batch in batches.items():
            run_id, result = run_and_store(
                con,
                chosen,
                answer_batch,
                label,
                "golden",
                mode=mode,
                model_id=model_ids.get(label),
                # Progress over every model and mode: the answers before this evaluation plus its own.
                on_batch=(lambda done, _, before=answered: on_progress(before + done, total))
                if on_progress
                else None,
            )
            answered += len(chosen)
            scores.setdefault(mode, {})[label] = result.metrics
            runs.setdefault(mode, {})[label] = run_id
            evaluations.setdefault(mode, {})[label] = result
    decisions: dict[str, Decision] = {}
    for mode, results in evaluations.items():
        if "challenger" not in results:
            continue
        reference = "champion" if "champion" in results else "base"
        decisions[mode] = compare(
            results[reference].model, results["challenger"].model, margin=settings.promotion_margin
        )
    decision = _in_every_mode(decisions)
    reference = "champion" if champion and "champion" in answerers else "base"
    summary = {
        f"{mode} {k}": evaluations[mode]["challenger"].metrics["model"][k]
        for mode in evaluations
        for k in ("n", "accuracy", "numeric_accuracy", "invented_number_rate")
    }
    verdict = "; ".join(decision.reasons)
    if decision.promote:
        registry.set_status(
            con,
            challenger_id,
            "champion",
            status="promoted",
            eval_metrics=summary,
            note=f"promoted over the {reference}: {verdict}",
        )
    else:
        registry.set_status(
            con,
            challenger_id,
            "rejected",
            status="refused",
            eval_metrics=summary,
            note=f"refused against the {reference}: {verdict}",
        )
    name = f"eval-{challenger_id[:12]}"
    md, page = write_report(
        settings.reports_dir,
        name,
        scores,
        decisions,
        evaluations,
        {"challenger": challenger_id, "compared with": reference, **(context or {})},
        loss_png,
    )
    return PromotionResult(challenger_id, decision.promote, decision, scores, runs, md, page, decisions)


def _in_every_mode(decisions: dict[str, Decision]) -> Decision:
    """One decision: promote only if no mode says worse. Reasons and checks name their mode."""
    if not decisions:
        return Decision(False, ["nothing evaluated"], {}, [], [])
    prefix = {mode: f"{MODE_NAMES[mode]}: " for mode in decisions}
    return Decision(
        all(d.promote for d in decisions.values()),
        [prefix[mode] + r for mode, d in decisions.items() for r in d.reasons],
        {
            (name if mode == "closed_book" else f"{MODE_NAMES[mode]} {name}"): check
            for mode, d in decisions.items()
            for name, check in d.checks.items()
        },
        [i for d in decisions.values() for i in d.regressed],
        [i for d in decisions.values() for i in d.fixed],
    )


def force_promote(con: duckdb.DuckDBPyConnection, model_id: str, reason: str, who: str) -> None:
    """People may overrule the gate; it is recorded in the model's note."""
    registry.set_status(
        con, model_id, "champion", status="forced", note=f"promoted by {who} with --force: {reason}"
    )
