"""What every command group shares: the consoles, the settings with command-line overrides, the warehouse
opened with one-line errors, and the option definitions that several commands take."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import duckdb
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from runtime.config import ConfigError, Settings, load_settings
from tasks.export.resolve import ModelNotFound, ResolvedModel, resolve_model
from warehouse.db import WarehouseError, settings_warehouse

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

MODE_HELP = "grounded (retrieval + numeric guard) | closed (the model alone; closed_book)"
MODEL_HELP = (
    "champion | base | a model id | a .gguf file (default: champion, the untuned base until one is promoted)"
)
ALLOW_REMOTE_HELP = "Allow a non-loopback bind_host (exposes the server to the network)."
TEACHER_HELP = "extractive | gemini | openai | llamacpp"

AsJson = Annotated[bool, typer.Option("--json", help="Print JSON.")]
Doc = Annotated[str | None, typer.Option("--doc", help="Only this document (file name).")]
Mode = Annotated[str, typer.Option("--mode", help=MODE_HELP)]
Model = Annotated[str | None, typer.Option("--model", help=MODEL_HELP)]
AllowRemote = Annotated[bool, typer.Option("--allow-remote", help=ALLOW_REMOTE_HELP)]
Teacher = Annotated[str | None, typer.Option("--teacher", help=TEACHER_HELP)]
Base = Annotated[str | None, typer.Option("--base", help="Base model (default: setting base_model).")]
Workspace = Annotated[
    Path | None,
    typer.Option(
        "--workspace",
        "-w",
        envvar="SLM_WORKSPACE",
        help="Folder for the warehouse, artifacts and reports (default ./workspace).",
    ),
]


class _State:
    workspace: Path | None = None


def set_workspace(workspace: Path | None) -> None:
    _State.workspace = workspace


def settings(**overrides: Any) -> Settings:
    """The effective settings; command-line options given as ``overrides`` beat everything else."""
    try:
        return load_settings(_State.workspace, **{k: v for k, v in overrides.items() if v is not None})
    except (ConfigError, ValueError) as exc:
        err_console.print(f"[red]config error:[/red] {exc}")
        raise typer.Exit(2) from exc


def fail(message: str, code: int = 2, cause: BaseException | None = None) -> NoReturn:
    """One line on stderr (rich markup), then exit ``code``."""
    err_console.print(message)
    raise typer.Exit(code) from cause


@contextmanager
def warehouse(cfg: Settings, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    """The warehouse (``settings_warehouse``), saying on stderr when it waits for another slm process, or a
    one-line error and exit status 2 when it cannot be opened."""
    opener = settings_warehouse(
        cfg, read_only, on_wait=lambda line: err_console.print(f"[yellow]{line}[/yellow]")
    )
    try:
        con = opener.__enter__()
    except WarehouseError as exc:
        fail(f"[red]{exc}[/red]", 2, exc)
    try:
        yield con
    finally:
        opener.__exit__(None, None, None)


def answer_mode(mode: str) -> str:
    """``--mode``: grounded, or closed (closed_book)."""
    chosen = {"grounded": "grounded", "closed": "closed_book", "closed_book": "closed_book"}.get(mode)
    if chosen is None:
        fail(f"[red]--mode {escape(mode)}[/red]: use grounded or closed")
    return chosen


def bind_host(cfg: Settings, server_name: str) -> str:
    """The checked listening address of our servers, or a one-line refusal and exit status 2."""
    from runtime.netbind import RemoteBindRefused
    from runtime.netbind import bind_host as checked

    try:
        return checked(cfg, server_name)
    except RemoteBindRefused as exc:
        fail(f"[red]refused:[/red] {escape(str(exc))}", 2, exc)


def prefect_home(cfg: Settings) -> None:
    """Without a Prefect server, every slm process of a workspace shares one local Prefect database, so a
    run paused by one process can be resumed from another."""
    if not os.environ.get("PREFECT_API_URL"):
        os.environ.setdefault("PREFECT_HOME", str((cfg.workspace / "prefect").resolve()))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


def clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def counts(found: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(found.items(), key=lambda kv: -kv[1])) or "-"


def resolved_model(con: Any, cfg: Settings, spec: str | None, base: str | None = None) -> ResolvedModel:
    """``resolve_model``, or a one-line error and exit status 2."""
    try:
        return resolve_model(con, cfg, spec, base)
    except ModelNotFound as exc:
        fail(f"[red]{escape(str(exc))}[/red]", 2, exc)


def runnable_gguf(con: Any, cfg: Settings, spec: str | None) -> Path:
    """The GGUF ``spec`` runs as (a file needs no warehouse: ``con`` may be None), or exit status 2."""
    try:
        return resolve_model(con, cfg, spec).runnable_gguf()
    except ModelNotFound as exc:
        fail(f"[red]{escape(str(exc))}[/red]", 2, exc)


def progress_bar(title: str, described: bool = False) -> Progress:
    """The bar long commands show on stderr: only on a terminal, gone when done; ``described`` adds the
    task's description (the file being read)."""
    columns = [TextColumn(f"[bold]{title}[/bold]"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    if described:
        columns.append(TextColumn("{task.description}"))
    return Progress(*columns, console=err_console, transient=True, disable=not err_console.is_terminal)
