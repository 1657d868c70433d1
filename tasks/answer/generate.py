"""Generating answers with a transformers model (a base, or a base with LoRA adapters): batched, greedy,
in the chat format training uses. Exported GGUF models generate through tasks/answer/serve.py instead.

Generation stops at the chat template's end-of-turn token (``tasks.answer.stop.end_of_turn_token``: what training
taught the model to end an answer with) as well as at eos; the answer's own recent tokens carry llama.cpp's
repeat penalty (the prompt is not penalised: a grounded answer copies the rules), and a row that falls into
a loop (``tasks.answer.stop.repeated_span``) stops there, as in ``tasks.answer.serve.LlamaCppGenerator``."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tasks.answer.prompts import chat_messages
from tasks.answer.stop import default_repeat_penalty, repeated_span, stop_token_ids

REPEAT_LAST_N = 64  # llama.cpp's default window (llama-cpp-python's last_n_tokens_size)


class TransformersGenerator:
    """``answer_batch(questions) -> answers`` for evaluation; ``chat(messages_batch)`` for anything else.

    Several adapters share one loaded base (``adapters``: label -> folder); ``for_model(label)`` answers with
    one of them, ``for_model("base")`` with the adapters switched off. The base is loaded once."""

    def __init__(
        self,
        base_spec: str,
        adapter_dir: Path | None = None,
        cache_dir: Path | None = None,
        max_new_tokens: int = 96,
        adapters: dict[str, Path] | None = None,
        *,
        repeat_penalty: float | None = None,
        stop_on_repeats: bool = True,
    ) -> None:
        from tasks.models.base_models import load_base

        self.model, self.tokenizer, self.identity = load_base(base_spec, cache_dir)
        named = dict(adapters or {})
        if adapter_dir is not None:
            named.setdefault("default", adapter_dir)
        self.adapters = list(named)
        if named:
            from peft import PeftModel

            (first_name, first_dir), *rest = named.items()
            self.model = PeftModel.from_pretrained(self.model, str(first_dir), adapter_name=first_name)
            for name, folder in rest:
                self.model.load_adapter(str(folder), adapter_name=name)
            self.model.set_adapter(first_name)
        self.model.eval()
        self.max_new_tokens = max_new_tokens
        self.repeat_penalty = default_repeat_penalty() if repeat_penalty is None else float(repeat_penalty)
        self.stop_on_repeats = stop_on_repeats
        self.tokenizer.padding_side = "left"  # batched generation continues from the right edge
        # End of turn first, then eos (and the generation config's eos ids).
        self.stop_ids = stop_token_ids(self.tokenizer, getattr(self.model, "generation_config", None))

    def generate_ids(self, messages_batch: list[list[dict[str, str]]]) -> list[list[int]]:
        """The new token ids of each answer, up to and including the token it stopped at (no padding)."""
        import torch
        from transformers import LogitsProcessorList, StoppingCriteriaList

        prompts = [
            self.tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True)
            for m in messages_batch
        ]
        encoded = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        width = encoded["input_ids"].shape[1]
        processors = LogitsProcessorList()
        if self.repeat_penalty != 1.0:
            processors.append(_AnswerRepeatPenalty(width, self.repeat_penalty))
        criteria = StoppingCriteriaList()
        if self.stop_on_repeats:
            criteria.append(_RepeatedSpanStop(self.tokenizer, width))
        with torch.inference_mode():
            output = self.model.generate(
                **encoded,
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                eos_token_id=self.stop_ids or None,
                pad_token_id=self.tokenizer.pad_token_id,
                logits_processor=processors,
                stopping_criteria=criteria,
            )
        pad = self.tokenizer.pad_token_id
        answers = []
        for row in output[:, width:].tolist():
            end = next((i for i, t in enumerate(row) if t in self.stop_ids), None)
            if end is not None:
                row = row[: end + 1]  # what follows a stop token is padding
            else:
                while row and row[-1] == pad:  # a row cut for repetition while others went on
                    row.pop()
            answers.append(row)
        return answers

    def chat(self, messages_batch: list[list[dict[str, str]]]) -> list[str]:
        rows = self.generate_ids(messages_batch)
        return [t.strip() for t in self.tokenizer.batch_decode(rows, skip_special_tokens=True)]

    def answer_batch(self, questions: list[str]) -> list[str]:
        return self.chat([chat_messages(q) for q in questions])

    def _using(self, label: str | None) -> contextlib.AbstractContextManager[Any]:
        """Select adapter ``label`` (``"base"``: adapters off; None: as it is) for the calls in the block."""
        if label == "base" and self.adapters:
            return self.model.disable_adapter()
        if label is not None and self.adapters:
            self.model.set_adapter(label)
        return contextlib.nullcontext()

    def for_model(self, label: str) -> Callable[[list[str]], list[str]]:
        """An ``answer_batch`` for one adapter, or for the untuned base (``"base"``)."""

        def answer_batch(questions: list[str]) -> list[str]:
            with self._using(label):
                return self.answer_batch(questions)

        return answer_batch

    def messages_call(self, label: str | None = None) -> Callable[..., str]:
        """``generate(messages, max_tokens=None, grammar=None) -> text``, the call ``tasks.answer.answer`` expects,
        for one adapter (or the base). Transformers cannot apply a grammar; the guard's check still runs."""

        def generate(
            messages: list[dict[str, str]], max_tokens: int | None = None, grammar: Any = None
        ) -> str:
            del grammar
            previous = self.max_new_tokens
            self.max_new_tokens = max_tokens or previous
            try:
                with self._using(label):
                    return self.chat([messages])[0]
            finally:
                self.max_new_tokens = previous

        return generate

    def describe(self) -> dict[str, Any]:
        return self.identity.to_dict()


class _AnswerRepeatPenalty:
    """llama.cpp's repeat penalty (a transformers logits processor): each token among the answer's last
    ``last_n`` tokens has its logit divided by ``penalty`` when positive, multiplied when negative. Unlike
    transformers' ``repetition_penalty``, the prompt is left alone: a grounded answer quotes the rules it
    was given, and llama.cpp penalises only generated tokens too, so both backends answer alike."""

    def __init__(self, prompt_width: int, penalty: float, last_n: int = REPEAT_LAST_N) -> None:
        self.prompt_width = prompt_width
        self.penalty = penalty
        self.last_n = last_n

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        recent = input_ids[:, self.prompt_width :][:, -self.last_n :]
        if recent.shape[1] == 0:
            return scores
        picked = torch.gather(scores, 1, recent)
        picked = torch.where(picked < 0, picked * self.penalty, picked / self.penalty)
        return scores.scatter(1, recent, picked)


class _RepeatedSpanStop:
    """A transformers stopping criterion: a row stops once its answer repeats a span (``repeated_span``)."""

    def __init__(self, tokenizer: Any, prompt_width: int) -> None:
        self.tokenizer = tokenizer
        self.prompt_width = prompt_width

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_width :], skip_special_tokens=True)
        return torch.tensor([repeated_span(t) is not None for t in texts], device=input_ids.device)
