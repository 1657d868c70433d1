"""Running an exported GGUF with llama.cpp (llama-cpp-python): a generator for ``tasks.answer.answer`` and
for evaluation, greedy by default, in the chat template the GGUF carries.

GGUFs written by ``tasks.export`` carry the chat template the model was trained with. A GGUF without one (the
Gemma 3 270M base that the offline package ships has none) gets the same template training falls back to
(``tasks.models.ensure_chat_template``): Gemma's turn format when the vocabulary has its turn tokens.

An OpenAI-compatible HTTP server needs no wrapper here; llama-cpp-python ships one (its ``server`` extra:
``pip install 'llama-cpp-python[server]==0.3.36'``)::

    python -m llama_cpp.server --model exports/model-q4_k_m.gguf --host 127.0.0.1 --port 8080 --n_ctx 4096
    # a base GGUF plus a LoRA GGUF:            ... --model base.gguf --lora_path adapter-f16.gguf
    # a GGUF without a chat template (base):   ... --chat_format gemma

It reads the chat template from the GGUF metadata, like :class:`LlamaCppGenerator`.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tasks.answer import NumberConstraint
from tasks.prompt_format import chat_messages

_DIGIT = re.compile(r"[0-9０-９]")

DEFAULT_CTX = 4096


def default_threads() -> int:
    """Physical-ish core count available to this process (llama.cpp slows down with hyper-threads)."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, count)


