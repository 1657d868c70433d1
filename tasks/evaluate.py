"""Evaluation that counts what users care about: the right number, no invented number, and saying "not in
the rules" when it is not. One implementation of each metric, all through the one number parser.

Question files are JSONL, one object a line: ``question`` (required), ``answer`` (reference), ``numbers``
(strings a correct answer must state, as written in the rules), ``keywords``, ``type`` (numeric | text |
unanswerable), optional ``id`` and ``doc``.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from math import comb
from pathlib import Path
from typing import Any

from tasks.normalize import fold
from tasks.numbers import NumberMention, canonical, find_numbers, parse_numeral, rule_numbers

TYPES = ("numeric", "text", "unanswerable")
ABSTENTION = re.compile(
    r"没有相关规定|未作规定|没有规定|未规定|无相关规定|文件中没有|没有明确规定|不在.*规定"
)
_SCALES = {"万": Decimal(10_000), "亿": Decimal(100_000_000)}


class QuestionFileError(ValueError):
    """A question file that cannot be read; the message names the file, the line and the problem."""


@dataclass(frozen=True)
class EvalItem:
    id: str
    question: str
    answer: str = ""
    numbers: tuple[str, ...] = ()
    keywords: tuple[str, ...] = ()
    type: str = "text"
    doc: str | None = None
    # Where the item comes from: "held_out:<set id>" (the template golden set) or "file:<name>" (a question
    # file, e.g. a hand-phrased set); and, for held-out items, their split: "recall" (facts training sees,
    # phrasings it never sees: closed book is judged here) or "reading" (facts held out entirely: grounded).
    source: str = ""
    split: str = ""


@dataclass
class ItemResult:
    id: str
    question: str
    type: str
    doc: str | None
    given: str
    numbers_ok: bool
    keyword_share: float
    invented: list[str]
    abstained: bool
    passed: bool
    missing_numbers: list[str] = field(default_factory=list)


def item_id(question: str) -> str:
    return hashlib.sha256(question.strip().encode()).hexdigest()[:16]


def load_questions(path: Path) -> list[EvalItem]:
    """Read a JSONL question file; a bad line is an error naming the file and line, not a skipped item."""
    items: list[EvalItem] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise QuestionFileError(f"{path}: cannot read ({exc})") from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise QuestionFileError(f"{path}:{number}: not JSON ({exc.msg})") from exc
        if not isinstance(data, dict) or not str(data.get("question", "")).strip():
            raise QuestionFileError(f"{path}:{number}: an object with a non-empty 'question' is required")
        kind = data.get("type") or ("numeric" if data.get("numbers") else "text")
        if kind not in TYPES:
            raise QuestionFileError(f"{path}:{number}: type must be one of {', '.join(TYPES)}, not {kind!r}")
        numbers = [str(n) for n in data.get("numbers") or []]
        for n in numbers:
            if _expected_value(n) is None:
                raise QuestionFileError(f"{path}:{number}: {n!r} in 'numbers' is not a number")
        items.append(
            EvalItem(
                id=str(data.get("id") or item_id(data["question"])),
                question=data["question"].strip(),
                answer=str(data.get("answer") or ""),
                numbers=tuple(numbers),
                keywords=tuple(str(k) for k in data.get("keywords") or []),
                type=kind,
                doc=data.get("doc"),
            )
        )
    if not items:
        raise QuestionFileError(f"{path}: no questions")
    return items


def write_questions(path: Path, items: Iterable[EvalItem]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for item in items:
            record = {k: v for k, v in asdict(item).items() if v not in (None, (), "")}
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def _expected_value(text: str) -> Decimal | None:
    mentions = find_numbers(text)
    if mentions:
        return mentions[0].value
    return parse_numeral(text)


def _candidate_values(mention: NumberMention) -> set[Decimal]:
    """Values an answer's number may be matched on: its canonical value(s), and the number as written
    before 万/亿 scaling (10万元 matches both "100000" and "10")."""
    values = {mention.value} | ({mention.value_max} if mention.value_max is not None else set())
    for mark, scale in _SCALES.items():
        if mark in mention.raw:
            values |= {v / scale for v in list(values)}
    return {Decimal(canonical(v)) for v in values}


def answer_values(answer: str) -> set[Decimal]:
    values: set[Decimal] = set()
    for mention in rule_numbers(answer):
        values |= _candidate_values(mention)
    return values


def states_number(answer: str, expected: str) -> bool:
    value = _expected_value(expected)
    return value is not None and Decimal(canonical(value)) in answer_values(answer)


def invented_numbers(
    answer: str, question: str, ledger_values: set[Decimal], doc_values: set[Decimal] | None = None
) -> list[str]:
    """Numbers the answer states that are neither in the question nor a ledger fact (of the item's document,
    when it names one)."""
    allowed = answer_values(question) | (doc_values if doc_values is not None else ledger_values)
    invented = []
    for mention in rule_numbers(answer):
        if not (_candidate_values(mention) & allowed):
            invented.append(mention.raw)
    return invented


def score_item(
    item: EvalItem, given: str, ledger_values: set[Decimal], doc_values: dict[str, set[Decimal]] | None = None
) -> ItemResult:
    text = fold(given)
    missing = [n for n in item.numbers if not states_number(text, n)]
    keyword_share = sum(fold(k) in text for k in item.keywords) / len(item.keywords) if item.keywords else 1.0
    scoped = (doc_values or {}).get(item.doc) if item.doc else None
    invented = invented_numbers(text, item.question, ledger_values, scoped)
    stated = rule_numbers(text)
    abstained = bool(ABSTENTION.search(text)) and not stated
    if item.type == "unanswerable":
        passed = abstained
    else:
        passed = not missing and keyword_share == 1.0 and not invented and not ABSTENTION.search(text)
    return ItemResult(
        item.id,
        item.question,
        item.type,
        item.doc,
        given,
        not missing,
        keyword_share,
        invented,
        abstained,
        passed,
        missing,
    )


def aggregate(results: Sequence[ItemResult]) -> dict[str, Any]:
    """The metrics, overall, per type and per document, each with its count."""

    def metrics(group: Sequence[ItemResult]) -> dict[str, Any]:
        numeric = [r for r in group if r.type == "numeric"]
        unanswerable = [r for r in group if r.type == "unanswerable"]
        answerable = [r for r in group if r.type != "unanswerable"]
        return {
            "n": len(group),
            "accuracy": _mean(r.passed for r in group),
            "numeric_accuracy": _mean(r.numbers_ok for r in numeric),
            "n_numeric": len(numeric),
            "keyword_coverage": _mean(r.keyword_share for r in answerable),
            "invented_number_rate": _mean(bool(r.invented) for r in group),
            "abstention_accuracy": _mean(r.abstained for r in unanswerable),
            "n_unanswerable": len(unanswerable),
        }

    by_type: dict[str, list[ItemResult]] = defaultdict(list)
    by_doc: dict[str, list[ItemResult]] = defaultdict(list)
    for r in results:
        by_type[r.type].append(r)
        by_doc[r.doc or "(any)"].append(r)
    overall = metrics(results)
    overall["per_type"] = {k: metrics(v) for k, v in sorted(by_type.items())}
    overall["per_doc"] = {k: metrics(v) for k, v in sorted(by_doc.items())}
    return overall


def _mean(values: Iterable[float | bool]) -> float | None:
    items = [float(v) for v in values]
    return sum(items) / len(items) if items else None


def evaluate(
    items: Sequence[EvalItem],
    answer_batch: Callable[[list[str]], list[str]],
    ledger_values: set[Decimal],
    doc_values: dict[str, set[Decimal]] | None = None,
    batch_size: int = 8,
    on_batch: Callable[[int, int], None] | None = None,
) -> tuple[dict[str, Any], list[ItemResult]]:
    """Answer every item (batched) and score it. Returns (metrics, per-item results)."""
    results: list[ItemResult] = []
    for start in range(0, len(items), batch_size):
        batch = list(items[start : start + batch_size])
        answers = answer_batch([item.question for item in batch])
        results.extend(
            score_item(i, a, ledger_values, doc_values) for i, a in zip(batch, answers, strict=True)
        )
        if on_batch:
            on_batch(len(results), len(items))
    return aggregate(results), results


# --- champion and challenger -------------------------------------------------------------------------------


def mcnemar_p(champion: Sequence[bool], challenger: Sequence[bool]) -> float:
    """Exact two-sided McNemar test on paired pass/fail outcomes of the same items."""
    b = sum(1 for x, y in zip(champion, challenger, strict=True) if x and not y)  # challenger broke it
    c = sum(1 for x, y in zip(champion, challenger, strict=True) if y and not x)  # challenger fixed it
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(comb(n, k) for k in range(0, min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_bootstrap_interval(
    champion: Sequence[float], challenger: Sequence[float], seed: int = 0, resamples: int = 2000
) -> tuple[float, float, float]:
    """Mean difference (challenger - champion) over the same items and its 95% bootstrap interval."""
    diffs = [y - x for x, y in zip(champion, challenger, strict=True)]
    if not diffs:
        return 0.0, 0.0, 0.0
    rng = random.Random(seed)
    n = len(diffs)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    return sum(diffs) / n, means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1]


@dataclass
class Decision:
    promote: bool
    reasons: list[str]
    checks: dict[str, dict[str, float]]
    regressed: list[str]  # item ids the challenger got wrong and the champion right
    fixed: list[str]


def compare(
    champion: Sequence[ItemResult], challenger: Sequence[ItemResult], margin: float = 0.05, seed: int = 0
) -> Decision:
    """Promote only if, on the same items, numeric accuracy and accuracy do not fall and the invented-number
    rate does not rise, judged by the paired bootstrap interval of the difference (non-inferiority within
    ``margin``), not by the raw difference on a handful of cases."""
    base = {r.id: r for r in champion}
    pairs = [(base[r.id], r) for r in challenger if r.id in base]
    if not pairs:
        return Decision(False, ["no common items to compare"], {}, [], [])
    checks: dict[str, dict[str, float]] = {}
    reasons: list[str] = []

    def check(name: str, old: list[float], new: list[float], higher_is_better: bool) -> None:
        if not old:
            return
        diff, low, high = paired_bootstrap_interval(old, new, seed)
        checks[name] = {
            "champion": sum(old) / len(old),
            "challenger": sum(new) / len(new),
            "difference": diff,
            "low": low,
            "high": high,
            "n": float(len(old)),
        }
        worse = low < -margin if higher_is_better else high > margin
        if worse:
            bound = low if higher_is_better else high
            reasons.append(
                f"{name} may be worse: difference {diff:+.3f}, 95% interval bound {bound:+.3f} "
                f"beyond the margin {margin:.2f} (n={len(old)})"
            )

    numeric = [(a, b) for a, b in pairs if a.type == "numeric"]
    check(
        "numeric_accuracy",
        [float(a.numbers_ok) for a, _ in numeric],
        [float(b.numbers_ok) for _, b in numeric],
        True,
    )
    check("accuracy", [float(a.passed) for a, _ in pairs], [float(b.passed) for _, b in pairs], True)
    check(
        "invented_number_rate",
        [float(bool(a.invented)) for a, _ in pairs],
        [float(bool(b.invented)) for _, b in pairs],
        False,
    )
    p_value = mcnemar_p([a.passed for a, _ in pairs], [b.passed for _, b in pairs])
    checks["accuracy"]["mcnemar_p"] = p_value
    regressed = [b.id for a, b in pairs if a.passed and not b.passed]
    fixed = [b.id for a, b in pairs if b.passed and not a.passed]
    return Decision(not reasons, reasons or ["not worse on any metric"], checks, regressed, fixed)


# --- running and storing an evaluation ---------------------------------------------------------------------


def run_and_store(
    con: Any,
    items: Sequence[EvalItem],
    answer_batch: Callable[[list[str]], list[str]],
    model_label: str,
    source: str,
    mode: str = "closed_book",
    model_id: str | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> tuple[str, dict[str, Any], list[ItemResult]]:
    """Evaluate against the warehouse's ledger and keep every answer (eval_runs, eval_items)."""
    import uuid

    from warehouse.evaluation import ledger_values, save_eval_run

    everything, per_doc = ledger_values(con)
    metrics, results = evaluate(items, answer_batch, everything, per_doc, on_batch=on_batch)
    run_id = uuid.uuid4().hex[:16]
    save_eval_run(
        con,
        {
            "eval_run_id": run_id,
            "model_label": model_label,
            "model_id": model_id,
            "mode": mode,
            "source": source,
            "n": len(results),
            "metrics": metrics,
        },
        [
            {
                "eval_run_id": run_id,
                "item_id": r.id,
                "question": r.question,
                "type": r.type,
                "doc": r.doc,
                "answer_given": r.given,
                "passed": r.passed,
                "numbers_ok": r.numbers_ok,
                "keyword_share": r.keyword_share,
                "invented": r.invented,
                "abstained": r.abstained,
            }
            for r in results
        ],
    )
    return run_id, metrics, results
