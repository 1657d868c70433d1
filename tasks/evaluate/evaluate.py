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
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from math import comb
from pathlib import Path
from typing import Any

from runtime.jsonl import json_lines
from tasks.answer.reply import ABSTENTION, Reply, as_reply, candidate_values, own_text
from tasks.ingest.normalize import fold
from tasks.ingest.numbers import (
    WRITTEN_KINDS,
    NumberMention,
    canonical,
    find_numbers,
    parse_numeral,
    range_key,
    readings,
    rule_numbers,
    units_agree,
)

TYPES = ("numeric", "text", "unanswerable")


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
    numbers_ok: (
        bool  # every expected number stated, and no other quantity of the document, nor an invented one
    )
    keyword_share: float | None  # None: the item has no keywords
    invented: list[str]
    abstained: bool
    passed: bool
    missing_numbers: list[str] = field(default_factory=list)
    other_subject: list[str] = field(default_factory=list)  # ledger quantities of another subject
    echoed: bool = False  # the answer was only text copied from the prompt or the question
    replaced: bool = False  # the guard showed a quote or an abstention instead of this answer


def item_id(question: str) -> str:
    return hashlib.sha256(question.strip().encode()).hexdigest()[:16]


def load_questions(path: Path) -> list[EvalItem]:
    """Read a JSONL question file; a bad line is an error naming the file and line, not a skipped item."""
    items: list[EvalItem] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise QuestionFileError(f"{path}: cannot read ({exc})") from exc
    for number, data in json_lines(lines, path, QuestionFileError):
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


