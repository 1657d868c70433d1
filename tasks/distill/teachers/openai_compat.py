"""The OpenAI-compatible teacher (vLLM, DeepSeek, Ollama, llama.cpp server, OpenAI itself) via the real
``openai`` client, with the SDK's retries off so that ``tasks.distill.teachers.resilience`` retries and counts.

It asks for ``response_format=json_schema``; servers that refuse that (a 400 naming response_format or
json_schema) are asked once more with ``json_object`` and the schema spelled out in the system prompt, and
the teacher remembers the fallback for the rest of its life (one teacher, one endpoint).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import openai
from openai import OpenAI

from runtime.config import Settings
from tasks.distill.teachers.base import ChunkContext, TeacherOutput, Usage
from tasks.distill.teachers.llm import (
    PROMPT_VERSION,
    SYSTEM_PROMPT,
    build_user_prompt,
    parse_rows,
    response_json_schema,
)
from tasks.distill.teachers.resilience import (
    Failure,
    FailureKind,
    KeyPool,
    Resilient,
    TeacherCallError,
    never_sent,
)

NO_KEY = "not-needed"  # local servers take any key, but the client insists on one
_FORMAT_UNSUPPORTED = re.compile(r"response_format|json_schema", re.IGNORECASE)


class _FormatFallback(Exception):
    """The server refused json_schema; the next attempt goes out with json_object."""


class OpenAITeacher:
    """Distils a chunk at an OpenAI-compatible endpoint. ``generate`` never raises for model/HTTP trouble."""

    name = "openai"

    def __init__(self, settings: Settings, *, sleep: Callable[[float], None] = time.sleep) -> None:
        key = settings.openai_api_key.get_secret_value().strip() if settings.openai_api_key else ""
        self.model = settings.openai_model
        self.prompt_version = PROMPT_VERSION
        self._settings = settings
        self._client = OpenAI(
            base_url=settings.openai_base_url,
            api_key=key or NO_KEY,
            max_retries=0,
            timeout=settings.teacher_timeout_s,
        )
        # One key: a 429 backs off (the pool only rotates when it holds several keys).
        self._pool = KeyPool([key or NO_KEY], settings.key_cooldown_s, sleep=sleep)
        self._resilient = Resilient(
            self._pool,
            self._classify,
            max_attempts=settings.teacher_max_attempts,
            backoff_s=settings.teacher_backoff_s,
            secrets=[key] if key else [],
            label="openai",
            key_hint="OPENAI_API_KEY or openai_api_key",
            sleep=sleep,
        )
        self._schema = response_json_schema()
        self._json_object_only = False  # set once the endpoint refuses json_schema
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        mode = "json_object" if self._json_object_only else "json_schema"
        return f"OpenAITeacher(model={self.model!r}, base_url={self._settings.openai_base_url!r}, {mode})"

    @property
    def json_object_only(self) -> bool:
        """Whether this endpoint was found not to support ``json_schema`` response formats."""
        return self._json_object_only

    def generate(self, chunk: ChunkContext) -> TeacherOutput:
        """Rows for one chunk, with the raw text, usage of every call made, and an error when it failed."""
        usage = Usage()
        prompt = build_user_prompt(chunk, self._settings.per_fact)
        try:
            response = self._resilient.call(lambda _key: self._call(prompt), usage)
        except TeacherCallError as exc:
            return TeacherOutput(raw_text=exc.raw_text, usage=usage, error=exc.summary)
        self._add_tokens(usage, response)
        choice = response.choices[0] if response.choices else None
        text = (choice.message.content if choice is not None else None) or ""
        rows, problems, error = parse_rows(text)
        if not text.strip():
            reason = choice.finish_reason if choice is not None else "no choices"
            error = f"empty response (finish reason {reason})"
        return TeacherOutput(rows=rows, raw_text=text, usage=usage, error=error, problems=problems)

    # -- internals ---------------------------------------------------------------------------------------
    def _call(self, prompt: str) -> Any:
        json_object = self._json_object_only
        system = SYSTEM_PROMPT
        if json_object:
            # json_object only promises some JSON; the schema has to travel in the prompt instead.
            system += "\n输出必须符合以下 JSON Schema：\n" + json.dumps(self._schema, ensure_ascii=False)
            response_format: dict[str, Any] = {"type": "json_object"}
        else:
            response_format = {
                "type": "json_schema",
                "json_schema": {"name": "qa_rows", "schema": self._schema},
            }
        try:
            return self._client.chat.completions.create(
                model=self.model,
                messages=[{"role": "system", "content": system}, {"role": "user", "content": prompt}],
                response_format=response_format,  # type: ignore[arg-type]
                temperature=0.2,
            )
        except openai.BadRequestError as exc:
            if not json_object and _FORMAT_UNSUPPORTED.search(_error_text(exc)):
                with self._lock:
                    self._json_object_only = True
                raise _FormatFallback() from None
            raise

    def _add_tokens(self, usage: Usage, response: Any) -> None:
        if response.usage is None:
            return
        prompt_tokens = response.usage.prompt_tokens or 0
        completion_tokens = response.usage.completion_tokens or 0
        usage.bill(prompt_tokens, completion_tokens, self._settings)

    def _classify(self, exc: BaseException) -> Failure:
        if isinstance(exc, _FormatFallback):
            return Failure(FailureKind.IMMEDIATE, "HTTP 400: json_schema response_format not supported")
        sent = not never_sent(exc)
        if isinstance(exc, openai.APITimeoutError):  # before APIConnectionError, its parent
            return Failure(
                FailureKind.TRANSIENT, f"timeout ({self._settings.teacher_timeout_s:g} s)", sent=sent
            )
        if isinstance(exc, openai.APIConnectionError):
            return Failure(FailureKind.TRANSIENT, "connection error", sent=sent)
        if isinstance(exc, openai.APIStatusError):
            return _classify_status(exc)
        if isinstance(exc, openai.APIResponseValidationError):
            return Failure(FailureKind.TRANSIENT, "unreadable response")
        return Failure(FailureKind.FATAL, f"{type(exc).__name__}: {str(exc)[:200]}")


def _error_text(exc: openai.APIStatusError) -> str:
    body = exc.body
    return json.dumps(body, ensure_ascii=False) if isinstance(body, dict | list) else str(body or exc.message)


def _classify_status(exc: openai.APIStatusError) -> Failure:
    code = exc.status_code
    body = _error_text(exc)
    summary = f"HTTP {code}"
    if code == 429:
        return Failure(FailureKind.RATE_LIMITED, summary, body)
    if code == 408 or code >= 500:
        return Failure(FailureKind.TRANSIENT, summary, body)
    if code in (401, 403):
        # OpenAI echoes part of a wrong key in the message, so the message is not repeated here.
        return Failure(FailureKind.FATAL, summary, body, key_refused=True)
    message = exc.body.get("message") if isinstance(exc.body, dict) else None
    message = str(message or exc.message)
    return Failure(FailureKind.FATAL, f"{summary}: {message[:200]}", body)
