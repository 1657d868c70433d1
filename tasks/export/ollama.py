"""An Ollama ``Modelfile`` beside an exported GGUF, so ``ollama create NAME -f X.Modelfile`` works as it is.

The ``TEMPLATE`` is derived from the chat template the model was trained with (the tokenizer's Jinja
template), not from a per-family table: the template is rendered with probe texts in place of the system
prompt, the question and the answer, and the probes are replaced by Ollama's ``{{ .System }}``,
``{{ .Prompt }}`` and ``{{ .Response }}``. Ollama renders such a (variable-based, "legacy") template once per
user/assistant turn, with the system prompt only in the first, and cuts the last turn after ``.Response``
to prompt for the answer; so the Jinja template must be one that appends a turn at a time (Gemma's
``<start_of_turn>user``/``model``, ChatML's ``<|im_start|>``, the generic one in
``tasks.models.base_models``), and the system prompt must be its own piece of the first turn (Gemma folds it
into the first user turn: ``<start_of_turn>user\\n{system}\\n\\n{prompt}``). Anything else is refused with
:class:`ModelfileError` naming what does not fit; the GGUF export itself does not depend on it.

``SYSTEM`` is the closed-book system prompt the product answers with (``tasks.answer.prompts``),
``PARAMETER stop`` the text the template closes a turn with (``tasks.answer.stop.turn_end_text``, the one
place that tells it) and the eos token, ``PARAMETER temperature 0`` (answers about amounts are greedy, as
``slm ask`` generates them).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tasks.answer.prompts import SYSTEM_PROMPT
from tasks.answer.stop import turn_end_text

# Plain ASCII letters: no chat template trims, escapes or splits them.
_SYSTEM, _PROMPT1, _RESPONSE1, _PROMPT2, _RESPONSE2 = (
    "SLMPROBESYSTEM",
    "SLMPROBEPROMPTONE",
    "SLMPROBERESPONSEONE",
    "SLMPROBEPROMPTTWO",
    "SLMPROBERESPONSETWO",
)
SYSTEM_FIELD, PROMPT_FIELD, RESPONSE_FIELD = "{{ .System }}", "{{ .Prompt }}", "{{ .Response }}"


class ModelfileError(ValueError):
    """The chat template cannot be written as an Ollama template; the message says what does not fit."""


Render = Callable[[list[dict[str, str]], bool], str]  # (messages, add_generation_prompt) -> prompt text


def tokenizer_renderer(tokenizer: Any) -> Render:
    """``apply_chat_template`` of a transformers tokenizer as a :data:`Render`."""

    def render(messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    return render


def ollama_template(render: Render, bos_token: str | None = None) -> str:
    """The Ollama Go template that renders every conversation as ``render`` does (minus a leading
    ``bos_token``, which llama.cpp adds itself when the GGUF says so)."""

    def rendered(messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
        try:
            text = render(messages, add_generation_prompt)
        except Exception as exc:  # a template that refuses a system message or two turns
            raise ModelfileError(
                f"the chat template cannot render a system prompt and two turns: {exc}"
            ) from exc
        return text[len(bos_token) :] if bos_token and text.startswith(bos_token) else text

    system = {"role": "system", "content": _SYSTEM}
    turn1 = [{"role": "user", "content": _PROMPT1}, {"role": "assistant", "content": _RESPONSE1}]
    turn2 = [{"role": "user", "content": _PROMPT2}, {"role": "assistant", "content": _RESPONSE2}]
    first = rendered([system, *turn1])
    both = rendered([system, *turn1, *turn2])
    if not both.startswith(first):
        raise ModelfileError("the chat template renders earlier turns differently once a turn is added")
    with_system = _fields(first, _PROMPT1, _RESPONSE1)
    plain = _fields(both[len(first) :], _PROMPT2, _RESPONSE2)  # a later turn: no system prompt
    for name, text in (("first turn", with_system), ("later turn", plain)):
        if text.count(PROMPT_FIELD) != 1 or text.count(RESPONSE_FIELD) != 1:
            raise ModelfileError(f"the chat template's {name} does not show the question and answer once")
        if text.index(PROMPT_FIELD) > text.index(RESPONSE_FIELD):
            raise ModelfileError("the chat template puts the answer before the question")
    if with_system.count(SYSTEM_FIELD) != 1 or SYSTEM_FIELD in plain:
        raise ModelfileError("the chat template does not show the system prompt once, in the first turn")
    before, system_part, after = _insertion(with_system, plain)
    template = f"{before}{{{{ if .System }}}}{system_part}{{{{ end }}}}{after}"
    # Ollama prompts for an answer by cutting the last turn after .Response: that must be the template's
    # own generation prompt.
    prompt = rendered([system, turn1[0]], add_generation_prompt=True)
    expected = with_system[: with_system.index(RESPONSE_FIELD)]
    if _fields(prompt, _PROMPT1, _RESPONSE1) != expected:
        raise ModelfileError("the chat template's generation prompt is not the start of an answered turn")
    return template


def _fields(text: str, prompt: str, response: str) -> str:
    if "{{" in text or "}}" in text:
        raise ModelfileError("the chat template's text contains '{{' or '}}', which Go templates would read")
    return text.replace(_SYSTEM, SYSTEM_FIELD).replace(prompt, PROMPT_FIELD).replace(response, RESPONSE_FIELD)


def _insertion(with_system: str, plain: str) -> tuple[str, str, str]:
    """Split ``with_system`` into (before, system part, after) where before + after == ``plain``: the
    system prompt must only add text. The cut is moved to the start of a line (or of the turn) where the
    same split is possible, so ChatML's ``<|im_start|>system ... <|im_end|>\\n`` stays one block."""
    start = with_system.index(SYSTEM_FIELD)
    end = start + len(SYSTEM_FIELD)
    head = 0
    while head < min(start, len(plain)) and with_system[head] == plain[head]:
        head += 1
    tail = 0
    while (
        tail < min(len(with_system) - end, len(plain) - head) and with_system[-1 - tail] == plain[-1 - tail]
    ):
        tail += 1
    if head + tail != len(plain):
        raise ModelfileError(
            "the chat template changes more than its own system block when a system prompt is given"
        )
    before, middle, after = with_system[:head], with_system[head : len(with_system) - tail], plain[head:]
    for shift in range(len(before) + 1):
        if shift and before[-shift:] != middle[-shift:]:
            continue  # the same text must end both, so moving the cut keeps before + after == plain
        moved_before = before[: len(before) - shift]
        if not moved_before or moved_before.endswith("\n"):
            if not shift:
                return before, middle, after
            return moved_before, before[-shift:] + middle[:-shift], before[-shift:] + after
    return before, middle, after