# --- matching numbers ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    """A number a correct answer must state: its value (and range end), and its unit in the base unit when
    the reference answer shows how it is written ("5" with a reference "5万元" is 50000 元); ``bare`` when
    only the digits are known, so the number as written before 万/亿 scaling also matches."""

    value: Decimal
    value_max: Decimal | None = None
    unit: str = ""
    bare: bool = True


def expected_numbers(item: EvalItem) -> list[Expected]:
    """The item's expected numbers, each given its unit and scale from the reference answer where the
    reference states it."""
    out: list[Expected] = []
    reference = rule_numbers(fold(item.answer)) if item.answer else []
    for text in item.numbers:
        mentions = find_numbers(text)
        first = mentions[0] if mentions else None
        value = first.value if first else parse_numeral(text)
        if value is None:
            continue
        value_max = first.value_max if first else None
        want = range_key(value, value_max)
        found = next((m for m in reference if want in readings(m)), None)
        if found is not None:
            out.append(Expected(found.value, found.value_max, found.unit, bare=False))
        else:
            out.append(
                Expected(value, value_max, first.unit if first else "", bare=not (first and first.unit))
            )
    return out


def states(mention: NumberMention, expected: Expected) -> bool:
    """Whether ``mention`` states ``expected``: the same value, a range only as the same range, and the same
    unit when both carry one (5元 does not state 5万元; 100元/人·天 states 100元)."""
    want = range_key(expected.value, expected.value_max)
    if expected.bare:
        if want not in readings(mention):
            return False
    elif range_key(mention.value, mention.value_max) != want:
        return False
    return units_agree(expected.unit, mention.unit)


def answer_values(answer: str) -> set[Decimal]:
    values: set[Decimal] = set()
    for mention in rule_numbers(answer):
        values |= candidate_values(mention)
    return values


def states_number(answer: str, expected: str) -> bool:
    """Whether ``answer`` states the number ``expected`` (digits as written in the rules, or with a unit)."""
    wanted = expected_numbers(EvalItem("", "", numbers=(expected,)))
    return bool(wanted) and any(states(m, wanted[0]) for m in rule_numbers(fold(answer)))


# --- scoring ------------------------------------------------------------------------------------------------

_CHECKED_KINDS = ("quantity", *WRITTEN_KINDS)  # not list numbering


@dataclass(frozen=True)
class LedgerView:
    """What answers are checked against: the fact values (and range ends) of every document and per
    document, and the dates, articles, ordinals and identifiers each document writes (kind, value)."""

    values: frozenset[Decimal]
    by_doc: Mapping[str, frozenset[Decimal]] = field(default_factory=dict)
    others: Mapping[str, frozenset[tuple[str, Decimal]]] = field(default_factory=dict)

    @classmethod
    def build(cls, facts: Iterable[tuple[str, Any, Any]], texts: Mapping[str, str]) -> LedgerView:
        """From (document name, value, value_max) fact rows and document texts by name."""
        every: set[Decimal] = set()
        by_doc: dict[str, set[Decimal]] = defaultdict(set)
        for name, value, value_max in facts:
            for v in (value, value_max):
                if v is not None:
                    every.add(Decimal(canonical(Decimal(v))))
                    by_doc[name].add(Decimal(canonical(Decimal(v))))
        others = {name: frozenset(_packed(find_numbers(text))) for name, text in texts.items()}
        return cls(frozenset(every), {k: frozenset(v) for k, v in by_doc.items()}, others)

    def scope(self, doc: str | None) -> tuple[frozenset[Decimal], frozenset[tuple[str, Decimal]]]:
        """Fact values and other numbers of ``doc`` when the ledger has it, else of every document."""
        if doc and doc in self.by_doc:
            return self.by_doc[doc], self.others.get(doc, frozenset())
        return self.values, frozenset().union(*self.others.values()) if self.others else frozenset()


def _packed(mentions: Iterable[NumberMention]) -> set[tuple[str, Decimal]]:
    """(kind, value) of the dates, articles, ordinals and identifiers among ``mentions``."""
    return {(m.kind, Decimal(canonical(m.value))) for m in mentions if m.kind in WRITTEN_KINDS}


def _as_view(ledger: LedgerView | set[Decimal] | frozenset[Decimal]) -> LedgerView:
    return ledger if isinstance(ledger, LedgerView) else LedgerView(frozenset(ledger))


def check_answer(item: EvalItem, text: str, ledger: LedgerView) -> tuple[list[str], list[str], list[str]]:
    """(missing expected numbers, quantities the ledger gives to another subject, invented numbers).

    A number the question gave is neither, nor is one the reference answer states with the expected one (a
    condition such as "20万及以下的部分按8%"). A range states two expected numbers only as those two ends.
    A quantity must be a fact value of the item's document; a date, article, ordinal or identifier must be
    one the document writes."""
    values, others = ledger.scope(item.doc)
    question = find_numbers(fold(item.question))
    asked = {v for m in question for v in candidate_values(m)}
    for m in rule_numbers(fold(item.answer)) if item.answer else []:  # as the reference means them, scaled
        asked |= {Decimal(v) for v in range_key(m.value, m.value_max) if v is not None}
    others = others | _packed(question)
    wanted = expected_numbers(item)
    mentions = [m for m in find_numbers(text) if m.kind in _CHECKED_KINDS]
    found = [False] * len(wanted)
    other_subject: list[str] = []
    invented: list[str] = []
    for mention in mentions:
        hits = [k for k, e in enumerate(wanted) if states(mention, e)]
        hits += _range_of_expected(mention, wanted)
        if hits:
            for k in hits:
                found[k] = True
            continue
        if mention.kind != "quantity":
            if not _packed([mention]) <= others:
                invented.append(mention.raw)
            continue
        written = candidate_values(mention)
        if written & asked:
            continue
        if written & values:
            other_subject.append(mention.raw)
        else:
            invented.append(mention.raw)
    missing = [n for n, ok in zip(item.numbers, found, strict=False) if not ok]
    return missing, other_subject, invented


def _range_of_expected(mention: NumberMention, wanted: Sequence[Expected]) -> list[int]:
    """Indices of two single expected numbers that ``mention``, a range, states as its two ends."""
    if mention.value_max is None:
        return []
    ends = {canonical(mention.value): "low", canonical(mention.value_max): "high"}
    picked = [k for k, e in enumerate(wanted) if e.value_max is None and canonical(e.value) in ends]
    unit_ok = all(units_agree(wanted[k].unit, mention.unit) for k in picked)
    return picked if len({canonical(wanted[k].value) for k in picked}) == 2 and unit_ok else []


def score_item(
    item: EvalItem,
    given: str,
    ledger: LedgerView | set[Decimal] | frozenset[Decimal],
    *,
    replaced: bool = False,
) -> ItemResult:
    """Score one answer. Only the model's own sentences count (:func:`own_text`): a copied prompt is no
    answer, no abstention and no keyword hit. A numeric item is right only when every expected number is
    stated and no other quantity of the document, nor an invented number, is. ``replaced``: the guard did
    not show this answer (it quoted the rules or abstained instead), so the model failed the item."""
    view = _as_view(ledger)
    text = own_text(given, item.question)
    missing, other_subject, invented = check_answer(item, text, view)
    keyword_share = (
        sum(fold(k) in text for k in item.keywords) / len(item.keywords) if item.keywords else None
    )
    stated = [m for m in find_numbers(text) if m.kind == "quantity"]
    abstains = bool(ABSTENTION.search(text))
    abstained = abstains and not stated and not replaced
    numbers_ok = not replaced and not missing and not other_subject and not invented and bool(text)
    if item.type == "unanswerable":
        passed = abstained
    elif item.type == "numeric":
        passed = numbers_ok and keyword_share in (None, 1.0) and not abstains
    else:
        passed = (
            not replaced and bool(text) and keyword_share in (None, 1.0) and not invented and not abstains
        )
    return ItemResult(
        item.id,
        item.question,
        item.type,
        item.doc,
        given,
        numbers_ok,
        keyword_share,
        invented,
        abstained,
        passed,
        missing,
        other_subject=other_subject,
        echoed=bool(given.strip()) and not text,
        replaced=replaced,
    )


def aggregate(results: Sequence[ItemResult]) -> dict[str, Any]:
    """The metrics, overall, per type and per document, each with its count. A metric with no item to
    measure it is None (shown as "n/a"): keyword coverage counts only items that have keywords."""

    def metrics(group: Sequence[ItemResult]) -> dict[str, Any]:
        numeric = [r for r in group if r.type == "numeric"]
        unanswerable = [r for r in group if r.type == "unanswerable"]
        with_keywords = [r for r in group if r.type != "unanswerable" and r.keyword_share is not None]
        return {
            "n": len(group),
            "accuracy": _mean(r.passed for r in group),
            "numeric_accuracy": _mean(r.numbers_ok for r in numeric),
            "n_numeric": len(numeric),
            "keyword_coverage": _mean(r.keyword_share or 0.0 for r in with_keywords),
            "n_keywords": len(with_keywords),
            "invented_number_rate": _mean(bool(r.invented) for r in group),
            "abstention_accuracy": _mean(r.abstained for r in unanswerable),
            "n_unanswerable": len(unanswerable),
            "echo_rate": _mean(r.echoed for r in group),
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


def fmt(value: float | None) -> str:
    """A share as a percentage, or "n/a" when no item measured it."""
    return "n/a" if value is None else f"{value:.0%}"


# --- model and shown ----------------------------------------------------------------------------------------

FAMILIES = ("model", "shown")


@dataclass
class Evaluation:
    """Both families of one evaluation, item by item, and their metrics: ``metrics["model"]`` (the model's
    own answers; a quote or an abstention by the guard counts as the model failing), ``metrics["shown"]``
    (what the user saw), ``metrics["guard_actions"]`` (counts) and ``metrics["per_set"]`` (both families
    per question set: golden recall, golden reading, each question file)."""

    metrics: dict[str, Any]
    model: list[ItemResult]
    shown: list[ItemResult]
    replies: list[Reply]
    sets: list[str]


def file_set(questions: Path) -> str:
    """The set name of a question file's items ("file:<name>"), as `slm golden add` registers them."""
    return f"file:{questions.name}"


