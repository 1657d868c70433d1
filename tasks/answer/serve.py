"""Running an exported GGUF with llama.cpp (llama-cpp-python): a generator for ``tasks.answer.answer.answer`` and
for evaluation, greedy by default, in the chat template the GGUF carries.

GGUFs written by ``tasks.export.export`` carry the chat template the model was trained with. A GGUF without one (the
Gemma 3 270M base that the offline package ships has none) gets the same template training falls back to
(``tasks.models.base_models.ensure_chat_template``): Gemma's turn format when the vocabulary has its turn tokens.

An OpenAI-compatible HTTP server needs no wrapper here; llama-cpp-python ships one (its ``server`` extra:
``pip install 'llama-cpp-python[server]==0.3.36'``)::

    python -m llama_cpp.server --model exports/model-q4_k_m.gguf --host 127.0.0.1 --port 8080 --n_ctx 4096
    # a base GGUF plus a LoRA GGUF:            ... --model base.gguf --lora_path adapter-f16.gguf
    # a GGUF without a chat template (base):   ... --chat_format gemma

It reads the chat template from the GGUF metadata, like :class:`LlamaCppGenerator`.

Answers end where training taught them to: at the end-of-turn token the chat template closes an assistant turn
with (derived by rendering the template, ``tasks.answer.stop.turn_end_text``), at eos, and at every token llama.cpp
counts as end of generation (exports name the end-of-turn token ``tokenizer.ggml.eot_token_id``). The
answer's own recent tokens carry a repeat penalty (``answer_repeat_penalty``), and an answer caught in a loop
(``tasks.answer.stop.repeated_span``) stops there, its ``finish_reason`` "repetition". llama.cpp's C-level log lines
never reach the terminal: they go to a short in-memory tail (:func:`llama_log_tail`), shown only when a model
fails to load.
"""

from __future__ import annotations

import collections
import ctypes
import os
import re
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tasks.answer.answer import NumberConstraint
from tasks.answer.prompts import chat_messages
from tasks.answer.stop import default_repeat_penalty, repeated_span, turn_end_text
from tasks.ingest.numbers import CN_NUMERALS

_NUMERAL = re.compile(f"[0-9０-９{CN_NUMERALS}]")

DEFAULT_CTX = 4096

_LLAMA_LOG: collections.deque[str] = collections.deque(maxlen=200)
_llama_log_callback: Any = None  # the ctypes callback must outlive every call into llama.cpp


