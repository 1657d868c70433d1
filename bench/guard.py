"""What the numeric guard alone is worth: grounded answering over the hand-phrased sets with scripted models.

The same two sets as ``bench/retrieval.py`` (the sample's 40 questions over the bundled sample, the 45 dev
questions over three corpus texts), each document set ingested into a temporary workspace, every question
answered by ``tasks.answer.answer.answer_batch`` in grounded mode and scored by
``tasks.evaluate.evaluate`` in both families.
Three scripted "models" bracket what a real one does:

- ``reference``: always writes the item's reference answer (the guard's ceiling: what it loses by refusing
  right answers where retrieval ranks the wrong fact first);
- ``abstain``: always says "文件中没有相关规定。" (what the composer shows when the model knows nothing);
- ``echo``: always repeats its system prompt (the untuned base's habit);
- ``first-number``: always writes the first sentence with a rule number in the first rule excerpt shown, a
  confident reader that answers every question, those the rules do not answer included (the tuned model's
  habit on questions it cannot place);
- ``first-lead``: always writes the first line of the prompt's lead (the best-fitting fact's statement, or a
  time question's rule clause), and abstains where the prompt has no lead: what copying the lead is worth,
  the ceiling of a model that learned only to copy it.

Model-family scores of ``abstain`` and ``echo`` are 0 by construction; their *shown* scores are the guard's
own work. ``first-number``'s shown abstention is what the guard makes of a confident wrong answer.

``--drafts SET=WAREHOUSE`` adds ``recorded``: a real model's drafts, as the newest grounded evaluation of the
challenger in that workspace's warehouse stored them (``slm run`` or ``slm eval``), replayed through the guard
as it is now; its constrained retry gets the same draft again. So a guard change is measured on what a trained
model wrote without training or running it again.

    .venv/bin/python bench/guard.py [--misses] [--drafts dev=ws-corpus/warehouse.duckdb]
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.retrieval import SETS  # noqa: E402
from runtime.config import load_settings  # noqa: E402
from tasks.answer.answer import ABSTAIN_TEXT, answer_batch  # noqa: E402
from tasks.answer.fact_retrieve import clear_cache as clear_fact_cache  # noqa: E402
from tasks.answer.prompts import EVIDENCE_LEAD  # noqa: E402
from tasks.answer.retrieve import clear_cache  # noqa: E402
from tasks.evaluate.evaluate import EvalItem, evaluate, fmt, ledger_view, load_questions  # noqa: E402
from tasks.ingest.documents import ingest_file  # noqa: E402
from tasks.ingest.numbers import rule_numbers  # noqa: E402
from warehouse.db import open_warehouse  # noqa: E402
from warehouse.evaluation import recorded_drafts  # noqa: E402


def asked(messages: list[dict[str, str]]) -> str:
    """The question a grounded prompt asks (after its last "问题：")."""
    return messages[-1]["content"].rsplit("问题：", 1)[-1].strip()


def scripted(items: list[EvalItem]) -> dict[str, Callable[..., str]]:
    reference = {i.question: i.answer for i in items}

    def first_number(messages: list[dict[str, str]]) -> str:
        excerpt = messages[-1]["content"].split("【1】", 1)[-1].split("\n\n", 1)[0]
        body = excerpt.split("\n", 1)[-1]  # the excerpt's heading line aside
        sentences = [s for s in re.split(r"(?<=[。；;])", body) if rule_numbers(s)]
        return sentences[0].strip() if sentences else ABSTAIN_TEXT

    def first_lead(messages: list[dict[str, str]]) -> str:
        prompt = messages[-1]["content"]
        if not prompt.startswith(EVIDENCE_LEAD):
            return ABSTAIN_TEXT
        return prompt.split("\n", 2)[1].strip().strip("“”")

    return {
        "reference": lambda messages, max_tokens, grammar=None: reference.get(asked(messages), ABSTAIN_TEXT),
        "abstain": lambda messages, max_tokens, grammar=None: ABSTAIN_TEXT,
        "echo": lambda messages, max_tokens, grammar=None: messages[0]["content"],
        "first-number": lambda messages, max_tokens, grammar=None: first_number(messages),
        "first-lead": lambda messages, max_tokens, grammar=None: first_lead(messages),
    }


def recorded(drafts: dict[str, str]) -> Callable[..., str]:
    """A "model" that writes the draft recorded for the question (the abstention where none was)."""

    def write(messages: list[dict[str, str]], max_tokens: int, grammar: object = None) -> str:
        return drafts.get(asked(messages), ABSTAIN_TEXT)

    return write


def run_set(
    name: str, questions: Path, docs: list[Path], show_misses: bool, drafts: dict[str, str] | None = None
) -> None:
    items = load_questions(questions)
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(Path(tmp) / "ws")
        with open_warehouse(settings.warehouse_path) as con:
            for doc in docs:
                if ingest_file(con, doc, settings).status == "failed":
                    raise SystemExit(f"{doc}: ingest failed")
            clear_cache()
            clear_fact_cache()
            view = ledger_view(con)
            models = scripted(items) | ({"recorded": recorded(drafts)} if drafts else {})
            for model, generator in models.items():
                result = evaluate(items, answer_batch(generator, con, "grounded", 64), view)
                for family in ("model", "shown"):
                    m = result.metrics[family]
                    print(
                        f"{name:7} {model:12} {family:6} accuracy {fmt(m['accuracy']):>4}  "
                        f"numeric {fmt(m['numeric_accuracy']):>4} (n={m['n_numeric']})  "
                        f"abstention {fmt(m['abstention_accuracy']):>4} (n={m['n_unanswerable']})  "
                        f"invented {fmt(m['invented_number_rate']):>3}"
                    )
                actions = ", ".join(f"{k} {v}" for k, v in sorted(result.metrics["guard_actions"].items()))
                print(f"{'':7} {model:12} guard  {actions}")
                if show_misses:
                    for item, shown, reply in zip(items, result.shown, result.replies, strict=True):
                        if not shown.passed and item.type != "text":
                            print(f"{'':9}miss {item.id}: {reply.guard_action}: {reply.shown[:60]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--misses", action="store_true", help="list the numeric and unanswerable misses")
    parser.add_argument(
        "--drafts",
        action="append",
        default=[],
        metavar="SET=WAREHOUSE",
        help="replay the challenger's recorded grounded drafts from this warehouse on this set (repeatable)",
    )
    args = parser.parse_args()
    recorded_from: dict[str, dict[str, str]] = {}
    for spec in args.drafts:
        name, _, path = spec.partition("=")
        if name not in SETS or not Path(path).is_file():
            raise SystemExit(
                f"--drafts {spec}: want SET=WAREHOUSE with SET one of {', '.join(SETS)} and a file"
            )
        with open_warehouse(path, read_only=True) as con:
            recorded_from[name] = recorded_drafts(con)
        if not recorded_from[name]:
            raise SystemExit(f"--drafts {spec}: {path} holds no grounded evaluation of a challenger")
    for name, (questions, docs) in SETS.items():
        run_set(name, questions, docs, args.misses, recorded_from.get(name))


if __name__ == "__main__":
    main()
