"""The ``slm`` command line. Thin: parse arguments, call task functions, print results."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import duckdb
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tasks.config import ConfigError, Settings, load_settings
from tasks.ingest import discover, ingest_file
from warehouse import ledger
from warehouse.db import WarehouseError, connect

app = typer.Typer(
    help="The vertical small-model factory: rule documents to a verified, fine-tuned small model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Show the effective configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


class _State:
    workspace: Path | None = None


def settings() -> Settings:
    try:
        return load_settings(_State.workspace)
    except (ConfigError, ValueError) as exc:
        err_console.print(f"[red]config error:[/red] {exc}")
        raise typer.Exit(2) from exc


@app.callback()
def _root(
    workspace: Annotated[
        Path | None,
        typer.Option(
            "--workspace",
            "-w",
            envvar="SLM_WORKSPACE",
            help="Folder for the warehouse, artifacts and reports (default ./workspace).",
        ),
    ] = None,
) -> None:
    _State.workspace = workspace


@config_app.command("show")
def config_show(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Print the effective settings (secrets masked) and where they came from."""
    cfg = settings()
    shown = cfg.masked()
    if as_json:
        print(json.dumps(shown, ensure_ascii=False, indent=2))
        return
    table = Table("setting", "value", title=f"slm settings (workspace {cfg.workspace})")
    for name, value in shown.items():
        table.add_row(name, "-" if value is None else str(value))
    console.print(table)


@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders (searched recursively).")],
) -> None:
    """Read PDF/TXT/Markdown rule documents into the warehouse and build the fact ledger."""
    cfg = settings()
    files, results = discover(paths)
    with (
        _warehouse(cfg) as con,
        Progress(
            TextColumn("[bold]ingest[/bold]"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
            console=err_console,
            transient=True,
            disable=len(files) < 2 or not err_console.is_terminal,
        ) as progress,
    ):
        task = progress.add_task("", total=len(files))
        for path in files:
            progress.update(task, description=path.name)
            results.append(ingest_file(con, path, cfg))
            progress.advance(task)
    for result in results:
        style = {"added": "green", "unchanged": "dim", "failed": "red"}[result.status]
        (err_console if result.status == "failed" else console).print(
            f"[{style}]{result.status:9}[/{style}] {result.message}"
        )
    failed = sum(r.status == "failed" for r in results)
    added = sum(r.status == "added" for r in results)
    console.print(
        f"{added} added, {sum(r.status == 'unchanged' for r in results)} unchanged, {failed} failed; "
        f"{sum(r.facts for r in results)} new facts"
    )
    if failed:
        raise typer.Exit(1)


@app.command()
def facts(
    doc: Annotated[str | None, typer.Option("--doc", help="Only this document (file name).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array of facts.")] = False,
    summary: Annotated[bool, typer.Option("--summary", help="Counts per document and unit only.")] = False,
    limit: Annotated[int, typer.Option("--limit", help="Rows to show in the table (0 = all).")] = 50,
) -> None:
    """The numeric fact ledger: value, unit, qualifier, subject and sentence of every rule number."""
    cfg = settings()
    with _warehouse(cfg, read_only=True) as con:
        rows = ledger.list_facts(con, doc)
        documents = ledger.list_documents(con)
        units = ledger.facts_by_unit(con)
    if as_json:
        keys = (
            "doc",
            "value",
            "value_max",
            "unit",
            "raw",
            "qualifier",
            "subject",
            "context",
            "chunk_id",
            "span_start",
            "span_end",
            "heading_path",
        )
        print(json.dumps([{k: r[k] for k in keys} for r in rows], ensure_ascii=False, indent=1))
        return
    if doc and not rows and not any(d["name"] == doc for d in documents):
        err_console.print(f"[red]no document named {doc!r}[/red] in {cfg.warehouse_path}")
        raise typer.Exit(1)
    if summary or not rows:
        _print_summary(documents, units)
        return
    table = Table("doc", "subject", "value", "unit", "qualifier", "raw", "context", title="fact ledger")
    shown = rows if limit <= 0 else rows[:limit]
    for r in shown:
        value = r["value"] if r["value_max"] is None else f"{r['value']}–{r['value_max']}"
        table.add_row(
            r["doc"], r["subject"], value, r["unit"], r["qualifier"], r["raw"], _clip(r["context"], 40)
        )
    console.print(table)
    if len(shown) < len(rows):
        console.print(f"({len(rows) - len(shown)} more; --limit 0 shows all, --json for machines)")


@app.command()
def docs() -> None:
    """Documents in the warehouse, with status and the reason for any failure."""
    cfg = settings()
    with _warehouse(cfg, read_only=True) as con:
        _print_summary(ledger.list_documents(con), [])


def _print_summary(documents: list[dict[str, Any]], units: list[tuple[str, int]]) -> None:
    table = Table("document", "status", "pages", "chunks", "facts", "note", title="ledger summary")
    for d in documents:
        table.add_row(
            d["name"],
            d["status"],
            str(d["page_count"] or "-"),
            str(d["chunks"]),
            str(d["facts"]),
            _clip(d["error"] or "", 60),
        )
    console.print(table)
    if units:
        console.print("facts by unit: " + ", ".join(f"{u} {n}" for u, n in units))
    console.print(
        f"{sum(d['facts'] for d in documents)} facts in {sum(d['status'] == 'ok' for d in documents)} "
        f"documents ({sum(d['status'] == 'failed' for d in documents)} failed)"
    )


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


@contextmanager
def _warehouse(cfg: Settings, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    """The warehouse, or a one-line error and exit status 2 when it cannot be opened."""
    try:
        con = connect(cfg.warehouse_path, read_only=read_only)
    except WarehouseError as exc:
        err_console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    try:
        yield con
    finally:
        con.close()


def main() -> None:
    try:
        app()
    except WarehouseError as exc:
        err_console.print(f"[red]{exc}[/red]")
        sys.exit(2)


if __name__ == "__main__":
    main()
