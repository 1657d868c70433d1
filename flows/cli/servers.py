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
    for name in ("worker", "server"):
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


def deploy() -> None:
    """Register the deployments of deployments/prefect.yaml (nightly schedule from the config) and start a worker."""
    from deployments import server as prefect_server

    cfg = settings()
    bind_host(cfg, "the Prefect server")
    try:
        prefect_server.start_server(cfg)
        names = prefect_server.deploy(cfg)
    except prefect_server.PrefectServerError as exc:
        err_console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    console.print(
        f"deployed {', '.join(names)}; nightly at '{cfg.nightly_cron}' ({cfg.timezone}); "
        f"worker on pool {cfg.work_pool}; dashboard {prefect_server.api_url(cfg).removesuffix('/api')}"
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
