"""What an answer is, as the guard and evaluation see it: the model's draft, what was shown, and what the guard
did (:class:`Reply`); the part of an answer the model wrote itself rather than copied from its prompt
(:func:`own_text`); and the words that abstain. The answer stage owns them (the guard refuses echoes);
evaluation scores with the same functions."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from tasks.answer.prompts import PROMPT_TEXTS
from tasks.answer.reading import cjk_bigrams
from tasks.ingest.normalize import fold
from tasks.ingest.numbers import NumberMention, find_numbers, readings

# Longest first: at one position the first alternative that matches wins, and own_text needs the whole phrase.
ABSTENTION = re.compile(
    r"(?:文件|规定|制度)中?(?:没有|无)(?:相关|明确|具体)?(?:的)?规定|(?:没有|无)(?:相关|明确|具体)?(?:的)?规定"
    r"|未作?(?:明确|具体)?规定|文件中没有|不在.*规定"
)


def candidate_values(mention: NumberMention) -> set[Decimal]:
    """Values a mention may be checked against the ledger on: its canonical value(s), and the number as
    written before 万/亿 scaling."""
    values: set[Decimal] = set()
    for low, high in readings(mention):
        values.add(Decimal(low))
        if high is not None:
            values.add(Decimal(high))
    return values


REPLACED_ACTIONS = ("quoted_evidence", "abstained")  # the guard showed something the model did not write


@dataclass(frozen=True)
class Reply:
    """One answer as evaluation sees it: what the model wrote (its draft, or its constrained retry when the
    guard asked for one), what the user was shown, and what the guard did in between. A plain string from an
    answerer without a guard is both, with the action "unguarded"."""

    model: str
    shown: str
    guard_action: str = "unguarded"
    draft: str = ""

    @property
    def replaced(self) -> bool:
        return self.guard_action in REPLACED_ACTIONS


def as_reply(answer: str | Reply) -> Reply:
    return answer if isinstance(answer, Reply) else Reply(answer, answer, "unguarded", answer)


# --- what the answer itself says ------------------------------------------------------------------------------

_ECHO_RUN = 8  # a run of this many characters found in the prompt or the question is copied, not written
_ANSWER_SENTENCE = re.compile(r"[^。！？!?；;\n]+[。！？!?；;\n]*")
_NOT_WORDS = re.compile(r"[\s\W_]+")


def copied_mask(text: str, sources: Sequence[str], run: int = _ECHO_RUN) -> list[bool]:
    """Per character of ``text``: whether it lies in a run of at least ``run`` characters that occurs in one
    of ``sources``."""
    covered = [False] * len(text)
    for i in range(len(text)):
        end = i + run
        if end > len(text) or not any(text[i:end] in s for s in sources):
            continue
        while end < len(text) and any(text[i : end + 1] in s for s in sources):
            end += 1
        covered[i:end] = [True] * (end - i)
    return covered


def own_text(answer: str, question: str, sources: Sequence[str] = PROMPT_TEXTS) -> str:
    """The sentences of ``answer`` the model wrote itself. A sentence copied from the system prompt, the
    instructions or the question (what it adds is under two characters or a fifth of it, and no number) is
    dropped. The abstention words are the model's own: "文件中没有相关规定。" alone is an answer, though the
    prompt contains it; "原文中没有答案的，回答“文件中没有相关规定。”" is the prompt."""
    texts = [fold(s) for s in (*sources, question)]
    instructions = [_NOT_WORDS.sub("", fold(s)) for s in sources]
    asked = {v for m in find_numbers(fold(question)) for v in candidate_values(m)}
    kept = []
    for sentence in _ANSWER_SENTENCE.findall(fold(answer)):
        copied = copied_mask(sentence, texts)
        for match in ABSTENTION.finditer(sentence):
            copied[match.start() : match.end()] = [None] * (match.end() - match.start())  # type: ignore[list-item]
        rest = [(c, flag) for c, flag in zip(sentence, copied, strict=True) if flag is not None]
        words = [(c, flag) for c, flag in rest if not _NOT_WORDS.fullmatch(c)]
        added = "".join(c for c, flag in words if not flag)
        new_numbers = [m for m in find_numbers(added) if not candidate_values(m) <= asked]
        if not words and not ABSTENTION.search(sentence):
            continue  # punctuation only
        if words and len(added) < max(2, 0.2 * len(words)) and not new_numbers:
            continue  # copied from the prompt or the question
        bare = _NOT_WORDS.sub("", sentence)
        if bare and not ABSTENTION.search(sentence) and any(bare in t for t in instructions):
            continue  # a piece of the instructions too short for a run ("规定原文：", the prompt's label)
        kept.append(sentence)
    own = "".join(kept).strip()
    # What is left after the copies is a scrap ("回答", where max tokens cut a copied prompt short): no answer.
    own_words = len(_NOT_WORDS.sub("", own))
    all_words = len(_NOT_WORDS.sub("", fold(answer)))
    scrap = own_words < min(4, all_words) and own_words < 0.2 * all_words and not ABSTENTION.search(own)
    if own and scrap and all(candidate_values(m) <= asked for m in find_numbers(own)):
        return ""
    return own


def restates_question(own: str, question: str) -> bool:
    """Whether ``own`` (the model's own sentences) only turns the question into a statement: every pair of
    Chinese characters it writes is one the question has, and it states no number and does not abstain.
    "学校有通讯补贴标准。" for "学校有没有通讯补贴标准？" claims what the question asks about, from nothing the
    rules say; "可以。" for "可以直接给现金吗？" is a yes without a source."""
    text = fold(own)
    if not text or ABSTENTION.search(text) or find_numbers(text):
        return False
    pairs = cjk_bigrams(text)
    return bool(pairs) and pairs <= cjk_bigrams(question)
