"""Answering questions: grounded (retrieve, read, answer, then check every number) or closed book.

The numeric guard is the point of grounded mode. Every number the model states must be a ledger fact of the
retrieved chunks whose subject fits the question (``tasks.distill.verify.subject_fits``, the same test distillation
uses): "洗衣费 100 元" fails when 100 元 is the 伙食补助费 of the chunk, and an invented 150 元 fails because no
fact has it. A failing answer is never shown. The guard retries once with the best-matching evidence
sentence in the prompt and constrained decoding that only allows the numbers of fitting facts; if that still fails it
quotes the evidence sentence itself, and if no fact fits the question it abstains, saying which number it
could not verify. Closed-book mode (the fine-tuned model alone) is checked against the whole ledger and
flagged in ``Answer.verified``, never rewritten.

A generator is any callable ``(messages, max_tokens, grammar=None) -> str``: tests pass a fake, real use
passes ``tasks.answer.serve.LlamaCppGenerator`` or ``TransformersGenerator.messages_call(...)``. ``grammar`` is a
:class:`NumberConstraint` (``str()`` of it is GBNF) or GBNF text; a generator that cannot constrain decoding
ignores it (the check afterwards still holds).
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from decimal import Decimal
from typing import Any, Protocol

import duckdb

from tasks.answer.fact_retrieve import FactHit, FactIndex, question_amounts, regions_named
from tasks.answer.prompts import (
    CONTEXT_INSTRUCTION,
    EVIDENCE_LEAD,
    EVIDENCE_ONLY,
    NO_EVIDENCE,
    QUESTION_LABEL,
    RULES_LABEL,
    SYSTEM_PROMPT,
    chat_messages,
)
from tasks.answer.reply import ABSTENTION, Reply, copied_mask, own_text, restates_question
from tasks.answer.retrieve import ChunkIndex, Hit, tokens
from tasks.answer.stop import repeated_span, repeated_statement, stray_words
from tasks.distill.teachers.base import FactRef
from tasks.distill.verify import clause_around, clause_of, subject_fits
from tasks.ingest.chunk import LEADING_MARKER
from tasks.ingest.facts import match_numbers
from tasks.ingest.normalize import fold
from tasks.ingest.numbers import (
    CN_NUMERALS,
    WRITTEN_KINDS,
    NumberMention,
    canonical,
    find_numbers,
    first_number_char,
    rule_numbers,
)
from tasks.vocabulary import ABSTAIN_TEXT
from warehouse.ledger import list_facts

__all__ = [
    "ABSTAIN_TEXT",
    "CONTEXT_FORMAT",
    "Answer",
    "Generator",
    "GuardStats",
    "HeldNumbersStream",
    "NumberCheck",
    "NumberConstraint",
    "answer",
    "answer_batch",
    "check_numbers",
    "context_messages",
    "evidence_lines",
    "fact_statement",
    "fit_facts",
    "focus",
    "number_grammar",
    "with_context_rows",
]

# Version of the context rows, part of a dataset id (v2: retrieved top-k chunks; v3: asked in everyday words;
# v4: the best-fitting facts' sentences lead; v5: their one-number statements lead, a time question's clause first).
CONTEXT_FORMAT = "ctx-v5"
MAX_CONTEXT_CHARS = 360  # per chunk: three chunks and the question stay well inside a 2k-token window
MODES = ("grounded", "closed_book")
ACTIONS = ("passed", "retried_ok", "quoted_evidence", "abstained", "flagged")

_SENTENCE = re.compile(r"[^。；;！？!?\n]*[。；;！？!?\n]?")
_RULE_SENTENCE = re.compile(r"[^。；;！？!?]+[。；;！？!?]?")


class Generator(Protocol):
    def __call__(
        self, messages: list[dict[str, str]], max_tokens: int, grammar: str | None = None
    ) -> str: ...


# --- prompts -------------------------------------------------------------------------------------------------


def focus(question: str, text: str, max_chars: int = MAX_CONTEXT_CHARS) -> str:
    """``text`` cut to ``max_chars``: the sentences sharing most tokens with the question, in their order.

    Chunks run to 600 characters; a small model reads three of them better when each is cut to the
    sentences that matter, and training rows stay short enough for the training max_length.
    """
    if len(text) <= max_chars:
        return text
    asked = set(tokens(question))
    sentences = [s for s in _SENTENCE.findall(text) if s.strip()]
    ranked = sorted(range(len(sentences)), key=lambda i: (-len(asked & set(tokens(sentences[i]))), i))
    keep: set[int] = set()
    used = 0
    for i in ranked:
        if used + len(sentences[i]) > max_chars and keep:
            continue
        keep.add(i)
        used += len(sentences[i])
    kept = "".join(sentences[i] for i in sorted(keep))
    return kept[:max_chars]


def _chunk_parts(chunk: str | Hit | Any) -> tuple[str, str]:
    if isinstance(chunk, str):
        return "", chunk
    return getattr(chunk, "heading_path", "") or "", chunk.text


def context_messages(
    question: str,
    chunks: Sequence[str | Hit],
    answer: str | None = None,
    max_chars: int = MAX_CONTEXT_CHARS,
    *,
    evidence: Sequence[str] = (),
    instruction: str = "",
) -> list[dict[str, str]]:
    """System, user (the ``evidence`` sentences, numbered rule excerpts, then the question) and, for training,
    assistant messages.

    ``evidence`` are the best-fitting facts' statements (:func:`evidence_lines`), read first: a small model
    finds the number in a short line at the top more reliably than among three excerpts. ``instruction`` follows
    them (the guard's retry says to use only their numbers). The same function builds training rows
    (:func:`with_context_rows`) and grounded prompts, so the model is asked in exactly the format it learned.
    """
    parts = []
    for n, chunk in enumerate(chunks, start=1):
        heading, text = _chunk_parts(chunk)
        title = f"【{n}】{heading}" if heading else f"【{n}】"
        parts.append(f"{title}\n{focus(question, text.strip(), max_chars)}")
    context = "\n\n".join(parts) if parts else "（没有检索到相关规定）"
    messages = [
        {"role": "system", "content": f"{SYSTEM_PROMPT}{CONTEXT_INSTRUCTION}"},
        {"role": "user", "content": f"{RULES_LABEL}\n{context}\n\n{QUESTION_LABEL}{question}"},
    ]
    if evidence:
        lead = f"{EVIDENCE_LEAD}\n" + "\n".join(f"“{s}”" for s in evidence)
        lead += f"\n{instruction}\n\n" if instruction else "\n\n"
        messages[1]["content"] = lead + messages[1]["content"]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return messages


def _bucket(*parts: str) -> float:
    digest = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()
    return int(digest[:8], 16) / 0xFFFFFFFF


def with_context_rows(
    rows: Sequence[Mapping[str, Any]],
    contexts: Mapping[str, Sequence[str | Hit]] | Callable[[str], Sequence[str | Hit] | None],
    share: float,
    seed: int = 0,
    *,
    augment: bool = False,
    max_chars: int = MAX_CONTEXT_CHARS,
    rephrase: Callable[[str, str], str] | None = None,
    evidence: Callable[[str, str], Sequence[str]] | None = None,
) -> list[dict[str, Any]]:
    """Dataset rows where a ``share`` of them carry context: the chunks grounded answering would show.

    ``rows`` are dataset records (``{"id", "messages": [system, user, assistant], ...}``); ``contexts`` gives
    the chunks to show with a row, in order (texts, or :class:`Hit` to show their heading paths as retrieval
    does): a mapping from row id, or a function of the row id, called only for the rows chosen.
    ``tasks.train.dataset`` builds them as grounded answering retrieves: the top-k chunks for the row's question,
    the row's own chunk among them. The choice of rows is a hash of ``seed`` and the row id, so a row keeps
    its form across snapshots. With ``augment`` the context rows are added (id + ``:ctx``) beside the
    originals; otherwise they replace them. Rows without chunks are left as they are. Context rows get
    ``"context": CONTEXT_FORMAT``; ``rephrase(row_id, question)``, when given, is the question they ask, and
    ``evidence(row_id, question)`` the lines that lead their prompt, as :func:`evidence_lines` leads
    grounded answering's.
    """
    lookup = contexts.get if isinstance(contexts, Mapping) else contexts
    out: list[dict[str, Any]] = []
    for row in rows:
        row_id = str(row["id"])
        chunks = lookup(row_id) if _bucket(str(seed), "share", row_id) < share else None
        if not chunks:
            out.append(dict(row))
            continue
        messages = row["messages"]
        question = next(m["content"] for m in messages if m["role"] == "user")
        if rephrase is not None:
            question = rephrase(row_id, question)
        reply = next((m["content"] for m in messages if m["role"] == "assistant"), None)
        new = dict(row)
        lead = evidence(row_id, question) if evidence is not None else ()
        new["messages"] = context_messages(question, list(chunks), reply, max_chars, evidence=lead)
        new["context"] = CONTEXT_FORMAT
        if augment:
            new["id"] = f"{row_id}:ctx"
            out.append(dict(row))
        out.append(new)
    return out


# --- checking numbers ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NumberCheck:
    """One number of an answer against the facts it may come from."""

    raw: str  # as written in the answer
    values: tuple[str, ...]  # canonical value(s)
    ok: bool
    fact_ids: tuple[str, ...] = ()  # fitting facts with this value
    problem: str = ""  # "" | not_in_rules | other_subject
    other_subject: str = ""  # for other_subject: what the number belongs to in the rules
    unit: str = ""  # the canonical unit written with it ("" for a bare number)


def check_numbers(
    question: str, text: str, facts: Sequence[FactRef], relevant: Collection[str] = ()
) -> list[NumberCheck]:
    """Check each rule number of ``text``: a number the question gave passes; any other must be the value of
    a fact in ``facts``, in that fact's unit where both have one (the 120元 of a fact is no "120%"), whose
    subject fits the question, or that fact retrieval ranks among the few most relevant to it (``relevant``:
    fact ids; "一笔钱到多少" is about 单笔金额 though they share no word)."""
    checks = []
    # A range states a fact only as the same range ("100-999元" is not the 100元 of a fact); a single number
    # may state a fact's value or one end of its range.
    for number in match_numbers(text, facts, given=question, whole_range=True, same_unit=True):
        mention = number.mention
        shown = tuple(canonical(v) for v in sorted(set(mention.values())))
        unit = mention.unit or ""
        if number.given:
            checks.append(NumberCheck(mention.raw, shown, True, unit=unit))
            continue
        fitting = [f for f in number.facts if f.fact_id in relevant or subject_fits(question, f)]
        if fitting:
            checks.append(NumberCheck(mention.raw, shown, True, tuple(f.fact_id for f in fitting), unit=unit))
        elif number.facts:
            checks.append(
                NumberCheck(
                    mention.raw, shown, False, (), "other_subject", number.facts[0].subject, unit=unit
                )
            )
        else:
            checks.append(NumberCheck(mention.raw, shown, False, (), "not_in_rules", unit=unit))
    return checks


def _describe(checks: Sequence[NumberCheck], where: str) -> str:
    bad = [c for c in checks if not c.ok]
    missing = [c.raw for c in bad if c.problem == "not_in_rules"]
    other = [c for c in bad if c.problem == "other_subject"]
    parts = []
    if missing:
        parts.append(f"答案中的 {'、'.join(missing)} 不在{where}中")
    for c in other:
        parts.append(f"答案中的 {c.raw} 在{where}中属于{c.other_subject}，与所问不符")
    return "；".join(parts)


def number_grammar(allowed: Sequence[str]) -> str:
    """GBNF that lets the model write any text without digits plus exactly the ``allowed`` numbers.

    Chinese numerals cannot be excluded without excluding ordinary words (一律, 一次), so the check after
    generation still runs; the grammar just removes the easiest way to invent an amount. (llama.cpp applies a
    GBNF grammar to every candidate token: about 2 s a token over Gemma's 262k vocabulary here, which is why
    the guard passes a :class:`NumberConstraint` and ``LlamaCppGenerator`` enforces it as a logits mask.)
    """
    numbers = sorted({a for a in allowed if a}, key=len, reverse=True)
    alternatives = " | ".join(f'"{n}"' for n in numbers)
    lines = ["root ::= piece*", "piece ::= other" + (" | number" if numbers else "")]
    if numbers:
        lines.append(f"number ::= {alternatives}")
    lines.append("other ::= [^0-9０-９]")
    return "\n".join(lines) + "\n"


_FULL_WIDTH_DIGITS = str.maketrans("０１２３４５６７８９", "0123456789")
_DIGIT_RUN = re.compile(r"\d+(?:[.,]\d+)*")
_OPEN_RUN = re.compile(r"\d[\d.,]*$")
# A Chinese-numeral amount: a run of numerals with a multiplier and another numeral ("五千", "十五万", "八十"),
# not an ordinal ("第十八条"). A lone numeral stays free: it is also a word (一律, 十分, 统一).
_CN_RUN = re.compile(f"(?<![第{CN_NUMERALS}])[{CN_NUMERALS}]+")
_CN_OPEN_RUN = re.compile(f"(?:.?[{CN_NUMERALS}]+|第)$")
_CN_MULTIPLIERS = frozenset("十百千万亿")


def _cn_amount(run: str) -> bool:
    return len(run) >= 2 and bool(_CN_MULTIPLIERS & set(run))


@dataclass(frozen=True)
class NumberConstraint:
    """Constrained decoding for the guard's retry: digits may only spell one of ``allowed``, and a
    Chinese-numeral amount ("五千元", "十五万元") only one of the ``allowed`` written in Chinese numerals ("八十"):
    without that, a model kept from writing 5000 writes 五千.

    Passed as the generator's ``grammar``: ``str(constraint)`` is GBNF for generators that take a grammar
    string (it holds digits only: Chinese numerals are left to the check after generation there);
    :class:`tasks.answer.serve.LlamaCppGenerator` applies it as a fast logits mask through :meth:`open_run`,
    :meth:`accepts` and :meth:`closes`.
    """

    allowed: tuple[str, ...]

    def __post_init__(self) -> None:
        cleaned = tuple(dict.fromkeys(a.translate(_FULL_WIDTH_DIGITS) for a in self.allowed if a))
        object.__setattr__(self, "allowed", cleaned)
        object.__setattr__(self, "_prefixes", frozenset(a[:i] for a in cleaned for i in range(1, len(a) + 1)))
        object.__setattr__(self, "_cn", frozenset(a for a in cleaned if _CN_RUN.fullmatch(a)))

    def __str__(self) -> str:
        return number_grammar(self.allowed)

    @staticmethod
    def open_run(text: str) -> str:
        """The number still being written at the end of ``text`` ("" when none): digits, or Chinese numerals
        with the character before them (a 第 makes them an ordinal)."""
        text = text.translate(_FULL_WIDTH_DIGITS)
        match = _OPEN_RUN.search(text) or _CN_OPEN_RUN.search(text)
        return match.group() if match else ""

    def accepts(self, open_run: str, piece: str) -> bool:
        """Whether ``piece`` may follow a text whose unfinished number is ``open_run``."""
        text = (open_run + piece).translate(_FULL_WIDTH_DIGITS)
        prefixes: frozenset[str] = self._prefixes  # type: ignore[attr-defined]
        for match in _DIGIT_RUN.finditer(text):
            rest = text[match.end() :]
            if not rest or rest in (".", ","):  # still open: may grow into an allowed number
                if match.group() + rest not in prefixes and match.group() not in self.allowed:
                    return False
            elif match.group() not in self.allowed:
                return False
        for match in _CN_RUN.finditer(text):
            run = match.group()
            if not _cn_amount(run) or run in self._cn:  # type: ignore[attr-defined]
                continue
            if match.end() < len(text) or run not in prefixes:
                return False
        return True

    def closes(self, open_run: str) -> bool:
        """Whether a token without numerals may end the number being written."""
        if _DIGIT_RUN.search(open_run):
            return open_run.rstrip(".,") in self.allowed
        runs = _CN_RUN.findall(open_run)
        return not runs or not _cn_amount(runs[-1]) or runs[-1] in self._cn  # type: ignore[attr-defined]


# --- streaming -----------------------------------------------------------------------------------------------


class HeldNumbersStream:
    """Streams a draft answer as it is generated, but only up to its first number: the rest is held until the
    guard has checked the whole answer, so no unchecked number is ever on screen.

    ``feed`` takes the pieces of the draft (a generator's ``stream_to`` hook); ``finish`` takes the final
    :class:`Answer` and writes what remains: the rest of the draft when the guard kept it, or, below what was
    shown, the guard's replacement (retry, quoted evidence or abstention).
    """

    def __init__(self, write: Callable[[str], None]) -> None:
        self.write = write
        self.shown = ""
        self._draft = ""
        self._holding = False

    def feed(self, piece: str) -> None:
        self._draft += piece
        if self._holding:
            return
        cut = first_number_char(piece)
        if cut >= 0:
            self._holding = True
            piece = piece[:cut]
        if piece:
            self.shown += piece
            self.write(piece)

    def finish(self, result: Answer) -> None:
        # Generators strip their output; compare with the stripped draft and what was shown so far.
        shown = self.shown.strip()
        if shown and result.text.startswith(shown):
            self.write(result.text[len(shown) :])
        elif shown:
            self.write(f"\n{result.text}")
        else:
            self.write(result.text)
        self.write("\n")


# --- answering -----------------------------------------------------------------------------------------------


@dataclass
class Answer:
    text: str  # what to show
    mode: str  # grounded | closed_book
    numbers: tuple[str, ...]  # canonical values stated in ``text`` as fact (none for an abstention)
    verified: bool  # every number stated as fact is a fitting ledger fact (False for an abstention)
    guard_action: str  # passed | retried_ok | quoted_evidence | abstained | flagged (closed book, unverified)
    retrieved: tuple[Hit, ...] = ()
    notes: tuple[str, ...] = ()
    draft: str = ""  # the model's first answer, kept for audit when the guard replaced it
    fact_ids: tuple[str, ...] = ()
    cited: tuple[Hit, ...] = ()  # the retrieved chunks (article, document) the stated numbers come from
    retry: str = ""  # the model's constrained retry, when the guard asked for one

    @property
    def model_text(self) -> str:
        """What the model itself last wrote: the shown text when the guard kept it (draft or verified retry),
        else the retry (or draft) the guard replaced with a quote or an abstention."""
        if self.guard_action in ("passed", "retried_ok", "flagged"):
            return self.text
        return self.retry or self.draft

    def reply(self) -> Reply:
        """This answer as evaluation scores it: the model's text, what was shown, the guard's action."""
        return Reply(self.model_text, self.scored_text, self.guard_action, self.draft)

    @property
    def abstained(self) -> bool:
        return self.guard_action == "abstained"

    @property
    def scored_text(self) -> str:
        """The text to score with ``tasks.evaluate.evaluate``: an abstention names the number it rejected, which the
        scorer would count as invented, so it is scored as the plain abstention it is."""
        return ABSTAIN_TEXT if self.abstained else self.text

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for name in ("retrieved", "cited"):
            data[name] = [
                {"chunk_id": h.chunk_id, "doc": h.doc, "heading_path": h.heading_path, "score": h.score}
                for h in getattr(self, name)
            ]
        return data


@dataclass
class GuardStats:
    """How often the guard let an answer through, fixed it, quoted evidence, abstained or flagged it."""

    passed: int = 0
    retried_ok: int = 0
    quoted_evidence: int = 0
    abstained: int = 0
    flagged: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def record(self, result: Answer) -> None:
        with self._lock:
            setattr(self, result.guard_action, getattr(self, result.guard_action) + 1)

    @property
    def total(self) -> int:
        return self.passed + self.retried_ok + self.quoted_evidence + self.abstained + self.flagged

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in ACTIONS} | {"total": self.total}

    def report(self) -> str:
        total = self.total or 1
        return ", ".join(
            f"{name} {getattr(self, name)} ({getattr(self, name) / total:.0%})" for name in ACTIONS
        )


_facts_cache: dict[str, dict[str, list[FactRef]]] = {}
_facts_lock = threading.Lock()


def facts_by_chunk(
    con: duckdb.DuckDBPyConnection, index: ChunkIndex | None = None
) -> dict[str, list[FactRef]]:
    """Ledger facts per chunk id, cached per index (facts derive from the chunks the index key hashes)."""
    key = index.key if index is not None else None
    if key is not None:
        with _facts_lock:
            if key in _facts_cache:
                return _facts_cache[key]
    grouped: dict[str, list[FactRef]] = {}
    for row in list_facts(con, rules_only=True):
        grouped.setdefault(row["chunk_id"], []).append(FactRef.from_row(row))
    if key is not None:
        with _facts_lock:
            if len(_facts_cache) > 8:
                _facts_cache.clear()
            _facts_cache[key] = grouped
    return grouped


def _best_evidence(question: str, facts: Sequence[FactRef]) -> list[FactRef]:
    """Facts whose subject fits the question, best first (most shared tokens, then retrieval order)."""
    asked = set(tokens(question))
    fitting = [(i, f) for i, f in enumerate(facts) if subject_fits(question, f)]
    fitting.sort(
        key=lambda p: (-len(asked & set(tokens(p[1].subject))), -len(asked & set(tokens(p[1].context))), p[0])
    )
    return [f for _, f in fitting]


def _quote(fact: FactRef, heading: str) -> str:
    where = f"（{heading}）" if heading else ""
    return f"根据规定{where}：“{fact.context.strip()}”"


def _stated(checks: Sequence[NumberCheck]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(v for c in checks for v in c.values))


def answer(
    question: str,
    generator: Generator | Callable[..., str],
    index: ChunkIndex | None,
    con: duckdb.DuckDBPyConnection,
    mode: str = "grounded",
    k: int = 3,
    *,
    max_tokens: int = 160,
    retry: bool = True,
    stats: GuardStats | None = None,
) -> Answer:
    """Answer ``question``; in grounded mode no number reaches the text unless the ledger backs it."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    if mode == "closed_book":
        result = _closed_book(question, generator, index, con, max_tokens)
    else:
        if index is None:
            index = ChunkIndex.build(con)
        result = _grounded(question, generator, index, con, k, max_tokens, retry)
    if stats is not None:
        stats.record(result)
    return result


def answer_batch(
    generator: Generator | Callable[..., str],
    con: duckdb.DuckDBPyConnection,
    mode: str,
    max_tokens: int,
    k: int = 3,
    stats: GuardStats | None = None,
) -> Callable[[list[str]], list[Reply]]:
    """An ``answer_batch`` for ``tasks.evaluate.evaluate`` that answers exactly as ``slm ask`` does (same mode, guard,
    retry and max tokens) and returns, per question, the model's answer, the shown answer and the guard's
    action."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    index = ChunkIndex.build(con)

    def batch(questions: list[str]) -> list[Reply]:
        return [
            answer(q, generator, index, con, mode, k, max_tokens=max_tokens, stats=stats).reply()
            for q in questions
        ]

    return batch


def _closed_book(
    question: str,
    generator: Callable[..., str],
    index: ChunkIndex | None,
    con: duckdb.DuckDBPyConnection,
    max_tokens: int,
) -> Answer:
    text = generator(chat_messages(question), max_tokens).strip()
    facts = [f for group in facts_by_chunk(con, index).values() for f in group]
    checks = check_numbers(question, text, facts)
    # Closed book flags what it cannot verify (never rewrites): numbers, and answers that are no answer.
    problem = draft_problem(question, text, checks)
    ok = not problem
    notes = () if ok else (_describe(checks, "规定") or problem,)
    fact_ids = tuple(dict.fromkeys(i for c in checks for i in c.fact_ids))
    return Answer(
        text, "closed_book", _stated(checks), ok, "passed" if ok else "flagged", (), notes, text, fact_ids
    )


NUMERIC_QUESTION = re.compile(
    # "那几天" / "这几个" / "好几次" name some days or items; they do not ask how many.
    r"多少|(?<![那这好])几[个天次人元块晚顿级类成折日月年点%]|标准|限额|上限|下限|最高|最多|最少|最低|比例|百分之几"
    r"|额度|多长|多久|几成|多大"
    # Other measure words ask only where they end the question ("要打几份？"); "请了几位专家" names some.
    r"|几[份张笔件台周项位名家](?:[？?]|$)"
)
# A question asking for a time of day or a date (a deadline): the ledger holds amounts, so these are answered
# from the rule sentence that writes the time ("报销业务截止到下午4:00"), quoted with its source.
WHEN_QUESTION = re.compile(r"几点|什么时候|什么时间|何时|哪天|哪一天|几号|几月几")
WHEN_MIN_SHARED = 3  # word pairs a quoted sentence (its time aside) must share with the question
_CHUNK_MARK = re.compile(r"【\d+】")
BEST_FIT_SHARE = 0.8  # a numeric answer must state a fitting fact scoring this share of the best one
TOP_FACT_LEAD = 1.25  # retrieval's first fact is this far ahead of the second ...
TOP_FACT_SHARED = 4  # ... and its whole sentence shares this many word pairs with the question: it fits
RELEVANT_FACTS = 5  # facts retrieval ranks this high fit the question, whatever their subject's words
_CONTEXT_COPY_CHARS = 80  # more than this copied from the retrieved rules is a dump, not an answer


_TOPIC_END = re.compile(r"[：:]")
_FIRST_CLAUSE = re.compile(r"[，,；;]")


def _elsewhere(fact: FactRef, asked_regions: Collection[str]) -> bool:
    """Whether ``fact``'s sentence names provinces or regions, none of them one the question names."""
    named = regions_named(fact)
    return bool(named) and not named & set(asked_regions)


# A place a rule names by its kind (滨海区, 峡山区, 某某县, 某某州, 某某省): overlapping, so every name ending at the
# kind is tried ("潍坊滨海区" offers 坊滨海区 and 滨海区).
_PLACE = re.compile(r"(?=([\u4e00-\u9fff]{2,4}[区县州省]))")


def _names_asked_place(fact: FactRef, question: str) -> bool:
    """Whether the fact's sentence names a place (a district, county, prefecture or province by its kind) that
    the question names too: "潍坊滨海区、峡山区每人每天补助30元" for "去峡山区…市内交通补助"."""
    asked = fold(question)
    return any(name in asked for name in _PLACE.findall(fold(fact.context)))


def _fits_well(asked: str, fact: FactRef) -> bool:
    """More than a single shared character pair between the question and the fact's subject or clause (its own
    number and unit aside: "几个工作日" asks for a count of 工作日, it does not name what "1-3个工作日" is for)."""
    words = set(tokens(asked)) - set(tokens(fact.raw))
    return len(words & set(tokens(fact.subject))) >= 2 or len(words & set(tokens(clause_of(fact)))) >= 3


def _conditional(fact: FactRef) -> bool:
    """Whether the fact's clause is a condition that the rest of its sentence attaches a rule to: a clause
    ending in 的 with more of the sentence after it ("接待对象在8人以内的，陪餐人数不超过2人")."""
    clause = clause_of(fact).strip()
    end = fact.context.find(clause) + len(clause)
    return clause.endswith("的") and bool(fact.context[end:].strip("，,；;。 "))


def _own_words(fact: FactRef) -> set[str]:
    """The word pairs of the fact's clause, its number aside."""
    return set(tokens(clause_of(fact))) - set(tokens(fact.raw))


def other_tier(fact: FactRef, fitting: Sequence[FactRef], asked: str) -> bool:
    """Whether a fact of the same sentence and unit (an enumeration of tiers: "副高级…500元，正高级…1000元，
    院士…1500元") says more of the question's words in the clause that sets it apart from its siblings: of a
    question about a 教授 (正高级职称), the 1000元 clause is the answer, the 院士 one another tier's. Words every
    sibling clause says ("每学时") tell none apart; a condition clause is no tier."""
    siblings = [
        f for f in fitting if f.context == fact.context and f.unit == fact.unit and not _conditional(f)
    ]
    if len(siblings) < 2 or _conditional(fact):
        return False
    common = set.intersection(*(_own_words(f) for f in siblings))
    words = set(tokens(asked))

    def says(f: FactRef) -> int:
        return len((_own_words(f) - common) & words)

    return max(says(f) for f in siblings) > says(fact)


def _topic(fact: FactRef) -> str:
    """What an enumerating sentence is about: the first clause of its words before a colon that comes before
    the number ("项目管理费纳入学院科研基金管理" of "项目管理费纳入学院科研基金管理，按…提取：20万及以下的部分按照
    8%…"); "" if there is no such colon."""
    at = fact.context.find(fact.raw)
    colon = _TOPIC_END.search(fact.context, 0, at if at >= 0 else len(fact.context))
    return _FIRST_CLAUSE.split(fact.context[: colon.start()], maxsplit=1)[0] if colon else ""


def _says_asked(asked: str, fact: FactRef, least: int) -> bool:
    """The fact's sentence (its own number aside) shares at least ``least`` word pairs with the question."""
    own = set(tokens(fact.raw))
    return len(set(tokens(asked)) & (set(tokens(fact.context)) - own)) >= least


def whole_sentence(fact: FactRef, hit: Hit) -> str:
    """The fact's sentence run back to the full stop before it: a clause after a semicolon ("2年后未使用完的，
    按规定收回") is about what the sentence's first half names ("…结余资金按规定归学院统筹用于项目支出")."""
    text = _body(hit)
    context = "".join(line.strip() for line in fold(fact.context).split("\n"))
    at = text.find(context)
    if at < 0:
        return fact.context
    start = max(text.rfind(end, 0, at) for end in "。！？!?") + 1
    return LEADING_MARKER.sub("", text[start : at + len(context)])


def _fits(
    asked: str,
    fact: FactRef,
    relevant: Collection[str],
    terms: Collection[str] = (),
    units: Collection[str] = (),
) -> bool:
    """Whether an answer may be composed from ``fact``: its subject fits the question and retrieval or the
    wording says so, or the topic of its enumerating sentence fits, or retrieval ranks it relevant and its
    sentence says three of the question's word pairs (a ledger subject can be poor: "每人每天补助" for
    市内交通费; two shared pairs such as 报销+时间 are too common to tell), or retrieval ranks it relevant, its
    subject is a rule term the question's everyday words stand for (``terms``) and its unit is the kind of
    quantity the question asks for (``units``): "几个人陪着吃饭" is 陪餐人数 in 人, two signals that agree. (A
    condition in the same sentence may fit too: ``_grounded`` puts what the sentence prescribes first.)"""
    if subject_fits(asked, fact) and (fact.fact_id in relevant or _fits_well(asked, fact)):
        return True
    if fact.fact_id in relevant and fact.unit in units and any(t in fact.subject for t in terms):
        return True
    topic = _topic(fact)
    if topic and len(set(tokens(asked)) & set(tokens(topic))) >= 3:
        return True
    return fact.fact_id in relevant and _says_asked(asked, fact, least=3)


def asks_for_number(question: str) -> bool:
    """Whether the question asks for an amount, a limit, a share, a time or a count."""
    return bool(NUMERIC_QUESTION.search(fold(question)))


# The problem of a draft that states the best fit's figure among others': the answer is in it, so a fact's own
# clause answers (a constrained retry would rewrite the copied list's other figures to the allowed one).
LISTED_OTHERS = "答案还列出了别的标准"
# The problem of a draft that does not abstain although the question asks about an expense the rules never write:
# no retry (the rules have nothing to constrain it to), an abstention is the answer.
UNWRITTEN = "规定中没有写到"


def draft_problem(
    question: str,
    text: str,
    checks: Sequence[NumberCheck],
    best: Sequence[FactRef] | None = None,
    context: Sequence[str] = (),
    unwritten: Sequence[str] = (),
) -> str:
    """Why an answer may not be shown ("" when it may): it repeats the system prompt or the question, or only
    turns the question into a statement ("学校有通讯补贴标准。"), dumps
    the retrieved rules, repeats itself, states a number the ledger does not back for this question, gives no
    number to a question asking for one that the rules answer, or a number other than the best-fitting
    fact's (``best``: the facts that fit the question about as well as the best one; empty when none fits,
    where only an abstention answers a question asking for a number; None when fit was not judged, as in
    closed book), or anything but an abstention where the question asks about an expense the documents never
    write (``unwritten``: "会员费")."""
    if not text.strip():
        return "答案为空"
    own = own_text(text, question)
    if not own:
        return "答案只复述了系统提示或问题"
    if restates_question(own, question):
        return "答案只是把问题说成了陈述，没有依据规定"
    if _CHUNK_MARK.search(text) or (
        context and sum(copied_mask(fold(text), [fold(c) for c in context])) > _CONTEXT_COPY_CHARS
    ):
        return "答案照抄了检索到的规定原文"
    # A short word said four times in a row is a loop too ("【回答】\n【回答】\n…" passed a retry).
    span = repeated_span(own) or repeated_span(own, min_len=2, times=4) or repeated_statement(own)
    if span:
        return f"答案重复“{span}”"
    stray = stray_words(own, " ".join([question, *context]))
    if stray:
        return f"答案夹杂无关的外文片段（{'、'.join(stray[:3])}）"
    if context:
        # A clock time, date or article stands for no fact, so only its sources can back it: a constrained retry
        # wrote "晚6时至次日晨6时" over a rule's "晚8时至次日晨7时" (6: the only number it was allowed).
        sources = {(m.kind, m.value) for t in (question, *context) for m in find_numbers(fold(t))}
        unsourced = [
            m.raw
            for m in find_numbers(fold(own))
            if m.kind in WRITTEN_KINDS and (m.kind, m.value) not in sources
        ]
        if unsourced:
            return f"答案中的{unsourced[0]}在检索到的规定原文中没有"
    if not all(c.ok for c in checks):
        return _describe(checks, "检索到的规定")
    if unwritten:
        if ABSTENTION.search(own) and not checks:
            return ""
        return f"{UNWRITTEN}“{unwritten[0]}”，答案却没有说没有规定"
    if best is not None and asks_for_number(question):
        stated = {Decimal(v) for c in checks for v in c.values}
        if (
            not stated
            and asks_when(question)
            and any(m.kind in ("date", "ordinal") for m in find_numbers(own))
        ):
            # A time or a date answers "几点" or "哪天" (the ledger holds amounts, not those), but not
            # "多少天之内": "最长不得超过当年的12月31日" passed for a 15-day deadline.
            return ""
        if not best:
            # No rule fact fits the question: a number retrieval brought is another rule's, and an answer
            # without one says nothing the rules back ("学校新引进的博士有安家费，按照学校的规章制度执行。"),
            # unless it is the model's own "文件中没有相关规定。".
            if not stated and ABSTENTION.search(own):
                return ""
            if stated:
                return "规定中没有与问题相符的数字，答案中的数字是别的规定的"
            return "问题问的是数字，规定中没有相符的数字，答案却没有说没有规定"
        if not stated:
            return "问题问的是数字，答案没有给出规定中的数字"

        # A range is stated whole: 1500 alone is not "1500-2400元/人天", nor the other tier's "900-1500". And with
        # its unit: a bare "400" is no 400元/人天 ("住宿费标准可以上浮不超过400。" passed a constrained retry).
        def states(fact: FactRef) -> bool:
            written = {Decimal(v) for c in checks if c.unit or not fact.unit for v in c.values}
            return set(fact.values()) <= written

        if not any(states(f) for f in best):
            if any(set(f.values()) <= stated for f in best):
                return f"答案中的数字没有写单位（{best[0].raw}）"
            return f"答案中的数字不是最符合问题的规定（{best[0].raw}）"
        # One answer, not the rule's list: beside the best fit's figure, another fact's figure of the same
        # unit is another tier's or another case's answer ("院内不超过70元/人天，院外不超过110元/人天" asked about
        # a meeting on campus). Figures of another unit may be its conditions ("500万元至1000万元的部分为15%"),
        # and so may one in a clause ending in 的 ("接待对象在10人以内的，陪餐人数不超过3人").
        best_ids = {f.fact_id for f in best}
        answered = next(f for f in best if states(f))  # the best-fitting fact the answer states
        best_units = {answered.unit} if answered.unit else set()
        best_values = {v for f in best for v in f.values()}
        listed = [
            c
            for c in checks
            if c.fact_ids
            and not best_ids.intersection(c.fact_ids)
            and c.unit in best_units
            and not {Decimal(v) for v in c.values} <= best_values
            and not clause_around(own, c.raw).strip().endswith("的")
        ]
        if listed:
            return f"{LISTED_OTHERS}（{listed[0].raw}），所问的是{answered.raw}"
    return ""


def fact_statement(fact: FactRef) -> str:
    """What a fact says, as one short sentence: the rule's sentence, or, when it is long or holds other numbers
    (other tiers, conditions, a date), the subject and the clause holding the number
    ("会议伙食费：院外不超过110元/人天。")."""
    sentence = LEADING_MARKER.sub("", fact.context.strip()).rstrip("；;，,：: ")
    # Other tiers, conditions or a deadline's date beside the number would confuse; and a draft copying a
    # statement longer than the guard's dump limit would be refused for it.
    if len(sentence) > _CONTEXT_COPY_CHARS or len(rule_numbers(sentence)) > 1 or _times(sentence):
        clause = LEADING_MARKER.sub("", clause_of(fact).strip())
        sentence = clause if fact.subject and fact.subject in clause else f"{fact.subject}：{clause}"
    return f"{sentence.strip().rstrip('；;，,：: 。')}。"


def compose(fact: FactRef, hit: Hit | None) -> str:
    """An answer made from a fact: :func:`fact_statement` with its source:
    "根据《差旅费管理办法》第十八条：伙食补助费…每人每天100元。" """
    return _quoted(fact_statement(fact), hit)


def _quoted(sentence: str, hit: Hit | None) -> str:
    """``sentence`` as an answer with its source ("根据《title》第十八条：…。")."""
    where = ""
    if hit is not None:
        article = next((p for p in reversed(hit.heading_path.split(" > ")) if p.strip()), "")
        title = hit.doc.rsplit(".", 1)[0]
        where = f"根据《{title}》{article}："
    return f"{where}{sentence.strip().rstrip('；;，,：: 。')}。"


def _body(hit: Hit) -> str:
    """The chunk's text without its heading lines, its hard line wraps joined (a sentence may wrap)."""
    lines = fold(hit.text).split("\n")
    headings = {part.strip() for part in hit.heading_path.split(" > ")}
    while lines and lines[0].strip() in headings:
        lines.pop(0)
    return "".join(line.strip() for line in lines)


def _times(text: str) -> list[NumberMention]:
    """The times of day and dates ``text`` writes (not article numbers)."""
    return [m for m in find_numbers(text) if m.kind == "date" and not m.raw.startswith("第")]


def asks_when(question: str) -> bool:
    """Whether the question asks for a time of day or a date ("最晚几点之前", "最晚能拖到什么时候")."""
    return bool(WHEN_QUESTION.search(fold(question)))


def when_sentence(asked: str, hits: Sequence[Hit]) -> tuple[str, Hit] | None:
    """The retrieved rule sentence that writes a time or a date and shares most word pairs with ``asked``
    (at least ``WHEN_MIN_SHARED``, the time's own characters aside), with its chunk; None when none does."""
    words = set(tokens(asked))
    best: tuple[int, str, Hit] | None = None
    for hit in hits:
        for sentence in _RULE_SENTENCE.findall(_body(hit)):
            times = _times(sentence)
            if not times:
                continue
            own = {t for m in times for t in tokens(m.raw)}
            shared = len(words & (set(tokens(sentence)) - own))
            if shared >= WHEN_MIN_SHARED and (best is None or shared > best[0]):
                best = (shared, _time_clauses(LEADING_MARKER.sub("", sentence.strip())), hit)
    return (best[1], best[2]) if best else None


def _time_clauses(sentence: str) -> str:
    """``sentence`` without its clauses that state an amount and no time ("…15日内用发票冲账，特殊情况…，最长不得
    超过当年的12月31日" keeps the last two): another rule's number beside the time would confuse."""
    clauses = [c for c in _FIRST_CLAUSE.split(sentence) if c.strip()]
    kept = [c for c in clauses if _times(c) or not any(m.kind == "quantity" for m in find_numbers(c))]
    return "，".join(kept) if any(_times(c) for c in kept) else sentence


EVIDENCE_LINES = 3  # best-fitting facts' statements put before the retrieved rules in the prompt


@dataclass(frozen=True)
class FactFit:
    """How the ledger's facts fit a question: what the guard judges an answer by.

    ``asked`` is the question with the rule words its everyday words stand for; ``ranked`` retrieval's facts;
    ``fitting`` the facts an answer may be composed from, best first; ``close`` those fitting about as well as
    the best; ``relevant`` the fact ids a stated number may come from."""

    asked: str
    ranked: tuple[FactHit, ...]
    fitting: tuple[FactHit, ...]
    close: tuple[FactRef, ...]
    relevant: frozenset[str]


def fit_facts(question: str, facts_index: FactIndex) -> FactFit:
    """Rank the ledger's facts for ``question`` and judge which fit it (see :class:`FactFit`)."""
    ranked = facts_index.search(question, k=8)
    # Fit is judged on the question with the rule words its everyday words stand for (住酒店 -> 住宿费).
    expansions = [t for t in facts_index.expand(question) if len(t) >= 2]
    asked = " ".join([question, *expansions])
    # Top-ranked facts that say a rule term the question's everyday words stand for fit it too.
    relevant = {
        r.fact.fact_id
        for r in ranked[:RELEVANT_FACTS]
        if any(t in r.fact.subject or t in r.fact.context for t in expansions)
    }
    # The facts an answer may be composed from, and that overrule an abstention: their words fit, by more than
    # one shared word-pair ("部分" alone does not make 500至1000万元的部分 an answer about phone bills).
    query = facts_index.query(question)
    fitting_hits = [r for r in ranked if _fits(asked, r.fact, relevant, expansions, query.units)]
    # Retrieval's first fact, well ahead of the next, fits when its whole sentence (the clause before a
    # semicolon included) says enough of the question.
    if ranked and not any(r is ranked[0] for r in fitting_hits):
        first, runner_up = ranked[0], ranked[1].score if len(ranked) > 1 else 0.0
        said = set(tokens(whole_sentence(first.fact, first.chunk))) - set(tokens(first.fact.raw))
        if first.score >= TOP_FACT_LEAD * runner_up and len(set(tokens(asked)) & said) >= TOP_FACT_SHARED:
            fitting_hits.insert(0, first)
    # The general rule answers, not the exception for places the question does not name ("出差伙食补助费每天
    # 多少" is 100元, not 赴西藏、青海、新疆 120元): fitting facts naming other places go after the others.
    asked_regions = query.regions
    # What a sentence prescribes answers, not the case it applies to: of "接待对象在8人以内的，陪餐人数不超过2人"
    # the 2人 goes before the 8人 when both fit (a threshold question still gets the condition where the
    # sentence's rule states no number: "单笔金额10000元以上的，报分管校领导审批").
    rules = {r.fact.context for r in fitting_hits if not _conditional(r.fact)}
    # Another tier's rate of the same sentence (the 院士 rate for a 教授) goes after the tier the question names.
    fitting_facts = [r.fact for r in fitting_hits]
    tier_missed = {r.fact.fact_id for r in fitting_hits if other_tier(r.fact, fitting_facts, asked)}
    # And a rule naming a district or county the question names (one the lexicon's regions lack) goes before the
    # general rule it is the exception to.
    fitting_hits.sort(
        key=lambda r: (
            _elsewhere(r.fact, asked_regions),
            not _names_asked_place(r.fact, question),
            r.fact.fact_id in tier_missed,
            r.fact.context in rules and _conditional(r.fact),
        )
    )
    # The numbers stated with a fitting fact in its sentence (the bracket "20万及以下" of "…的部分按照8%") may be
    # stated with it.
    sentences = {r.fact.context for r in fitting_hits}
    relevant |= {r.fact.fact_id for r in fitting_hits} | {
        r.fact.fact_id for r in ranked if r.fact.context in sentences
    }
    # Facts fitting about as well as the best: retrieval's order among near-equals is no reason to refuse. A
    # rule for named places the question does not name is an exception, never as good as the best, nor is
    # another tier's rate.
    # Where the best names a place the question names (a district the lexicon's regions lack), the rule for that
    # place answers: the general rule beside it is no near-equal ("峡山区…市内交通" is 30元, not the general 80元).
    local = bool(fitting_hits) and _names_asked_place(fitting_hits[0].fact, question)
    close = [
        r.fact
        for i, r in enumerate(fitting_hits)
        if i == 0
        or (
            r.score >= BEST_FIT_SHARE * fitting_hits[0].score
            and not _elsewhere(r.fact, asked_regions)
            and r.fact.fact_id not in tier_missed
            and (not local or _names_asked_place(r.fact, question))
        )
    ]
    return FactFit(asked, tuple(ranked), tuple(fitting_hits), tuple(close), frozenset(relevant))


def evidence_lines(fit: FactFit, when: str = "", n: int = EVIDENCE_LINES) -> list[str]:
    """The statements of the ``n`` best-fitting facts (distinct), best first, read before the retrieved rules;
    led by ``when``, the rule clause that writes the time a question asks for (:func:`when_sentence`)."""
    first = [f"{when.strip().rstrip('。')}。"] if when.strip() else []
    return list(dict.fromkeys([*first, *_statements([r.fact for r in fit.fitting], n)]))[:n]


def _statements(facts: Sequence[FactRef], n: int) -> list[str]:
    """The first ``n`` distinct :func:`fact_statement` of ``facts``, in their order: one number each, so that
    the line the model copies states the number asked for and not its neighbours (院内70元 beside 院外110元)."""
    return list(dict.fromkeys(fact_statement(f) for f in facts))[:n]


def _grounded(
    question: str,
    generator: Callable[..., str],
    index: ChunkIndex,
    con: duckdb.DuckDBPyConnection,
    k: int,
    max_tokens: int,
    retry: bool,
) -> Answer:
    fit = fit_facts(question, FactIndex.build(con))
    # An expense no document writes has no rule, whatever else of the question a rule speaks of: no fact fits.
    # Unless the question states a sum ("3000块" reads without a unit): a rule by amount (who approves 3000元)
    # holds for any expense.
    spent = any(not unit or unit.startswith("元") for _, unit in question_amounts(question))
    unwritten = [] if spent else index.unwritten_expenses(question)
    if unwritten:
        fit = replace(fit, fitting=(), close=())
    asked, ranked, fitting_hits, relevant = fit.asked, fit.ranked, fit.fitting, set(fit.relevant)
    hits = _context_chunks(
        index.search(question, k, expand=True), fitting_hits[0].chunk if fitting_hits else None, k
    )
    if not hits:
        # Nothing retrieved shares a word with the question: there is nothing to ground an answer in.
        return Answer(
            ABSTAIN_TEXT, "grounded", (), False, "abstained", (), ("no chunk matches the question",)
        )
    by_chunk = facts_by_chunk(con, index)
    facts = list(
        {
            f.fact_id: f
            for f in [*(f for h in hits for f in by_chunk.get(h.chunk_id, [])), *(r.fact for r in ranked)]
        }.values()
    )
    hit_of = {f.fact_id: h for h in hits for f in by_chunk.get(h.chunk_id, [])}
    hit_of.update({r.fact.fact_id: r.chunk for r in ranked if r.fact.fact_id not in hit_of})
    fitting = [r.fact for r in fitting_hits]
    best = fitting[0] if fitting else None
    close = list(fit.close)
    # The rules shown, their documents' names and headings: an answer may cite its source ("根据《sample_rules》
    # 第十八条"), whose Latin letters are no noise and whose article is written in the heading.
    context = [h.text for h in hits] + list(
        dict.fromkeys([*(h.doc.rsplit(".", 1)[0] for h in hits), *(h.heading_path for h in hits)])
    )

    def cited(ids: Sequence[str]) -> tuple[Hit, ...]:
        return tuple(dict.fromkeys(hit_of[i] for i in ids if i in hit_of))

    def shown(text: str, action: str, ids: Sequence[str], values: tuple[str, ...]) -> Answer:
        """A verified answer: the model's (draft or retry) or the one composed from a fact."""
        ids = tuple(ids)
        return Answer(
            text, "grounded", values, True, action, hits, tuple(notes), draft, ids, cited(ids), retried
        )

    def verified(checks: Sequence[NumberCheck]) -> tuple[list[str], tuple[str, ...]]:
        return list(dict.fromkeys(i for c in checks for i in c.fact_ids)), _stated(checks)

    notes: list[str] = [f"规定中没有写到“{w}”" for w in unwritten]
    retried = ""
    # A question asking for a time or a date is answered by the rule sentence that writes it (the ledger holds
    # amounts): a draft that writes no time, an abstention included, does not answer it.
    when = when_sentence(asked, hits) if asks_when(question) and not unwritten else None

    def problem_of(text: str, checks: Sequence[NumberCheck]) -> str:
        problem = draft_problem(question, text, checks, close, context, unwritten)
        if not problem and when is not None and not _times(fold(own_text(text, question))):
            return "问题问的是时间或日期，答案没有给出规定中的时间"
        return problem

    lead = evidence_lines(fit, when=when[0] if when is not None else "")
    draft = generator(context_messages(question, hits, evidence=lead), max_tokens).strip()
    checks = check_numbers(asked, draft, facts, relevant)
    problem = problem_of(draft, checks)
    if not problem:
        return shown(draft, "passed", *verified(checks))
    notes.append(f"draft: {problem}")
    evidence = fitting[:2] or _best_evidence(asked, facts)[:2]
    if retry and not problem.startswith((LISTED_OTHERS, UNWRITTEN)):
        retried = generator(
            _evidence_messages(question, hits, evidence),
            max_tokens,
            grammar=NumberConstraint(tuple(_allowed_numbers(evidence[:1], question))),
        ).strip()
        again = check_numbers(asked, retried, facts, relevant)
        second = problem_of(retried, again)
        if not second:
            notes.append("retry with the evidence sentence verified")
            return shown(retried, "retried_ok", *verified(again))
        notes.append(f"retry: {second}")
    if when is not None:
        sentence, hit = when
        notes.append("quoted the rule sentence that writes the time asked for")
        return Answer(
            _quoted(sentence, hit),
            "grounded",
            (),
            True,
            "quoted_evidence",
            hits,
            tuple(notes),
            draft,
            cited=(hit,),
            retry=retried,
        )
    if best is not None:
        notes.append(f"composed from fact {best.fact_id}, the best fit for the question")
        values = tuple(dict.fromkeys(canonical(v) for v in best.values()))
        return shown(compose(best, hit_of.get(best.fact_id)), "quoted_evidence", [best.fact_id], values)
    return Answer(ABSTAIN_TEXT, "grounded", (), False, "abstained", hits, tuple(notes), draft, retry=retried)


def _context_chunks(hits: Sequence[Hit], best: Hit | None, k: int) -> tuple[Hit, ...]:
    """The chunks shown to the model: the chunk search's, with the best-fitting fact's chunk first when the
    chunk search missed it (the model can only read what it is shown)."""
    chosen = list(hits)
    if best is not None and all(h.chunk_id != best.chunk_id for h in chosen):
        chosen = [best, *chosen][: max(k, 1)]
    return tuple(chosen)


def _allowed_numbers(evidence: Sequence[FactRef], question: str) -> list[str]:
    """The numbers a retried answer may write: fitting facts as written and as plain digits, and the
    question's own numbers."""
    allowed: list[str] = []
    for fact in evidence:
        for mention in rule_numbers(fact.raw):
            allowed.extend(_written_numbers(mention.raw))
        allowed.append(fact.value)
        if fact.value_max:
            allowed.append(fact.value_max)
    for mention in rule_numbers(question):
        allowed.extend(_written_numbers(mention.raw))
    return allowed


def _written_numbers(raw: str) -> list[str]:
    """The digit runs and Chinese-numeral runs of a number as written ("1,200", "八十")."""
    return re.findall(r"\d[\d,]*(?:\.\d+)?", raw) + _CN_RUN.findall(raw)


def _evidence_messages(
    question: str, hits: Sequence[Hit], evidence: Sequence[FactRef]
) -> list[dict[str, str]]:
    """The context prompt again, with the best evidence sentences first and an instruction to use only their
    numbers (or to abstain when none fits)."""
    if evidence:
        lines = _statements(evidence, EVIDENCE_LINES)
        return context_messages(question, hits, evidence=lines, instruction=EVIDENCE_ONLY)
    messages = context_messages(question, hits)
    messages[1] = {"role": "user", "content": f"{NO_EVIDENCE}\n\n" + messages[1]["content"]}
    return messages
