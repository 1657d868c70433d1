"""Where an answer ends: the token the chat template closes an assistant turn with, and runaway repetition.

A model fine-tuned on chat rows learns to end its answer with the template's end-of-turn token (Gemma:
``<end_of_turn>``; ChatML/Qwen: ``<|im_end|>``; the generic template here: the eos token). Generation must
stop there in every backend (transformers, llama.cpp, and any llama.cpp front end reading the exported GGUF),
so the token is derived from the template itself, by rendering a probe answer and reading what follows it,
never from a per-model list. :func:`repeated_span` finds the loops a weakly trained model falls into
("【120元/人】【120元/人】…"); both generators stop there, and the guard can refuse such a draft.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from tasks.ingest.facts import SENTENCE_BREAK

_PROBE = "SLMPROBEANSWER"  # plain ASCII letters: no template trims or escapes it


def turn_end_text(render: Callable[[list[dict[str, str]]], str]) -> str | None:
    """The text a chat template closes an assistant turn with, or None when it cannot be told.

    ``render(messages)`` renders a conversation *without* a generation prompt (``apply_chat_template(m,
    tokenize=False)`` for a transformers tokenizer). The first whitespace-separated piece after the probe
    answer is the closing: ``<end_of_turn>`` for Gemma, ``<|im_end|>`` for ChatML, ``</s>`` or ``<eos>`` for
    templates that end a turn with eos."""
    messages = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": _PROBE}]
    try:
        rendered = render(messages)
    except Exception:  # a template that refuses this conversation shape: nothing can be derived
        return None
    if not isinstance(rendered, str) or _PROBE not in rendered:
        return None
    closing = rendered.rsplit(_PROBE, 1)[1].split()
    return closing[0] if closing else None


def end_of_turn_token(tokenizer: Any) -> tuple[str, int] | None:
    """``(text, id)`` of the token ``tokenizer``'s chat template ends an assistant turn with (None when the
    template has none, or when its closing is not one token of this vocabulary)."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    text = turn_end_text(lambda m: tokenizer.apply_chat_template(m, tokenize=False))
    if text is None:
        return None
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return (text, int(ids[0])) if len(ids) == 1 else None


def stop_token_ids(tokenizer: Any, generation_config: Any = None) -> list[int]:
    """Token ids that end an answer: the end-of-turn token first, then eos and whatever eos ids the model's
    generation config names (a base may end a turn with ``<eos>`` where the fine-tune learned the turn token)."""
    ids: list[int] = []
    found = end_of_turn_token(tokenizer)
    if found is not None:
        ids.append(found[1])
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.append(int(tokenizer.eos_token_id))
    configured = getattr(generation_config, "eos_token_id", None)
    if configured is not None:
        ids.extend(int(i) for i in (configured if isinstance(configured, (list, tuple)) else [configured]))
    return list(dict.fromkeys(ids))


@lru_cache(maxsize=16)
def _tandem(min_len: int, times: int) -> re.Pattern[str]:
    return re.compile(rf"(.{{{min_len},}}?)\1{{{times - 1},}}", re.DOTALL)


def repeated_span(text: str, min_len: int = 6, times: int = 3) -> str | None:
    """The first span of at least ``min_len`` characters that ``text`` repeats ``times`` times in a row, or
    None. ``"答：【120元/人】【120元/人】【120元/人】"`` gives ``"【120元/人】"``; whitespace counts as part
    of the span (``" eleSp"`` repeated), and the shortest repeating unit is returned. A one- or two-sentence
    answer never repeats itself this way; a model caught in a loop always does."""
    if times < 2:
        raise ValueError("times must be at least 2")
    if min_len < 1:
        raise ValueError("min_len must be at least 1")
    found = _tandem(min_len, times).search(text)
    return found.group(1) if found else None


_NUMBERED_SPAN = 8  # characters, a digit among them: said twice in one short answer is a loop, not a rule
_STATEMENT_MARKS = " \t　【】[]（）()“”\"'，,："
_LATIN_WORD = re.compile(r"[A-Za-z]{4,}")


def repeated_statement(text: str, min_len: int = _NUMBERED_SPAN) -> str | None:
    """The first span of at least ``min_len`` characters holding a digit that ``text`` says twice, anywhere
    ("伙食补助费每人每天120元" in "出差伙食补助费每人每天120元。…出了差旅伙食补助费每人每天120元。"), or None. An
    enumeration of tiers is not one: its spans differ in their numbers (…不超过800元，…不超过500元). A whole
    statement with a digit said twice is one however short ("【25元】\n【25元】")."""
    for start in range(len(text) - min_len + 1):
        span = text[start : start + min_len]
        if any(c.isdigit() for c in span) and text.find(span, start + min_len) >= 0:
            return span
    seen: set[str] = set()
    for statement in SENTENCE_BREAK.split(text):
        statement = statement.strip(_STATEMENT_MARKS)
        if any(c.isdigit() for c in statement):
            if statement in seen:
                return statement
            seen.add(statement)
    return None


def stray_words(text: str, sources: str) -> list[str]:
    """Latin-letter words of ``text`` (four letters or more) that ``sources`` (the question and the rules
    shown) do not contain: a Chinese answer with "iatrics" or "mendatang" in it is a model's noise."""
    known = sources.lower()
    return [w for w in _LATIN_WORD.findall(text) if w.lower() not in known]


def default_repeat_penalty() -> float:
    """The ``answer_repeat_penalty`` setting's default, for generators made without one."""
    from runtime.config import Settings

    return float(Settings.model_fields["answer_repeat_penalty"].default)
