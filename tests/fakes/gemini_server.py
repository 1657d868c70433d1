"""A fake Gemini API (``POST /{version}/models/{model}:generateContent``) for the real google-genai client.

The client sends the key in the ``x-goog-api-key`` header and, since google-genai 3.x, uses API version
``v1`` by default (``v1beta`` when asked); any version is accepted. Errors use Google's shape
``{"error": {"code", "message", "status"}}``. See ``tests.fakes`` for the schedule.
"""

from __future__ import annotations

import re
from typing import Any

from tests import fakes
from tests.fakes import FakeServer, JsonHandler, Reply, model_answer

_PATH = re.compile(r"^/(?P<version>v1\w*)/models/(?P<model>[^:/]+):generateContent$")

# outcome -> (HTTP status, Google status, message), as the real API words them.
ERRORS: dict[str, tuple[int, str, str]] = {
    fakes.RATE_LIMIT: (429, "RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota)."),
    fakes.SERVER_ERROR: (
        500,
        "INTERNAL",
        "An internal error has occurred. Please retry or file a bug report.",
    ),
    fakes.UNAVAILABLE: (503, "UNAVAILABLE", "The model is overloaded. Please try again later."),
    fakes.UNAUTHORIZED: (401, "UNAUTHENTICATED", "Request had invalid authentication credentials."),
    fakes.FORBIDDEN: (
        403,
        "PERMISSION_DENIED",
        "Your API key was reported as leaked. Please use another API key.",
    ),
    fakes.BAD_REQUEST: (400, "INVALID_ARGUMENT", "Request contains an invalid argument."),
    fakes.BAD_KEY: (400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key."),
}
# HTTP status -> Google status, for custom errors (Reply.status).
_STATUS_NAMES = {status: name for status, name, _ in ERRORS.values()} | {
    404: "NOT_FOUND",
    504: "DEADLINE_EXCEEDED",
}


def error_body(status: int, google_status: str, message: str) -> dict[str, Any]:
    body: dict[str, Any] = {"error": {"code": status, "message": message, "status": google_status}}
    if "API key not valid" in message:
        body["error"]["details"] = [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
            }
        ]
    return body


def user_prompt(body: dict[str, Any]) -> str:
    """The text of the request's user content."""
    texts = [
        part.get("text", "")
        for content in body.get("contents", [])
        if isinstance(content, dict)
        for part in content.get("parts", [])
        if isinstance(part, dict)
    ]
    return "\n".join(t for t in texts if t)


class _GeminiHandler(JsonHandler):
    def do_POST(self) -> None:
        match = _PATH.match(self.path.split("?", 1)[0])
        if not match:
            self.send_json(404, error_body(404, "NOT_FOUND", f"{self.path} is not found."))
            return
        body = self.read_json()
        reply = self.scheduled_reply(self.headers.get("x-goog-api-key"), body)
        if reply is not None:
            self.answer(reply, match["model"], body)

    def answer(self, reply: Reply, model: str, body: dict[str, Any]) -> None:
        if reply.status is not None:
            name = _STATUS_NAMES.get(reply.status, "UNKNOWN")
            self.send_json(reply.status, error_body(reply.status, name, reply.message or name))
            return
        if reply.outcome in ERRORS:
            self.send_json(*_error_args(reply.outcome))
            return
        text, prompt_tokens, text_tokens = model_answer(reply, user_prompt(body))
        self.send_json(
            200,
            {
                "candidates": [
                    {
                        "content": {"parts": [{"text": text}], "role": "model"},
                        "finishReason": "MAX_TOKENS" if reply.outcome == fakes.TRUNCATED else "STOP",
                        "index": 0,
                    }
                ],
                "usageMetadata": {
                    "promptTokenCount": prompt_tokens,
                    "candidatesTokenCount": text_tokens,
                    "totalTokenCount": prompt_tokens + text_tokens,
                },
                "modelVersion": model,
            },
        )


def _error_args(outcome: str) -> tuple[int, dict[str, Any]]:
    status, google_status, message = ERRORS[outcome]
    return status, error_body(status, google_status, message)


class FakeGeminiServer(FakeServer):
    """``FakeGeminiServer(schedule=None, *, latency_s=0.0, hang_s=30.0, keys=None)``; point the client's
    ``HttpOptions.base_url`` (``Settings.gemini_base_url``) at ``server.base_url``."""

    handler_class = _GeminiHandler
