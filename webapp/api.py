"""The guarded OpenAI-compatible endpoint: ``POST /v1/chat/completions`` and ``GET /v1/models``.

Every answer goes through the grounded path of ``slm ask`` (``tasks.answer.answer.answer``: retrieval, the
model's draft, the numeric guard, its retry, the composed quote or the abstention), with the same settings
(``answer_max_tokens``, ``answer_repeat_penalty``, k = 3). The last user message is the question; earlier
turns and the system prompt are not used (the guard checks an answer against the question it answers).

Nothing unchecked reaches the client. A streamed answer starts only after the guard has decided: the client
gets the role at once, SSE comments (``: keep-alive``) while it waits, then the guarded text in pieces. The
model's draft is never sent, not even in the extra field: when the guard replaced it, ``slm.draft_replaced``
says so (the draft itself, with the number the guard refused, stays in the server's own audit).

The response has the usual OpenAI shape plus an ``slm`` field that OpenAI clients ignore::

    "slm": {"guard_action": "quoted_evidence", "verified": true, "numbers": ["100"], "draft_replaced": true,
            "sources": [{"document": "sample_rules.pdf", "article": "第十八条",
                         "article_path": "第三章 差旅费 > 第十八条", "page": 3,
                         "sentence": "伙食补助费…每人每天100元。", "number": "100元", "fact_id": "…"}]}

The model is loaded once. One worker thread runs every answer (llama.cpp has one context, the warehouse one
connection at a time): requests queue in front of it, at most ``MAX_WAITING`` of them (more get 503 with
Retry-After); a request whose client has gone while it waited is dropped unanswered. Each answer opens the
warehouse read-only for its own duration, so ``slm ingest`` and the other commands can write between answers.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from runtime.config import Settings
from tasks.answer.answer import Answer, GuardStats, answer
from warehouse.db import WarehouseError, settings_warehouse
from warehouse.ledger import fact_sources

__all__ = [
    "MAX_QUESTION_CHARS",
    "WAREHOUSE_LOCK",
    "ApiError",
    "GuardedAnswerer",
    "GuardedReply",
    "install_error_handlers",
    "router",
]

MAX_QUESTION_CHARS = 2000  # a question, not a document: longer ones are refused with 400
MAX_BODY_BYTES = 1_000_000  # a request body above this is refused with 413 before it is parsed
MAX_WAITING = 64  # requests queued for the model beyond this get 503
STREAM_PIECE_CHARS = 6  # the guarded text is streamed in pieces of this many characters
KEEPALIVE_S = 5.0  # an SSE comment this often while the guard decides, so proxies keep the stream open
K = 3  # chunks retrieved, as `slm ask`

# Held while a question reads the warehouse; code of this process that writes it (the UI's uploads) holds
# it too, so a question never opens the file while this process has it open for writing.
WAREHOUSE_LOCK = threading.RLock()


class ApiError(Exception):
    """An error for the client, in OpenAI's error shape."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str = "invalid_request",
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        if self.status == 401:
            kind = "authentication_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


# --- the answers -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GuardedReply:
    """What the client may see of an :class:`Answer`: the shown text, the guard's verdict and the sources of
    its numbers. Never the draft."""

    text: str
    guard_action: str
    verified: bool
    numbers: tuple[str, ...]
    draft_replaced: bool
    sources: tuple[dict[str, Any], ...] = ()
    mode: str = "grounded"
    seconds: float = 0.0
    result: Answer | None = field(default=None, repr=False, compare=False)  # for the server's own use (audit)

    def slm_field(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "guard_action": self.guard_action,
            "verified": self.verified,
            "numbers": list(self.numbers),
            "draft_replaced": self.draft_replaced,
            "sources": list(self.sources),
        }


def sources_of(con: Any, fact_ids: Sequence[str]) -> tuple[dict[str, Any], ...]:
    """Document, article, page and sentence of each fact an answer's numbers come from, in its order."""
    ids = list(dict.fromkeys(fact_ids))
    if not ids:
        return ()
    rows = fact_sources(con, ids)
    by_id = {row["fact_id"]: row for row in rows}
    sources = []
    for fact_id in ids:
        row = by_id.get(fact_id)
        if row is None:
            continue
        path = row["heading_path"] or ""
        article = next((p.strip() for p in reversed(path.split(" > ")) if p.strip()), "")
        sources.append(
            {
                "document": row["document"],
                "article": article,
                "article_path": path,
                "page": row["page"],
                "sentence": (row["sentence"] or "").strip(),
                "number": row["number"],
                "fact_id": fact_id,
            }
        )
    return tuple(sources)


