"""Running an evaluation: one model on a question set (`slm eval`), or the challenger against the champion
and the base (the train-and-evaluate flow). Both answer as `slm ask` answers (same guard, retry and max
tokens) through the answering calls they are given: which model and which GGUF is the export stage's
choice (``tasks.export.resolve``), above this one."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from runtime.config import Settings
from tasks.evaluate.evaluate import EvalItem, Evaluation, ItemResult, file_set, load_questions

__all__ = [
    "BACKENDS",
    "ChallengeOutcome",
    "ModelEvaluation",
    "NoQuestions",
    "evaluate_challenger",
    "evaluate_model",
    "model_label",
]

BACKENDS = ("llamacpp", "transformers")


class NoQuestions(LookupError):
    """Neither a question file nor a golden set to evaluate on."""


@dataclass(frozen=True)
class ModelEvaluation:
    """One model, one mode, one question set: the stored run and both score families, item by item."""

    run_id: str
    label: str
    mode: str
    backend: str
    result: Evaluation

    @property
    def metrics(self) -> dict[str, Any]:
        return self.result.metrics

    def as_dict(self) -> dict[str, Any]:
        """`slm eval --json`: the metrics and, per item, what the model wrote, what was shown, and passes."""
        metrics = self.result.metrics
        return {
            "eval_run_id": self.run_id,
            "model_label": self.label,
            "mode": self.mode,
            "backend": self.backend,
            "model": metrics["model"],
            "shown": metrics["shown"],
            "guard_actions": metrics["guard_actions"],
            "per_set": metrics["per_set"],
            "items": [
                {
                    "id": m.id,
                    "question": m.question,
                    "type": m.type,
                    "set": question_set,
                    "model_answer": reply.model,
                    "draft": reply.draft,
                    "guard_action": reply.guard_action,
                    "shown": reply.shown,
                    "model_pass": _passes(m),
                    "shown_pass": _passes(s),
                }
                for m, s, reply, question_set in zip(
                    self.result.model, self.result.shown, self.result.replies, self.result.sets, strict=True
                )
            ],
        }


def _passes(result: ItemResult) -> dict[str, Any]:
    return {
        "numbers": result.numbers_ok,
        "keywords": None if result.keyword_share is None else result.keyword_share == 1.0,
        "no_invented": not result.invented,
        "abstention": result.abstained,
        "echoed": result.echoed,
        "strict": result.passed,
    }


def model_label(model: str | None, backend: str) -> str:
    """How a run is named when no model is given: what each backend answers with by default."""
    return model or ("champion" if backend == "llamacpp" else "base")


def question_file_items(questions: Path) -> list[EvalItem]:
    """A question file's items, as one set named after the file (as `slm golden add` registers it)."""
    return [replace(i, source=file_set(questions)) for i in load_questions(questions)]


def evaluate_model(
    con: Any,
    settings: Settings,
    items: list[EvalItem] | None,
    generator: Any,
    label: str,
    mode: str,
    backend: str = "llamacpp",
    source: str = "golden",
    on_batch: Callable[[int, int], None] | None = None,
    limit: int | None = None,
) -> ModelEvaluation:
    """Answer ``items`` (None: the golden set; ``limit``: only the first N) through ``generator`` (a model's
    answering call, ``tasks.export.resolve.generator_for``) in ``mode`` as `slm ask` does, and store the
    run as ``label``; raises ``NoQuestions``."""
    from tasks.answer.answer import answer_batch
    from tasks.evaluate.evaluate import run_and_store
    from tasks.evaluate.golden import golden_items

    if items is None:
        items = golden_items(con)
    if not items:
        raise NoQuestions("no questions: pass --questions FILE or freeze a dataset (golden set)")
    items = items[:limit] if limit else items
    run_id, result = run_and_store(
        con,
        items,
        answer_batch(generator, con, mode, settings.answer_max_tokens),
        label,
        source,
        mode=mode,
        on_batch=on_batch,
        batch_size=1,
    )
    return ModelEvaluation(run_id, label, mode, backend, result)


@dataclass(frozen=True)
class ChallengeOutcome:
    """The challenger judged against the champion (or the base): the decision, the scores by mode and by
    model, and the report."""

    promoted: bool
    reasons: list[str]
    scores: dict[str, dict[str, Any]]  # mode -> model label -> both score families
    report_md: Path
    report_html: Path


def evaluate_challenger(
    con: Any,
    settings: Settings,
    challenger_id: str,
    generators: dict[str, Any],
    context: dict[str, Any],
    loss_png: Path | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> ChallengeOutcome:
    """The models of ``generators`` (labels base, challenger, and champion when there is one; each a GGUF
    run in llama.cpp) on the golden set, answered as users are answered, closed book and grounded; the
    challenger is promoted or refused, and the report written. ``on_progress(done, total)``: answers so
    far, over every model and mode."""
    from tasks.answer.answer import MODES, answer_batch
    from tasks.evaluate.golden import golden_items
    from tasks.evaluate.promote import challenge
    from tasks.evaluate.report import describe_review
    from warehouse.review import review_sources

    batches = {
        mode: {
            label: answer_batch(generator, con, mode, settings.answer_max_tokens)
            for label, generator in generators.items()
        }
        for mode in MODES
    }
    outcome = challenge(
        con,
        settings,
        challenger_id,
        golden_items(con),
        batches["closed_book"],
        {
            **context,
            "answered by": f"llama.cpp, {settings.export_quant} GGUF exports, "
            f"at most {settings.answer_max_tokens} tokens, as `slm ask` answers",
            "review (rows approved by)": describe_review(review_sources(con)),
        },
        loss_png,
        batches["grounded"],
        on_progress,
    )
    return ChallengeOutcome(
        outcome.promoted,
        list(outcome.decision.reasons),
        outcome.scores,
        Path(outcome.report_md),
        Path(outcome.report_html),
    )