def question_set(item: EvalItem) -> str:
    """The set an item belongs to: "golden recall" / "golden reading" (template golden splits), or the
    question file it came from ("file:<name>")."""
    if item.source.startswith("held_out:"):
        return f"golden {item.split}" if item.split else "golden"
    return item.source or "questions"


JUDGED_SPLIT = {"closed_book": "recall", "grounded": "reading"}
MODE_NAMES = {"closed_book": "closed book", "grounded": "grounded"}  # as reports and reasons write them


def judged_items(items: Sequence[EvalItem], mode: str) -> list[EvalItem]:
    """The items a mode is judged on: closed book on the recall split (facts trained on), grounded on the
    reading split (facts never trained on); items without a split (question files) in both."""
    return [i for i in items if not i.split or i.split == JUDGED_SPLIT[mode]]


def evaluate(
    items: Sequence[EvalItem],
    answer_batch: Callable[[list[str]], Sequence[str | Reply]],
    ledger: LedgerView | set[Decimal] | frozenset[Decimal],
    batch_size: int = 8,
    on_batch: Callable[[int, int], None] | None = None,
) -> Evaluation:
    """Answer every item (batched) and score the model's answer and the shown answer."""
    view = _as_view(ledger)
    replies: list[Reply] = []
    model: list[ItemResult] = []
    shown: list[ItemResult] = []
    for start in range(0, len(items), batch_size):
        batch = list(items[start : start + batch_size])
        answers = [as_reply(a) for a in answer_batch([item.question for item in batch])]
        for item, reply in zip(batch, answers, strict=True):
            replies.append(reply)
            model.append(score_item(item, reply.model, view, replaced=reply.replaced))
            shown.append(score_item(item, reply.shown, view))
        if on_batch:
            on_batch(len(replies), len(items))
    sets = [question_set(i) for i in items]
    per_set: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(sets):
        chosen = [k for k, s in enumerate(sets) if s == name]
        per_set[name] = {
            "model": _headline(aggregate([model[k] for k in chosen])),
            "shown": _headline(aggregate([shown[k] for k in chosen])),
        }
    metrics = {
        "model": aggregate(model),
        "shown": aggregate(shown),
        "guard_actions": dict(Counter(r.guard_action for r in replies)),
        "per_set": per_set,
    }
    return Evaluation(metrics, model, shown, replies, sets)


