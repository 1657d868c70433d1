"""Human review of risky rows in Label Studio, and the review policies."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from flows.cli.options import (
    AllowRemote,
    bind_host,
    console,
    err_console,
    prefect_home,
    settings,
    warehouse,
)

review_app = typer.Typer(
    help="Human review of risky rows (Label Studio) and review policies.", no_args_is_help=True
)


@review_app.command("up")
def review_up(
    allow_remote: AllowRemote = False,
) -> None:
    """Install (first time: minutes, ~1 GB, its own venv) and start Label Studio on bind_host (127.0.0.1)."""
    from review import server

    cfg = settings(allow_remote_bind=True if allow_remote else None)
    bind_host(cfg, "Label Studio")  # before installing anything
    try:
        server.ensure_installed(cfg, on_progress=lambda line: err_console.print(f"[dim]{line}[/dim]"))
        info = server.start(cfg, on_progress=lambda line: err_console.print(f"[dim]{line}[/dim]"))
    except server.LabelStudioError as exc:
        err_console.print(f"[red]Label Studio:[/red] {exc}")
        raise typer.Exit(1) from exc
    verb = "started" if info.started_now else "already running"
    console.print(f"Label Studio {verb} at {info.url} (data {info.data_dir}, log {info.log_path})")
    console.print(f"credentials: {server.data_dir(cfg) / 'credentials.json'} (mode 0600; not shown here)")


@review_app.command("down")
def review_down() -> None:
    """Stop this workspace's Label Studio server."""
    from review import server

    stopped = server.stop(settings())
    console.print("Label Studio stopped" if stopped else "Label Studio was not running")


@contextmanager
def _labelstudio_errors() -> Iterator[None]:
    """Label Studio down, unreachable or without credentials: one line naming the server, exit 1."""
    from review.server import LabelStudioError

    try:
        yield
    except LabelStudioError as exc:
        err_console.print(f"[red]Label Studio:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from exc


@review_app.command("status")
def review_status() -> None:
    """The server, and per batch: fact tasks, row tasks, the rows those decide, the share people opened, and
    tasks annotated, remaining, accepted, corrected, rejected."""
    from review import server
    from review.facts import economy
    from review.sync import batch_progress
    from warehouse.review import list_batches

    cfg = settings()
    info = server.status(cfg)
    console.print(f"Label Studio: {'running at ' + info.url if info.running else 'not running'}")
    with warehouse(cfg) as con, _labelstudio_errors():
        report = economy(con)
        table = Table(title="review batches")
        table.add_column("batch", no_wrap=True)
        for name in ("status", "fact tasks", "row tasks", "rows decided", "tasks/rows", "annotated", "left"):
            table.add_column(name)
        table.add_column("acc/corr/rej", no_wrap=True)
        table.add_column("changed predictions")
        table.add_column("flow run")
        runs = {b["batch_id"]: b.get("flow_run_id") or "" for b in list_batches(con)}
        client = server.client_for(cfg) if info.running else None
        for b in report["batches"]:
            counts = ["-"] * 3
            if client is not None:
                p = batch_progress(con, cfg, client, b["batch_id"])
                counts = [str(p.annotated), str(p.remaining), f"{p.accepted}/{p.corrected}/{p.rejected}"]
            table.add_row(
                b["batch_id"],
                b["status"],
                str(b["fact_tasks"]),
                str(b["row_tasks"]),
                str(b["rows_decided"]),
                f"{b['share']:.0%}",
                *counts,
                f"{b['prediction_changed']}/{b['predicted']}",
                runs.get(b["batch_id"], ""),
            )
    console.print(table)
    console.print(
        f"people opened {report['opened']} tasks for {report['rows']} rows ({report['share']:.0%} of all rows);"
        f" pre-annotations changed: {report['prediction_changed']} of {report['predicted']}"
    )
    if cfg.review_policy == "auto":
        console.print("review policy auto (demos and CI only): the ledger decides, no person reviews")


@review_app.command("push")
def review_push(
    limit: Annotated[int | None, typer.Option("--limit", help="At most this many rows.")] = None,
) -> None:
    """Send the rows waiting for people to Label Studio as a review batch."""
    from review import server
    from review.push import push_batch

    cfg = settings()
    with warehouse(cfg) as con, _labelstudio_errors():
        batch = push_batch(con, cfg, server.client_for(cfg), limit=limit)
    if batch is None:
        console.print("nothing waits for review")
        return
    console.print(
        f"batch {batch.batch_id}: {batch.row_count} tasks ({batch.new_tasks} new): {batch.fact_tasks} fact tasks,"
        f" {batch.row_tasks} row tasks, deciding {batch.rows_decided} rows, at {batch.url}"
    )


@review_app.command("sync")
def review_sync(
    batch: Annotated[str | None, typer.Option("--batch", help="One batch (default: all open).")] = None,
) -> None:
    """Archive and apply the annotations of a batch (idempotent; retries while Label Studio is down)."""
    from review import server
    from review.sync import sync_batch
    from warehouse.review import list_batches

    cfg = settings()
    with warehouse(cfg) as con, _labelstudio_errors():
        ids = [batch] if batch else [b["batch_id"] for b in list_batches(con) if b["status"] != "synced"]
        client = server.client_for(cfg)
        for batch_id in ids:
            result = sync_batch(con, cfg, client, batch_id)
            console.print(
                f"batch {batch_id}: applied {result.applied}, {len(result.flagged)} flagged, "
                f"{result.unchanged} unchanged, ledger decided {result.ledger}, "
                f"{result.prediction_changed} predictions changed, status {result.status}"
            )
            for row_id, why in result.flagged:
                err_console.print(f"  flagged {row_id}: {why}")


@review_app.command("resume")
def review_resume(
    batch: Annotated[
        str | None, typer.Option("--batch", help="The batch (default: the newest open one).")
    ] = None,
    partial: Annotated[
        bool, typer.Option("--partial", help="Resume although tasks remain (explicit policy).")
    ] = False,
) -> None:
    """Resume the flow run paused on a review batch, once every task has an annotation."""
    from review import server
    from review.resume import ResumeRefused, resume_batch

    cfg = settings()
    prefect_home(cfg)
    try:
        with warehouse(cfg) as con, _labelstudio_errors():
            batch_id, progress = resume_batch(con, cfg, server.client_for(cfg), batch, partial)
    except ResumeRefused as exc:
        err_console.print(f"[red]not resumed:[/red] {exc}")
        raise typer.Exit(1) from exc
    console.print(f"batch {batch_id}: flow run resumed ({progress.annotated}/{progress.tasks} annotated)")


@review_app.command("auto")
def review_auto() -> None:
    """Apply the `auto` review policy (demos and CI only): grounded rows approved, the rest rejected, with no
    person involved (real datasets use Label Studio: `slm review push`)."""
    from review.policy import apply_auto_policy

    cfg = settings()
    with warehouse(cfg) as con:
        counts = apply_auto_policy(con, cfg.similarity_threshold)
    console.print(
        f"auto review policy (reviewer auto:ledger; demos and CI only, no person reviewed):"
        f" {counts['approved']} approved, {counts['rejected']} rejected"
        + (
            f", {counts['held']} left for a person (they cite numbers OCR read with low confidence)"
            if counts.get("held")
            else ""
        )
    )