def quiet_llama_logs(quiet: bool = True) -> None:
    """Keep llama.cpp's and ggml's log lines (model loading, context set-up, warnings) out of stdout and
    stderr: they go to a short in-memory tail instead (:func:`llama_log_tail`). ``quiet=False`` restores
    llama-cpp-python's own logger (which prints what its verbosity allows)."""
    global _llama_log_callback
    import llama_cpp

    if not quiet:
        from llama_cpp import _logger

        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
        return
    if _llama_log_callback is None:

        @llama_cpp.llama_log_callback
        def keep(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
            _LLAMA_LOG.append(text.decode("utf-8", errors="replace"))

        _llama_log_callback = keep
    llama_cpp.llama_log_set(_llama_log_callback, ctypes.c_void_p(0))


def llama_log_tail(lines: int = 10) -> str:
    """The last ``lines`` lines llama.cpp logged while :func:`quiet_llama_logs` held its log."""
    text = "".join(_LLAMA_LOG)
    return "\n".join(text.splitlines()[-lines:])


def default_threads() -> int:
    """Physical-ish core count available to this process (llama.cpp slows down with hyper-threads)."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, count)


class LlamaCppGenerator:
    """``generator(messages, max_tokens, grammar=None) -> str`` over a GGUF, plus ``chat``/``answer_batch``
    for the evaluation code (same interface as ``tasks.answer.generate.TransformersGenerator``)."""

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
        repeat_penalty: float | None = None,
        stop_on_repeats: bool = True,
    ) -> None:
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.gguf_path = Path(gguf_path)
        if not self.gguf_path.is_file():
            raise FileNotFoundError(f"{self.gguf_path}: GGUF file not found")
        if lora_path is not None and not Path(lora_path).is_file():
            raise FileNotFoundError(f"{lora_path}: LoRA GGUF file not found")
        self.lora_path = Path(lora_path) if lora_path is not None else None
        quiet_llama_logs(not verbose)
        _LLAMA_LOG.clear()
        try:
            self.llm = Llama(
                model_path=str(self.gguf_path),
                n_ctx=n_ctx,
                n_threads=n_threads or default_threads(),
                lora_path=str(lora_path) if lora_path is not None else None,
                seed=seed,
                verbose=verbose,
            )
        except ValueError as exc:  # llama-cpp-python says only "Failed to load model"; llama.cpp said why
            tail = llama_log_tail()
            raise ValueError(f"{exc}: {tail}" if tail else str(exc)) from exc
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.seed = seed
        self.repeat_penalty = default_repeat_penalty() if repeat_penalty is None else float(repeat_penalty)
        self.stop_on_repeats = stop_on_repeats
        # How the last call ended: "stop" (end of turn, eos), "length", or "repetition" (a loop was cut).
        self.finish_reason: str | None = None
        self._lock = threading.Lock()  # one llama context: calls must not interleave
        self._numerals: tuple[list[int], list[str]] | None = None
        # Set by `slm chat`: the next call streams its text pieces here (only the next: a guard's retry
        # is not streamed, it replaces the draft as a whole).
        self.stream_to: Callable[[str], None] | None = None

        template = (
            chat_template or self.llm.metadata.get("tokenizer.chat_template") or self._fallback_template()
        )
        self.chat_template = template
        eos_id = self.llm.token_eos()
        bos_id = self.llm.token_bos()
        eos_text = self.llm._model.token_get_text(eos_id) if eos_id >= 0 else ""
        bos_text = self.llm._model.token_get_text(bos_id) if bos_id >= 0 else ""
        # The template's own end of turn (Gemma: <end_of_turn>, ChatML: <|im_end|>), rendered exactly as the
        # prompts are; then the GGUF's eot and eos.
        closing = turn_end_text(
            lambda m: (
                Jinja2ChatFormatter(
                    template=template, eos_token=eos_text, bos_token=bos_text, add_generation_prompt=False
                )(messages=m).prompt
            )
        )
        end_of_turn = self._single_token(closing) if closing else None
        self.end_of_turn = (closing, end_of_turn) if end_of_turn is not None else None
        stop_ids = [t for t in (end_of_turn, self._vocab_eot(), eos_id) if t is not None and t >= 0]
        self.stop_ids = list(dict.fromkeys(stop_ids))
        self._stop = [closing] if end_of_turn is not None else []
        self.llm.chat_handler = Jinja2ChatFormatter(
            template=template,
            eos_token=eos_text,
            bos_token=bos_text,
            stop_token_ids=self.stop_ids,
        ).to_chat_handler()

    def _vocab_eot(self) -> int | None:
        """The GGUF's end-of-turn token (``tokenizer.ggml.eot_token_id``, or the one llama.cpp recognises by
        its text), or None."""
        import llama_cpp

        try:
            token = int(llama_cpp.llama_vocab_eot(self.llm._model.vocab))
        except (AttributeError, TypeError):
            return None
        return token if token >= 0 else None

    def _single_token(self, text: str) -> int | None:
        ids = self.llm.tokenize(text.encode(), add_bos=False, special=True)
        return ids[0] if len(ids) == 1 else None

    def _fallback_template(self) -> str:
        from tasks.models.base_models import GEMMA_CHAT_TEMPLATE, SIMPLE_CHAT_TEMPLATE

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
            "repeat_penalty": self.repeat_penalty,  # on the answer's own last 64 tokens, not the prompt
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
        pieces: list[str] = []
        finish: str | None = None
        with self._lock:
            # Streamed internally even with no sink: a loop is cut as soon as it shows.
            chunks = self.llm.create_chat_completion(**kwargs, stream=True)
            try:
                for chunk in chunks:
                    choice = chunk["choices"][0]
                    finish = choice.get("finish_reason") or finish
                    piece = choice["delta"].get("content") or ""
                    if not piece:
                        continue
                    pieces.append(piece)
                    if sink is not None:
                        sink(piece)
                    if self.stop_on_repeats and repeated_span("".join(pieces)) is not None:
                        finish = "repetition"
                        break
            finally:
                chunks.close()
            self.finish_reason = finish
        return "".join(pieces).strip()

    def _numeral_tokens(self) -> tuple[list[int], list[str]]:
        """Tokens that can write or extend a number (a digit or a Chinese numeral, or a leading . or ,);
        computed once (~2 s)."""
        if self._numerals is None:
            ids, pieces = [], []
            for token in range(self.llm.n_vocab()):
                piece = self.llm.detokenize([token]).decode("utf-8", errors="ignore")
                if _NUMERAL.search(piece) or piece.startswith((".", ",")):
                    ids.append(token)
                    pieces.append(piece)
            self._numerals = (ids, pieces)
        return self._numerals

    def _number_mask(self, constraint: NumberConstraint) -> Any:
        """A llama-cpp-python logits processor enforcing ``constraint`` on the generated text."""
        from llama_cpp import LogitsProcessorList

        ids, pieces = self._numeral_tokens()
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
        """Closed-book answers in the training chat format (for ``tasks.evaluate.evaluate.evaluate``)."""
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
    ``host`` must already have passed ``runtime.netbind.bind_host`` (loopback unless allowed)."""
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


def answering_generator(gguf_path: Path | str, settings: Any) -> LlamaCppGenerator:
    """The generator `slm ask`, `slm chat` and evaluation answer with: one place for the settings they share
    (``answer_max_tokens``, ``answer_repeat_penalty``), so evaluation decodes exactly as users are answered."""
    return LlamaCppGenerator(
        gguf_path, max_new_tokens=settings.answer_max_tokens, repeat_penalty=settings.answer_repeat_penalty
    )