class GuardedAnswerer:
    """The one model of the app and the one worker thread that answers with it.

    ``generator``: any ``(messages, max_tokens, grammar=None) -> str`` (tests plant scripted ones); without
    it, ``model`` (as ``slm ask --model``: champion, base, a model id, a .gguf file; None: the champion)
    is resolved and loaded through llama.cpp on first use (or :meth:`load`), once."""

    def __init__(
        self,
        settings: Settings,
        *,
        generator: Callable[..., str] | None = None,
        model: str | None = None,
        name: str | None = None,
        max_waiting: int = MAX_WAITING,
    ) -> None:
        self.settings = settings
        self.generator = generator
        self.model = model
        self._name = name or ("slm-grounded" if generator is not None else None)
        self.max_waiting = max_waiting
        self.stats = GuardStats()
        self._load_lock = threading.Lock()
        self._owned = generator is None  # a generator we loaded is ours to close
        self._worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="slm-answer")
        self._waiting = 0
        self._count_lock = threading.Lock()
        # Held while the model answers: by the worker for a whole guarded answer, by a shared_model() call
        # for one generation (the UI's chat), so the two never interleave on the one llama.cpp context.
        self.model_lock = threading.Lock()

    # model ---------------------------------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        return self.generator is not None

    @property
    def name(self) -> str:
        """The model's name in /v1/models: its registry id, else its GGUF's file name (before loading: the
        spec it will be resolved from)."""
        return self._name or self.model or "slm-grounded"

    def load(self) -> None:
        """Resolve and load the model once; ``ApiError`` 503 saying what to run when there is none."""
        if self.generator is not None:
            return
        with self._load_lock:
            if self.generator is not None:
                return
            from tasks.export.resolve import ModelNotFound, generator_for, resolve_model

            try:
                if self.model is not None and self.model.endswith(".gguf"):
                    resolved = resolve_model(None, self.settings, self.model)
                else:
                    with WAREHOUSE_LOCK, settings_warehouse(self.settings, read_only=True) as con:
                        resolved = resolve_model(con, self.settings, self.model)
                gguf = resolved.runnable_gguf()
                generator = generator_for(None, self.settings, resolved)
            except (ModelNotFound, WarehouseError, FileNotFoundError, ValueError) as exc:
                raise ApiError(503, f"no model to answer with: {exc}", "model_not_available") from exc
            self._name = self._name or resolved.model_id or gguf.stem
            self.generator = generator

    def shared_model(self) -> SharedModel:
        """This app's model for other code of the process (the UI's chat): loaded on first use, one
        generation at a time with the endpoint's answers."""
        return SharedModel(self)

    def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)
        if self._owned and self.generator is not None:
            from tasks.export.resolve import close_generator

            close_generator(self.generator)
            self.generator = None

    # answering -----------------------------------------------------------------------------------------

    @property
    def waiting(self) -> int:
        return self._waiting

    def submit(self, question: str, mode: str = "grounded") -> concurrent.futures.Future[GuardedReply]:
        """Queue ``question`` for the worker; ``ApiError`` 503 when the queue is full. Cancelling the future
        before its turn drops it unanswered."""
        with self._count_lock:
            if self._waiting >= self.max_waiting:
                raise ApiError(
                    503,
                    "the model is busy: too many questions waiting; retry shortly",
                    "busy",
                    headers={"Retry-After": "5"},
                )
            self._waiting += 1
        try:
            future = self._worker.submit(self._answer_now, question, mode)
        except RuntimeError as exc:  # shut down
            self._done()
            raise ApiError(503, "the server is shutting down", "shutting_down") from exc
        future.add_done_callback(lambda _: self._done())
        return future

    def answer(self, question: str, mode: str = "grounded") -> GuardedReply:
        """Answer ``question`` now (blocking; the UI's chat calls this), queued behind other requests."""
        return self.submit(question, mode).result()

    def _done(self) -> None:
        with self._count_lock:
            self._waiting -= 1

    def _answer_now(self, question: str, mode: str) -> GuardedReply:
        self.load()
        started = time.perf_counter()
        with self.model_lock, WAREHOUSE_LOCK:
            try:
                opener = settings_warehouse(self.settings, read_only=True)
                con = opener.__enter__()
            except WarehouseError as exc:
                raise ApiError(503, f"the warehouse cannot be read: {exc}", "warehouse_unavailable") from exc
            try:
                result = answer(
                    question,
                    self.generator,  # type: ignore[arg-type]
                    None,
                    con,
                    mode=mode,
                    k=K,
                    max_tokens=self.settings.answer_max_tokens,
                    stats=self.stats,
                )
                sources = sources_of(con, result.fact_ids) if result.verified else ()
            finally:
                opener.__exit__(None, None, None)
        return GuardedReply(
            text=result.text,
            guard_action=result.guard_action,
            verified=result.verified,
            numbers=result.numbers,
            draft_replaced=bool(result.draft) and result.draft.strip() != result.text.strip(),
            sources=sources,
            mode=result.mode,
            seconds=time.perf_counter() - started,
            result=result,
        )


