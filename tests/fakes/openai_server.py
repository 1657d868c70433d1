"""A fake OpenAI-compatible endpoint (``POST /v1/chat/completions``) for the real ``openai`` client.

The key comes as ``Authorization: Bearer <key>``. Errors use OpenAI's shape
``{"error": {"message", "type", "param", "code"}}``; a refused key is echoed masked, as OpenAI does, so that
tests can check the teacher does not pass it on. ``json_schema_supported=False`` makes the server refuse
``response_format={"type": "json_schema"}`` with a 400, as some llama.cpp/vLLM builds do.
See ``tests.fakes`` for the schedule.
"""

from __future__ import annotations

import time
from typing import Any

from tests import fakes
from tests.fakes import FakeServer, JsonHandler, Reply, Schedule, model_answer

UNSUPPORTED_FORMAT = "unsupported_format"  # recorded outcome of a refused json_schema request
UNSUPPORTED_FORMAT_MESSAGE = "response_format type 'json_schema' is not supported by this server"

# outcome -> (HTTP status, error type, code, message)
ERRORS: dict[str, tuple[int, str, str | None, str]] = {
    fakes.RATE_LIMIT: (
        429,
        "requests",
        "rate_limit_exceeded",
        "Rate limit reached for requests. Try again soon.",
    ),
    fakes.SERVER_ERROR: (500, "server_error", None, "The server had an error while processing your request."),
    fakes.UNAVAILABLE: (
        503,
        "server_error",
        None,
        "The engine is currently overloaded, please try again later.",
    ),
    fakes.FORBIDDEN: (403, "invalid_request_error", "forbidden", "You are not allowed to use this model."),
    fakes.BAD_REQUEST: (400, "invalid_request_error", None, "Invalid request."),
}


def error_body(message: str, type_: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def masked(key: str | None) -> str:
    """A key as OpenAI echoes it in a 401: a few characters at each end, stars between."""
    key = key or ""
    return key[:3] + "*" * max(0, len(key) - 7) + key[-4:] if len(key) > 8 else "****"


def user_prompt(body: dict[str, Any]) -> str:
    """The text of the request's last user message."""
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):  # content parts
                return "\n".join(p.get("text", "") for p in content if isinstance(p, dict))
            return str(content or "")
    return ""


class _OpenAIHandler(JsonHandler):
    fake: FakeOpenAIServer  # type: ignore[assignment]

    def do_POST(self) -> None:
        if self.path.split("?", 1)[0].rstrip("/") != "/v1/chat/completions":
            self.send_json(
                404,
                error_body(f"Unknown request URL: POST {self.path}", "invalid_request_error", "unknown_url"),
            )
            return
        auth = self.headers.get("Authorization") or ""
        key = auth[7:] if auth.startswith("Bearer ") else None
        body = self.read_json()
        fmt = (body.get("response_format") or {}).get("type")
        if fmt == "json_schema" and not self.fake.json_schema_supported:
            self.fake.begin_call(key, body, forced=Reply(outcome=UNSUPPORTED_FORMAT))
            self.send_json(
                400, error_body(UNSUPPORTED_FORMAT_MESSAGE, "invalid_request_error", param="response_format")
            )
            return
        reply = self.scheduled_reply(key, body)
        if reply is not None:
            self.answer(reply, key, body)

    def answer(self, reply: Reply, key: str | None, body: dict[str, Any]) -> None:
        if reply.status is not None:
            type_ = "server_error" if reply.status >= 500 else "invalid_request_error"
            self.send_json(reply.status, error_body(reply.message or f"HTTP {reply.status}", type_))
            return
        if reply.outcome in (fakes.UNAUTHORIZED, fakes.BAD_KEY):
            self.send_json(
                401,
                error_body(
                    f"Incorrect API key provided: {masked(key)}. You can find your API key in your settings.",
                    "invalid_request_error",
                    "invalid_api_key",
                ),
            )
            return
        if reply.outcome in ERRORS:
            status, type_, code, message = ERRORS[reply.outcome]
            self.send_json(
                status, error_body(message, type_, code), {"retry-after": "0"} if status == 429 else None
            )
            return
        text, prompt_tokens, text_tokens = model_answer(reply, user_prompt(body))
        self.send_json(
            200,
            {
                "id": f"chatcmpl-fake-{len(self.fake.calls)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", "fake"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "length" if reply.outcome == fakes.TRUNCATED else "stop",
                        "logprobs": None,
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": text_tokens,
                    "total_tokens": prompt_tokens + text_tokens,
                },
            },
        )


class FakeOpenAIServer(FakeServer):
    """``FakeOpenAIServer(schedule=None, *, latency_s=0.0, hang_s=30.0, keys=None,
    json_schema_supported=True)``; ``server.base_url`` ends in ``/v1``, ready for ``OpenAI(base_url=...)``
    (``Settings.openai_base_url``)."""

    handler_class = _OpenAIHandler

    def __init__(
        self, schedule: Schedule = None, *, json_schema_supported: bool = True, **timing: Any
    ) -> None:
        super().__init__(schedule, **timing)  # latency_s, hang_s, keys: as FakeServer takes them
        self.json_schema_supported = json_schema_supported

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"