HEADLINE = (
    "n",
    "accuracy",
    "numeric_accuracy",
    "n_numeric",
    "keyword_coverage",
    "n_keywords",
    "invented_number_rate",
    "abstention_accuracy",
    "n_unanswerable",
    "echo_rate",
)


def _headline(metrics: Mapping[str, Any]) -> dict[str, Any]:
    return {k: metrics[k] for k in HEADLINE}


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


def ledger_view(con: Any) -> LedgerView:
    """The warehouse's ledger as the scorer reads it."""
    from warehouse.evaluation import document_texts, fact_values

    return LedgerView.build(fact_values(con), document_texts(con))


def run_and_store(
    con: Any,
    items: Sequence[EvalItem],
    answer_batch: Callable[[list[str]], Sequence[str | Reply]],
    model_label: str,
    source: str,
    mode: str = "closed_book",
    model_id: str | None = None,
    on_batch: Callable[[int, int], None] | None = None,
    batch_size: int = 8,
) -> tuple[str, Evaluation]:
    """Evaluate against the warehouse's ledger and keep every answer: the model's, the shown one and the
    guard's action (eval_runs, eval_items)."""
    import uuid

    from warehouse.evaluation import save_eval_run

    result = evaluate(items, answer_batch, ledger_view(con), batch_size, on_batch)
    run_id = uuid.uuid4().hex[:16]
    save_eval_run(
        con,
        {
            "eval_run_id": run_id,
            "model_label": model_label,
            "model_id": model_id,
            "mode": mode,
            "source": source,
            "n": len(result.model),
            "metrics": result.metrics,
        },
        [
            {
                "eval_run_id": run_id,
                "item_id": m.id,
                "question": m.question,
                "type": m.type,
                "doc": m.doc,
                "question_set": question_set,
                "answer_given": reply.model,
                "passed": m.passed,
                "numbers_ok": m.numbers_ok,
                "keyword_share": m.keyword_share,
                "invented": m.invented,
                "abstained": m.abstained,
                "echoed": m.echoed,
                "other_subject": m.other_subject,
                "draft": reply.draft,
                "guard_action": reply.guard_action,
                "shown": reply.shown,
                "shown_passed": s.passed,
                "shown_numbers_ok": s.numbers_ok,
                "shown_abstained": s.abstained,
                "shown_invented": s.invented,
            }
            for m, s, reply, question_set in zip(
                result.model, result.shown, result.replies, result.sets, strict=True
            )
        ],
    )
    return run_id, result