class SharedModel:
    """``(messages, max_tokens, grammar=None) -> str`` over a :class:`GuardedAnswerer`'s model, with the
    ``stream_to`` hook of ``LlamaCppGenerator`` (the next call streams its pieces there)."""

    def __init__(self, answerer: GuardedAnswerer) -> None:
        self.answerer = answerer
        self.stream_to: Callable[[str], None] | None = None

    def __call__(self, messages: list[dict[str, str]], max_tokens: int, grammar: Any = None) -> str:
        try:
            self.answerer.load()
        except ApiError as exc:
            raise RuntimeError(exc.message) from exc
        sink, self.stream_to = self.stream_to, None
        with self.answerer.model_lock:
            generator: Any = self.answerer.generator
            if sink is not None:
                with contextlib.suppress(AttributeError):
                    generator.stream_to = sink
            try:
                return generator(messages, max_tokens, grammar=grammar)
            finally:
                if sink is not None and getattr(generator, "stream_to", None) is sink:
                    generator.stream_to = None


# --- the HTTP side -----------------------------------------------------------------------------------------


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(BaseModel):
    """The fields of OpenAI's chat request that matter here; the others (temperature, max_tokens, …) are
    accepted and ignored: answers decode greedily with the settings evaluation scored."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    messages: list[ChatMessage]
    stream: bool = False


def question_of(messages: Sequence[ChatMessage]) -> str:
    """The last user message's text (text parts joined), checked: not empty, not too long."""
    users = [m for m in messages if m.role == "user"]
    if not users:
        raise ApiError(400, "no user message: the last user message is the question", param="messages")
    content = users[-1].content
    if isinstance(content, list):
        content = "".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    question = (content or "").strip()
    if not question:
        raise ApiError(400, "the question (the last user message) is empty", "empty_question", "messages")
    if len(question) > MAX_QUESTION_CHARS:
        raise ApiError(
            400,
            f"the question is {len(question)} characters long; at most {MAX_QUESTION_CHARS} are answered"
            " (ask about one rule at a time)",
            "question_too_long",
            "messages",
        )
    return question


def _completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def completion_body(reply: GuardedReply, model: str) -> dict[str, Any]:
    return {
        "id": _completion_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply.text},
                "finish_reason": "stop",
            }
        ],
        "slm": reply.slm_field(),
    }


def _sse(data: dict[str, Any] | str) -> str:
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {text}\n\n"


def pieces(text: str, size: int = STREAM_PIECE_CHARS) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