class LlamaCppGenerator:
    """``generator(messages, max_tokens, grammar=None) -> str`` over a GGUF, plus ``chat``/``answer_batch``
    for the evaluation code (same interface as ``tasks.generate.TransformersGenerator``)."""

    def __init__(
        self,
        gguf_path: Path | str,
        n_ctx: int = DEFAULT_CTX,
        n_threads: int | None = None,
        lora_path: Path | str | None = None,
        *,
        chat_template: str | None = None,
        max_new_tokens: int = 160,
        temperature: float = 0.0,
        seed: int = 0,
        verbose: bool = False,
    ) -> None:
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.gguf_path = Path(gguf_path)
        if not self.gguf_path.is_file():
            raise FileNotFoundError(f"{self.gguf_path}: GGUF file not found")
        if lora_path is not None and not Path(lora_path).is_file():
            raise FileNotFoundError(f"{lora_path}: LoRA GGUF file not found")
        self.lora_path = Path(lora_path) if lora_path is not None else None
        self.llm = Llama(
            model_path=str(self.gguf_path),
            n_ctx=n_ctx,
            n_threads=n_threads or default_threads(),
            lora_path=str(lora_path) if lora_path is not None else None,
            seed=seed,
            verbose=verbose,
        )
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.seed = seed
        self._lock = threading.Lock()  # one llama context: calls must not interleave
        self._digits: tuple[list[int], list[str]] | None = None
        # Set by `slm chat`: the next call streams its text pieces here (only the next: a guard's retry
        # is not streamed, it replaces the draft as a whole).
        self.stream_to: Callable[[str], None] | None = None

        template = (
            chat_template or self.llm.metadata.get("tokenizer.chat_template") or self._fallback_template()
        )
        self.chat_template = template
        eos_id = self.llm.token_eos()
        bos_id = self.llm.token_bos()
        stop_ids = [eos_id]
        end_of_turn = self._single_token("<end_of_turn>")
        if end_of_turn is not None:
            stop_ids.append(end_of_turn)  # Gemma ends a turn with <end_of_turn>, not <eos>
        self._stop = ["<end_of_turn>"] if end_of_turn is not None else []
        self.llm.chat_handler = Jinja2ChatFormatter(
            template=template,
            eos_token=self.llm._model.token_get_text(eos_id) if eos_id >= 0 else "",
            bos_token=self.llm._model.token_get_text(bos_id) if bos_id >= 0 else "",
            stop_token_ids=stop_ids,
        ).to_chat_handler()

    def _single_token(self, text: str) -> int | None:
        ids = self.llm.tokenize(text.encode(), add_bos=False, special=True)
        return ids[0] if len(ids) == 1 else None

    def _fallback_template(self) -> str:
        from tasks.models import GEMMA_CHAT_TEMPLATE, SIMPLE_CHAT_TEMPLATE

        if (
            self._single_token("<start_of_turn>") is not None
            and self._single_token("<end_of_turn>") is not None
        ):
            return GEMMA_CHAT_TEMPLATE
        return SIMPLE_CHAT_TEMPLATE

    def __call__(
        self,
        messages: list[dict[str, str]],
        max_tokens: int | None = None,
        grammar: str | NumberConstraint | None = None,
    ) -> str:
        """Greedy chat completion. ``grammar``: a :class:`NumberConstraint` (applied as a logits mask) or GBNF
        text (llama.cpp's grammar sampler: correct, but seconds per token over a 262k vocabulary)."""
        kwargs: dict[str, Any] = {
            "messages": messages,
            "max_tokens": max_tokens or self.max_new_tokens,
            "temperature": self.temperature,  # 0: greedy
            "repeat_penalty": 1.0,
            "seed": self.seed,
        }
        if self._stop:
            kwargs["stop"] = self._stop
        if isinstance(grammar, NumberConstraint):
            kwargs["logits_processor"] = self._number_mask(grammar)
        elif grammar:
            from llama_cpp import LlamaGrammar

            kwargs["grammar"] = LlamaGrammar.from_string(grammar, verbose=False)
        sink, self.stream_to = self.stream_to, None
        with self._lock:
            if sink is None:
                out = self.llm.create_chat_completion(**kwargs)
                return (out["choices"][0]["message"]["content"] or "").strip()
            pieces = []
            for chunk in self.llm.create_chat_completion(**kwargs, stream=True):
                piece = chunk["choices"][0]["delta"].get("content") or ""
                if piece:
                    pieces.append(piece)
                    sink(piece)
        return "".join(pieces).strip()

    def _digit_tokens(self) -> tuple[list[int], list[str]]:
        """Tokens that can write or extend a number (a digit, or a leading . or ,); computed once (~2 s)."""
        if self._digits is None:
            ids, pieces = [], []
            for token in range(self.llm.n_vocab()):
                piece = self.llm.detokenize([token]).decode("utf-8", errors="ignore")
                if _DIGIT.search(piece) or piece.startswith((".", ",")):
                    ids.append(token)
                    pieces.append(piece)
            self._digits = (ids, pieces)
        return self._digits

    def _number_mask(self, constraint: NumberConstraint) -> Any:
        """A llama-cpp-python logits processor enforcing ``constraint`` on the generated text."""
        from llama_cpp import LogitsProcessorList

        ids, pieces = self._digit_tokens()
        others = np.ones(self.llm.n_vocab(), dtype=bool)
        others[ids] = False
        prompt_len: list[int] = []

        def mask(input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
            if not prompt_len:
                prompt_len.append(len(input_ids))  # the first call sees the prompt only
            text = self.llm.detokenize(list(input_ids[prompt_len[0] :])).decode("utf-8", errors="ignore")
            open_run = constraint.open_run(text)
            for token, piece in zip(ids, pieces, strict=True):
                if not constraint.accepts(open_run, piece):
                    scores[token] = -np.inf
            if not constraint.closes(open_run):
                scores[: len(others)][others] = -np.inf  # an unfinished number must go on
            return scores

        return LogitsProcessorList([mask])

    def chat(self, messages_batch: Sequence[list[dict[str, str]]]) -> list[str]:
        return [self(m) for m in messages_batch]

    def answer_batch(self, questions: list[str]) -> list[str]:
        """Closed-book answers in the training chat format (for ``tasks.evaluate.evaluate``)."""
        return self.chat([chat_messages(q) for q in questions])

    def describe(self) -> dict[str, Any]:
        return {"gguf": str(self.gguf_path), "lora": str(self.lora_path) if self.lora_path else None}

    def close(self) -> None:
        self.llm.close()


def server_command(
    gguf_path: Path | str,
    port: int = 8080,
    lora_path: Path | str | None = None,
    n_ctx: int = DEFAULT_CTX,
    host: str = "127.0.0.1",
) -> list[str]:
    """The command line of llama-cpp-python's OpenAI-compatible server for this GGUF (needs its extra).
    ``host`` must already have passed ``tasks.netbind.bind_host`` (loopback unless allowed)."""
    command = [
        "python",
        "-m",
        "llama_cpp.server",
        "--model",
        str(gguf_path),
        "--host",
        host,
        "--port",
        str(port),
        "--n_ctx",
        str(n_ctx),
    ]
    if lora_path is not None:
        command += ["--lora_path", str(lora_path)]
    return command
