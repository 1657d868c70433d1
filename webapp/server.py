"""The web app: FastAPI with the guarded endpoint at ``/v1`` and, when Gradio and ``webapp.ui`` are there,
the UI at ``/``; served by uvicorn on ``bind_host``.

``create_app(settings)`` refuses a non-loopback ``bind_host`` without ``allow_remote_bind`` (the rule of every
server here, ``runtime.netbind``); off loopback it requires the workspace's bearer token
(``webapp.auth``) on ``/v1`` and puts the UI behind a login with that token as the password (no UI when the
installed Gradio cannot). ``GET /health`` (no token: it says nothing secret) reports whether the model is
loaded, how many questions wait, and the guard's counts.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import logging
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI

from runtime.config import Settings
from runtime.netbind import bind_host, family
from webapp.api import GuardedAnswerer, install_error_handlers, router
from webapp.auth import bearer_check, ensure_token, needs_token

__all__ = ["UI_USER", "create_app", "serve", "ui_available"]

log = logging.getLogger(__name__)
UI_USER = "slm"  # the UI's login name off loopback; the password is the bearer token


def ui_available() -> bool:
    """Whether the UI can be mounted: Gradio is installed and ``webapp/ui.py`` exists."""
    try:
        return (
            importlib.util.find_spec("gradio") is not None
            and importlib.util.find_spec("webapp.ui") is not None
        )
    except (ImportError, ValueError):
        return False


def create_app(
    settings: Settings,
    *,
    generator: Callable[..., str] | None = None,
    model: str | None = None,
    model_name: str | None = None,
    with_ui: bool = True,
) -> Any:
    """The app. ``generator``: a planted ``(messages, max_tokens, grammar=None) -> str`` (tests, benches);
    without it ``model`` (as ``slm ask --model``) is loaded once, on first use or ``app.state.answerer.load()``.
    ``app.state``: ``answerer``, ``host`` (the checked bind address), ``token_required``, ``ui`` (mounted)."""
    host = bind_host(settings, "the web app")  # RemoteBindRefused before anything else
    token = ensure_token(settings) if needs_token(host) else None
    answerer = GuardedAnswerer(settings, generator=generator, model=model, name=model_name)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            answerer.close()

    app = FastAPI(title="slm-factory", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.answerer = answerer
    app.state.host = host
    app.state.token_required = token is not None
    app.state.ui = False
    install_error_handlers(app)
    app.include_router(router(answerer, bearer_check(token)))

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": answerer.name,
            "loaded": answerer.loaded,
            "waiting": answerer.waiting,
            "guard": answerer.stats.as_dict(),
            "ui": app.state.ui,
        }

    if with_ui:
        app = _mount_ui(app, settings, token, answerer)
    return app


def _mount_ui(app: Any, settings: Settings, token: str | None, answerer: GuardedAnswerer) -> Any:
    """Mount ``webapp.ui.build_ui(settings)`` at ``/``, its chat answering with this app's one model (when
    ``build_ui`` takes a ``generator``); without Gradio or the module, the API alone."""
    if not ui_available():
        log.info("no web UI: gradio or webapp/ui.py is missing; serving the API alone")
        return app
    import gradio

    from webapp import ui

    if "generator" in inspect.signature(ui.build_ui).parameters:
        blocks = ui.build_ui(settings, generator=answerer.shared_model())
    else:
        blocks = ui.build_ui(settings)
    # Gradio refuses an upload over the limit before it reaches its cache (mounting resets its own limit).
    options: dict[str, Any] = {"path": "/", "max_file_size": int(settings.max_file_mb * 1024 * 1024)}
    if token is not None:
        if "auth" not in inspect.signature(gradio.mount_gradio_app).parameters:
            log.warning("no web UI off loopback: this Gradio cannot put it behind a login")
            return app
        options["auth"] = [(UI_USER, token)]
    mounted = gradio.mount_gradio_app(app, blocks, **options)
    mounted.state.ui = True
    return mounted


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (port 0: a free one), ready for uvicorn's ``sockets``."""
    sock = socket.socket(family(host), socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def serve(app: Any, sock: socket.socket, *, on_started: Callable[[], None] | None = None) -> None:
    """Run ``app`` with uvicorn on ``sock`` until Ctrl-C or SIGTERM. Access lines name paths, never headers,
    so the token is never logged."""
    import threading

    import uvicorn

    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    if on_started is not None:

        def wait_then_call() -> None:
            import time

            while not server.started and not server.should_exit:
                time.sleep(0.1)
            if server.started:
                on_started()

        threading.Thread(target=wait_then_call, daemon=True).start()
    server.run(sockets=[sock])
