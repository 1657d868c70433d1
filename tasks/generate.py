"""Generating answers with a transformers model (a base, or a base with LoRA adapters): batched, greedy,
in the chat format training uses. Exported GGUF models generate through tasks/serve.py instead."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tasks.prompt_format import chat_messages


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
    ) -> None:
        from tasks.models import load_base

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
        self.tokenizer.padding_side = "left"  # batched generation continues from the right edge

    def chat(self, messages_batch: list[list[dict[str, str]]]) -> list[str]:
        import torch

        prompts = [
            self.tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True)
            for m in messages_batch
        ]
        encoded = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            output = self.model.generate(
                **encoded,
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        new_tokens = output[:, encoded["input_ids"].shape[1] :]
        return [t.strip() for t in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]

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
        """``generate(messages, max_tokens=None, grammar=None) -> text``, the call ``tasks.answer`` expects,
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
