"""The Gemini teacher: the real google-genai client, one client per API key, keys rotated on rate limits.

The SDK's own retries are switched off (``HttpRetryOptions(attempts=1)``) so that every HTTP call goes
through ``tasks.distill.teachers.resilience`` and is counted; automatic continuation and function calling are off
for the same reason (they would send follow-up requests we could not count).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

import httpx
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from runtime.config import SECRETS_FILE_NAME, Settings
from tasks.distill.teachers.base import ChunkContext, TeacherConfigError, TeacherOutput, Usage
from tasks.distill.teachers.llm import (
    PROMPT_VERSION,
    SYSTEM_PROMPT,
    ResponseModel,
    build_user_prompt,
    parse_rows,
)
from tasks.distill.teachers.resilience import (
    Failure,
    FailureKind,
    KeyPool,
    Resilient,
    TeacherCallError,
    never_sent,
)

try:  # google-genai 3.x sends through httpx2 when it is installed, else httpx; either may raise
    import httpx2

    _TIMEOUTS: tuple[type[BaseException], ...] = (httpx.TimeoutException, httpx2.TimeoutException)
    _TRANSPORT: tuple[type[BaseException], ...] = (httpx.TransportError, httpx2.TransportError)
except ImportError:  # pragma: no cover - depends on the install
    _TIMEOUTS = (httpx.TimeoutException,)
    _TRANSPORT = (httpx.TransportError,)


def gemini_keys(settings: Settings) -> list[str]:
    """The configured Gemini keys (comma-separated in one secret), blanks dropped."""
    raw = settings.gemini_api_keys.get_secret_value() if settings.gemini_api_keys else ""
    return [key.strip() for key in raw.split(",") if key.strip()]


class GeminiTeacher:
    """Distils a chunk with Gemini. ``generate`` never raises for model or HTTP trouble: it reports it."""

    name = "gemini"

    def __init__(self, settings: Settings, *, sleep: Callable[[float], None] = time.sleep) -> None:
        keys = gemini_keys(settings)
        if not keys:
            raise TeacherConfigError(
                "the gemini teacher needs an API key: set GEMINI_API_KEYS or gemini_api_keys in "
                f"{settings.workspace / SECRETS_FILE_NAME}"
            )
        self.model = settings.gemini_model
        self.prompt_version = PROMPT_VERSION
        self._settings = settings
        self._pool = KeyPool(keys, settings.key_cooldown_s, sleep=sleep)
        self._resilient = Resilient(
            self._pool,
            self._classify,
            max_attempts=settings.teacher_max_attempts,
            backoff_s=settings.teacher_backoff_s,
            secrets=keys,
            label="gemini",
            key_hint="GEMINI_API_KEYS",
            sleep=sleep,
        )
        self._clients: dict[str, genai.Client] = {}
        self._clients_lock = threading.Lock()
        self._config = types.GenerateContentConfig(
            system_instruction=SYSTEM_PROMPT,
            response_mime_type="application/json",
            response_schema=ResponseModel,  # the SDK turns the pydantic model into Gemini's schema
            temperature=0.2,
            automatic_continuation=False,
            # No tools are given, but saying so keeps generate_content to exactly one request per call.
            automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
        )

    def __repr__(self) -> str:
        return f"GeminiTeacher(model={self.model!r}, keys={len(self._pool)})"

    def generate(self, chunk: ChunkContext) -> TeacherOutput:
        """Rows for one chunk, with the raw text, usage of every call made, and an error when it failed."""
        usage = Usage()
        prompt = build_user_prompt(chunk, self._settings.per_fact)
        try:
            response = self._resilient.call(lambda key: self._call(key, prompt), usage)
        except TeacherCallError as exc:
            return TeacherOutput(raw_text=exc.raw_text, usage=usage, error=exc.summary)
        self._add_tokens(usage, response)
        text = response.text or ""
        rows, problems, error = parse_rows(text)
        if not text.strip():
            error = f"empty response ({_why_empty(response)})"
        return TeacherOutput(rows=rows, raw_text=text, usage=usage, error=error, problems=problems)

    # -- internals ---------------------------------------------------------------------------------------
    def _client(self, key: str) -> genai.Client:
        with self._clients_lock:
            client = self._clients.get(key)
            if client is None:
                client = genai.Client(
                    api_key=key,
                    vertexai=False,
                    http_options=types.HttpOptions(
                        base_url=self._settings.gemini_base_url,
                        # milliseconds; at least 1, since 0 would mean no timeout at all
                        timeout=max(1, int(self._settings.teacher_timeout_s * 1000)),
                        retry_options=types.HttpRetryOptions(attempts=1),  # we retry, and count, ourselves
                    ),
                )
                self._clients[key] = client
            return client

    def _call(self, key: str, prompt: str) -> types.GenerateContentResponse:
        client = self._client(key)
        return client.models.generate_content(model=self.model, contents=prompt, config=self._config)

    def _add_tokens(self, usage: Usage, response: types.GenerateContentResponse) -> None:
        meta = response.usage_metadata
        if meta is None:
            return
        prompt_tokens = meta.prompt_token_count or 0
        # Thinking tokens are billed as output, so they count as completion tokens for the cost estimate.
        completion_tokens = (meta.candidates_token_count or 0) + (meta.thoughts_token_count or 0)
        usage.bill(prompt_tokens, completion_tokens, self._settings)

    def _classify(self, exc: BaseException) -> Failure:
        if isinstance(exc, genai_errors.APIError):
            return _classify_api_error(exc)
        sent = not never_sent(exc)
        if isinstance(exc, _TIMEOUTS):
            return Failure(
                FailureKind.TRANSIENT, f"timeout ({self._settings.teacher_timeout_s:g} s)", sent=sent
            )
        if isinstance(exc, _TRANSPORT):
            return Failure(FailureKind.TRANSIENT, f"connection error ({type(exc).__name__})", sent=sent)
        if isinstance(exc, genai_errors.UnknownApiResponseError):
            return Failure(FailureKind.TRANSIENT, "unreadable response (not JSON)")
        return Failure(FailureKind.FATAL, f"{type(exc).__name__}: {str(exc)[:200]}")


def _classify_api_error(exc: genai_errors.APIError) -> Failure:
    code = int(exc.code or 0)
    status = exc.status or ""
    message = str(exc.message or "")
    body = json.dumps(exc.details, ensure_ascii=False) if exc.details is not None else None
    summary = f"HTTP {code}" + (f" {status}" if status else "")
    if code == 429 or status == "RESOURCE_EXHAUSTED":
        return Failure(FailureKind.RATE_LIMITED, summary, body)
    if code == 408 or code >= 500:
        return Failure(FailureKind.TRANSIENT, summary, body)
    # Google answers a wrong key with 400 INVALID_ARGUMENT / API_KEY_INVALID, not 401.
    if code in (401, 403) or "API_KEY_INVALID" in (body or "") or "API key not valid" in message:
        return Failure(FailureKind.FATAL, summary, body, key_refused=True)
    return Failure(FailureKind.FATAL, f"{summary}: {message[:200]}" if message else summary, body)


def _why_empty(response: types.GenerateContentResponse) -> str:
    feedback = response.prompt_feedback
    if feedback is not None and feedback.block_reason is not None:
        return f"prompt blocked: {feedback.block_reason}"
    if response.candidates:
        return f"finish reason {response.candidates[0].finish_reason}"
    return "no candidates"