async def stream_events(
    answerer: GuardedAnswerer, question: str, model: str, keepalive_s: float = KEEPALIVE_S
) -> AsyncIterator[str]:
    """The SSE events of one streamed answer: the role, keep-alives while the guard decides, then the
    guarded text in pieces, the ``slm`` field with the last chunk, and ``[DONE]``."""
    cid, created = _completion_id(), int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        body = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            **extra,
        }
        return _sse(body)

    yield chunk({"role": "assistant", "content": ""})
    try:
        queued = answerer.submit(question)
    except ApiError as exc:
        yield _sse(exc.body())
        return
    future = asyncio.wrap_future(queued)
    try:
        while True:
            done, _ = await asyncio.wait({future}, timeout=keepalive_s)
            if done:
                break
            yield ": keep-alive\n\n"
        try:
            reply = future.result()
        except ApiError as exc:
            yield _sse(exc.body())
            return
        except Exception as exc:  # the model failed on this question: say so; the server keeps serving
            yield _sse(
                ApiError(500, f"answering failed: {type(exc).__name__}: {exc}", "answer_failed").body()
            )
            return
        for piece in pieces(reply.text):
            yield chunk({"content": piece})
        yield chunk({}, "stop", slm=reply.slm_field())
        yield _sse("[DONE]")
    finally:
        # The client went away (or the stream ended): a question still waiting for its turn is dropped.
        queued.cancel()


def router(answerer: GuardedAnswerer, authorized: Callable[[str | None], bool]) -> APIRouter:
    """``/v1/models`` and ``/v1/chat/completions``, behind ``authorized(Authorization header)``."""

    def require_token(authorization: str | None = Header(default=None)) -> None:
        if not authorized(authorization):
            raise ApiError(
                401,
                "a bearer token is required (Authorization: Bearer <token>; the token is in the workspace's"
                " webapp/api-token file)",
                "invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )

    api = APIRouter(prefix="/v1", dependencies=[Depends(require_token)])

    @api.get("/models")
    def list_models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": answerer.name, "object": "model", "created": 0, "owned_by": "slm-factory"}],
        }

    @api.post("/chat/completions", response_model=None)
    async def chat_completions(request: ChatRequest) -> JSONResponse | StreamingResponse:
        question = question_of(request.messages)
        await run_in_threadpool(answerer.load)  # no model: 503 now, not half way into a stream
        model = answerer.name
        if request.stream:
            return StreamingResponse(
                stream_events(answerer, question, model),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        queued = answerer.submit(question)
        try:
            reply = await asyncio.wrap_future(queued)
        finally:
            queued.cancel()  # a client that went away while waiting: its question is dropped
        return JSONResponse(completion_body(reply, model))

    return api


def install_error_handlers(app: FastAPI) -> None:
    """Errors in OpenAI's shape: bad JSON and bad fields are 400 (not FastAPI's 422), oversize bodies 413,
    anything unexpected 500 with its type, and the server keeps serving."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return ApiError(400, "the request body is not valid JSON", "invalid_json").response()
        where = ", ".join(
            ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body" for e in errors[:3]
        )
        detail = "; ".join(str(e.get("msg", "")) for e in errors[:3])
        return ApiError(400, f"invalid request: {where}: {detail}", "invalid_request", where).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return ApiError(exc.status_code, str(exc.detail), "http_error", headers=exc.headers).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return ApiError(500, f"internal error: {type(exc).__name__}: {exc}", "internal_error").response()

    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)


class BodyLimit:
    """ASGI middleware for the API's paths (``prefix``): a body over ``max_bytes`` is refused with 413 before it
    is parsed: at once when its Content-Length says so, else (a chunked body) as soon as that many bytes have
    come. Other paths (the UI's uploads, which Gradio limits per file by ``max_file_mb``) pass untouched."""

    def __init__(self, app: Any, max_bytes: int = MAX_BODY_BYTES, prefix: str = "/v1") -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.prefix = prefix

    def _too_large(self) -> ApiError:
        return ApiError(413, f"the request body is over {self.max_bytes} bytes", "request_too_large")

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path") or ""
        if scope["type"] != "http" or not (path == self.prefix or path.startswith(self.prefix + "/")):
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            error = None
            if not length.strip().isdigit():
                error = ApiError(400, "bad Content-Length header", "invalid_request")
            elif int(length) > self.max_bytes:
                error = self._too_large()
            if error is not None:
                await error.response()(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        # No Content-Length: read the body here, up to the limit, and hand it on as it came.
        messages: list[Any] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self._too_large().response()(scope, receive, send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Any:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)
