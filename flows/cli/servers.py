"""Our servers: Prefect (dashboard, schedules, deployments), Label Studio, and the model server."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer
from rich.table import Table

from flows.cli.options import (
    AllowRemote,
    Model,
    bind_host,
    console,
    err_console,
    fail,
    runnable_gguf,
    settings,
    warehouse,
)
from flows.cli.review import review_up

server_app = typer.Typer(
    help="Our servers: Prefect (dashboard, schedules) and Label Studio.", no_args_is_help=True
)


@server_app.command("up")
def server_up(
    labelstudio: Annotated[
        bool, typer.Option("--labelstudio/--no-labelstudio", help="Also Label Studio.")
    ] = True,
    allow_remote: AllowRemote = False,
) -> None:
    """Start the Prefect server (and Label Studio) on bind_host (127.0.0.1) with data under the workspace."""
    from deployments import server as prefect_server

    cfg = settings(allow_remote_bind=True if allow_remote else None)
    bind_host(cfg, "the Prefect server")
    try:
        info = prefect_server.start_server(cfg)
    except prefect_server.PrefectServerError as exc:
        err_console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    console.print(f"Prefect dashboard: {info.url} (export PREFECT_API_URL={prefect_server.api_url(cfg)})")
    if labelstudio:
        review_up(allow_remote=allow_remote)


@server_app.command("down")
def server_down() -> None:
    """Stop the worker, the Prefect server and Label Studio of this workspace."""
    from deployments import server as prefect_server
    from review import server as ls_server

    cfg = settings()
    for name in (*prefect_server.WORKERS, "server"):
        console.print(f"prefect {name}: {'stopped' if prefect_server.stop(cfg, name) else 'was not running'}")
    console.print(f"Label Studio: {'stopped' if ls_server.stop(cfg) else 'was not running'}")


@server_app.command("status")
def server_status() -> None:
    """Which of our servers run, where, and their logs."""
    from deployments import server as prefect_server
    from review import server as ls_server

    cfg = settings()
    table = Table("service", "running", "url", "log", title="servers")
    for info in prefect_server.status(cfg).values():
        table.add_row(info.name, "yes" if info.running else "no", info.url or "", str(info.log))
    ls = ls_server.status(cfg)
    table.add_row("label studio", "yes" if ls.running else "no", ls.url, str(ls.log_path))
    console.print(table)


def deploy(
    pool_per_stage: Annotated[
        bool,
        typer.Option(
            "--pool-per-stage",
            help="CPU stages on work_pool, training/evaluation/export on gpu_work_pool, a worker for each.",
        ),
    ] = False,
) -> None:
    """Register the deployments of deployments/prefect.yaml (nightly schedule from the config) and start a
    worker per work pool; flow runs clone the project at the deployed commit (deploy_repository/_commit)."""
    from deployments import server as prefect_server

    cfg = settings()
    bind_host(cfg, "the Prefect server")
    try:
        prefect_server.start_server(cfg)
        names = prefect_server.deploy(cfg, pool_per_stage=pool_per_stage)
        source = prefect_server.git_source(cfg)
    except prefect_server.PrefectServerError as exc:
        err_console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    workers = ", ".join(
        f"{name} on pool {pool}" for name, pool in prefect_server.pools(cfg, pool_per_stage).items()
    )
    console.print(
        f"deployed {', '.join(names)}; nightly at '{cfg.nightly_cron}' ({cfg.timezone}); {workers}; "
        f"code: {source.repository} at {source.commit[:12]}; "
        f"dashboard {prefect_server.api_url(cfg).removesuffix('/api')}"
    )


def serve_model(
    port: Annotated[int, typer.Option("--port", help="Port on bind_host.")] = 8080,
    model: Model = None,
    host: Annotated[
        str | None, typer.Option("--host", help="Listen here (default: setting bind_host, 127.0.0.1).")
    ] = None,
    allow_remote: AllowRemote = False,
) -> None:
    """llama-cpp-python's OpenAI-compatible server on bind_host (127.0.0.1) with the exported GGUF (needs
    its server extra)."""
    import importlib.util

    from runtime.netbind import url_host
    from tasks.answer.serve import server_command

    cfg = settings(bind_host=host, allow_remote_bind=True if allow_remote else None)
    bind = bind_host(cfg, "the model server")  # first: refused before anything else is looked at
    # Prefect brings uvicorn and fastapi, so only the extra's own packages tell whether it is installed.
    server_extra = ("uvicorn", "fastapi", "sse_starlette", "starlette_context")
    if any(importlib.util.find_spec(name) is None for name in server_extra):
        err_console.print(
            "[red]the server needs llama-cpp-python's server extra[/red]: "
            "pip install 'llama-cpp-python\\[server]==0.3.36'"  # \\[: a literal bracket, not rich markup
        )
        raise typer.Exit(2)
    if model is not None and model.endswith(".gguf"):
        path = runnable_gguf(None, cfg, model)  # a file: no warehouse needed
    else:
        with warehouse(cfg, read_only=True) as con:
            path = runnable_gguf(con, cfg, model)
    command = server_command(path, port, host=bind)
    command[0] = sys.executable
    console.print(f"serving {path} at http://{url_host(bind)}:{port}/v1 (Ctrl-C stops)")
    sys.stdout.flush()
    # The server replaces this process: a signal to `slm serve-model` (Ctrl-C, a supervisor's SIGTERM) stops
    # the server itself, and no orphan keeps the port.
    os.execv(command[0], command)


Port = Annotated[int, typer.Option("--port", help="Port on bind_host.")]
Host = Annotated[
    str | None, typer.Option("--host", help="Listen here (default: setting bind_host, 127.0.0.1).")
]


def serve(
    port: Port = 8000,
    model: Model = None,
    host: Host = None,
    allow_remote: AllowRemote = False,
    ui: Annotated[bool, typer.Option("--ui/--no-ui", help="Also the web UI at / (needs gradio).")] = True,
) -> None:
    """The guarded OpenAI-compatible endpoint (/v1/chat/completions, /v1/models) on bind_host: every answer
    goes through the grounded path and the numeric guard of `slm ask`, its sources in the extra field `slm`.
    Off loopback a bearer token is required (generated into the workspace, never shown). `serve-model`
    serves the raw model instead."""
    _run_web_app(port, model, host, allow_remote, ui=ui, preload=True, open_browser=False)


def web(
    port: Port = 7860,
    model: Model = None,
    host: Host = None,
    allow_remote: AllowRemote = False,
    open_browser: Annotated[
        bool | None,
        typer.Option("--open/--no-open", help="Open the browser (default: when there is a display)."),
    ] = None,
) -> None:
    """The web app on bind_host: the UI at / and the guarded endpoint at /v1 (the same app as `slm serve`;
    the model is loaded on the first question, so documents can be added before any model exists)."""
    if open_browser is None:
        open_browser = bool(
            os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
        ) or sys.platform in (
            "darwin",
            "win32",
        )
    _run_web_app(port, model, host, allow_remote, ui=True, preload=False, open_browser=open_browser)


def _run_web_app(
    port: int,
    model: str | None,
    host: str | None,
    allow_remote: bool,
    *,
    ui: bool,
    preload: bool,
    open_browser: bool,
) -> None:
    import importlib.util

    from rich.markup import escape

    from runtime.netbind import url_host

    cfg = settings(bind_host=host, allow_remote_bind=True if allow_remote else None)
    bind = bind_host(cfg, "the web app")  # first: refused before anything else is looked at
    if any(importlib.util.find_spec(name) is None for name in ("fastapi", "uvicorn")):
        fail(
            "[red]the web app needs fastapi and uvicorn[/red]: "
            "pip install 'llama-cpp-python\\[server]==0.3.36' (they come with it)"
        )
    from webapp.api import ApiError
    from webapp.auth import TokenError, token_path
    from webapp.server import UI_USER, create_app, listening_socket, serve, ui_available

    try:
        app = create_app(cfg, model=model, with_ui=ui)
    except TokenError as exc:
        fail(f"[red]{escape(str(exc))}[/red]", 2, exc)
    answerer = app.state.answerer
    if preload:
        try:
            answerer.load()
        except ApiError as exc:
            fail(f"[red]{escape(exc.message)}[/red]", 2, exc)
    try:
        sock = listening_socket(bind, port)
    except OSError as exc:
        fail(f"[red]cannot listen on {escape(bind)}:{port}: {escape(exc.strerror or str(exc))}[/red]", 2, exc)
    url = f"http://{url_host(bind)}:{sock.getsockname()[1]}"
    loaded = f"model {answerer.name}" if answerer.loaded else "model loaded on the first question"
    console.print(f"guarded endpoint: {url}/v1 ({loaded}; Ctrl-C stops)")
    if app.state.ui:
        console.print(f"web app: {url}/")
    elif ui:
        reason = "gradio or webapp/ui.py is missing" if not ui_available() else "see the log"
        console.print(f"[dim]no web UI ({reason}): the API alone[/dim]")
    if app.state.token_required:
        console.print(
            f"bind address {bind} is not loopback: requests need 'Authorization: Bearer <token>' with the token"
            f" in {token_path(cfg)} (mode 0600; not shown here)"
            + (f"; the UI's login is {UI_USER} with the same token" if app.state.ui else "")
        )
    sys.stdout.flush()

    def opened() -> None:
        import webbrowser

        webbrowser.open(f"{url}/")

    serve(app, sock, on_started=opened if open_browser and app.state.ui else None)