def stop_texts(render: Render, eos_token: str | None) -> list[str]:
    """The texts generation stops at: the end of an assistant turn, then the eos token."""
    closing = turn_end_text(lambda messages: render(messages, False))
    return list(dict.fromkeys(text for text in (closing, eos_token) if text))


def modelfile_text(
    gguf_name: str,
    template: str,
    stops: list[str],
    system: str = SYSTEM_PROMPT,
    adapter_name: str | None = None,
) -> str:
    """A Modelfile: ``FROM`` the GGUF (relative paths are read from the Modelfile's folder), the template,
    system prompt, stop texts and temperature 0; with ``adapter_name``, ``FROM`` is the base GGUF and the
    LoRA GGUF is the ``ADAPTER``."""
    for name, value in (("TEMPLATE", template), ("SYSTEM", system)):
        if '"""' in value:
            raise ModelfileError(f'{name} contains """, which ends a Modelfile value early')
    for value in (gguf_name, adapter_name or "", *stops):
        if '"' in value or "\n" in value:
            raise ModelfileError(f"{value!r}: a quote or line break cannot be written in a Modelfile line")
    lines = [
        "# Written by `slm export`. Create the model with: ollama create NAME -f <this file>",
        f"FROM {gguf_name}",
    ]
    if adapter_name:
        lines.append(f"ADAPTER {adapter_name}")
    lines += [f'TEMPLATE """{template}"""', f'SYSTEM """{system}"""']
    lines += [f'PARAMETER stop "{stop}"' for stop in stops]
    lines.append("PARAMETER temperature 0")
    return "\n".join(lines) + "\n"


def modelfile_path(gguf: Path) -> Path:
    """Where the Modelfile of ``gguf`` goes: beside it, named after it (one folder holds many exports)."""
    return gguf.with_name(f"{gguf.stem}.Modelfile")


def write_modelfile(gguf: Path, tokenizer: Any, base_gguf: Path | None = None) -> Path:
    """Write the Modelfile for ``gguf`` (a model, or with ``base_gguf`` a LoRA adapter for that base) from the
    chat template of ``tokenizer`` (the one the model was trained with). Written beside and renamed."""
    render = tokenizer_renderer(tokenizer)
    bos = getattr(tokenizer, "bos_token", None)
    template = ollama_template(render, bos)
    stops = stop_texts(render, getattr(tokenizer, "eos_token", None))
    if base_gguf is not None:
        text = modelfile_text(str(Path(base_gguf).resolve()), template, stops, adapter_name=f"./{gguf.name}")
    else:
        text = modelfile_text(f"./{gguf.name}", template, stops)
    path = modelfile_path(gguf)
    tmp = path.with_name(f".{path.name}.part")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
