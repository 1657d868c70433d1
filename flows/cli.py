"""The ``slm`` command line. Thin: parse arguments, call task functions, print results."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import duckdb
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from runtime.config import ConfigError, Settings, load_settings
from tasks.distill.distill import DistillSummary, make_teacher
from tasks.distill.distill import distill as run_distill
from tasks.distill.teachers.base import TeacherConfigError
from tasks.ingest.documents import discover, ingest_file
from warehouse import distill as distill_queries
from warehouse import ledger
from warehouse.db import WarehouseError, connect

app = typer.Typer(
    help="The vertical small-model factory: rule documents to a verified, fine-tuned small model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Show the effective configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")
review_app = typer.Typer(
    help="Human review of risky rows (Label Studio) and review policies.", no_args_is_help=True
)
app.add_typer(review_app, name="review")

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


class _State:
    workspace: Path | None = None


def settings(**overrides: Any) -> Settings:
    """The effective settings; command-line options given as ``overrides`` beat everything else."""
    try:
        return load_settings(_State.workspace, **{k: v for k, v in overrides.items() if v is not None})
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
            f"[{style}]{result.status:9}[/{style}] {escape(result.message)}"  # file names may hold [tags]
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
def distill(
    teacher: Annotated[
        str | None, typer.Option("--teacher", help="extractive | gemini | openai | llamacpp")
    ] = None,
    per_fact: Annotated[int | None, typer.Option("--per-fact", help="Questions per ledger fact.")] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="At most this many chunks.")] = None,
    doc: Annotated[str | None, typer.Option("--doc", help="Only this document (file name).")] = None,
) -> None:
    """Write question/answer rows with a teacher and verify every number against the ledger."""
    cfg = settings(teacher=teacher, per_fact=per_fact)
    try:
        chosen = make_teacher(cfg)
    except TeacherConfigError as exc:
        err_console.print(f"[red]teacher error:[/red] {exc}")
        raise typer.Exit(2) from exc
    with (
        _warehouse(cfg) as con,
        Progress(
            TextColumn(f"[bold]distil ({chosen.name})[/bold]"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err_console,
            transient=True,
            disable=not err_console.is_terminal,
        ) as progress,
    ):
        task = progress.add_task("", total=None)
        summary = run_distill(
            con,
            cfg,
            chosen,
            doc=doc,
            limit=limit,
            on_chunk=lambda done, total: progress.update(task, completed=done, total=total),
        )
    _print_distill_summary(summary)
    if summary.chunks == 0:
        err_console.print("[red]no chunks to distil[/red]: run `slm ingest` first (or check --doc)")
        raise typer.Exit(1)


def _print_distill_summary(summary: DistillSummary) -> None:
    totals = summary.totals
    table = Table(
        "measure", "value", title=f"distillation run {summary.run_id} ({summary.teacher}/{summary.model})"
    )
    table.add_row(
        "chunks (cached, failed)", f"{summary.chunks} ({summary.cached} cached, {summary.failed} failed)"
    )
    table.add_row("rows added this run", str(summary.rows_added))
    table.add_row("rows by status", ", ".join(f"{k} {v}" for k, v in totals["by_status"].items()) or "-")
    table.add_row("numeric share", f"{totals['numeric_share']:.1%}")
    table.add_row("grounded share", f"{totals['grounded_share']:.1%}")
    table.add_row("unanswerable share", f"{totals['unanswerable_share']:.1%}")
    table.add_row("facts covered", f"{totals['facts_covered']} / {totals['facts_total']}")
    usage = summary.usage
    table.add_row(
        "teacher calls, tokens (in/out)", f"{usage.calls}, {usage.prompt_tokens}/{usage.completion_tokens}"
    )
    table.add_row("estimated cost", f"${usage.cost_usd:.4f}")
    console.print(table)
    for failure in summary.failures[:10]:
        err_console.print(f"[red]failed[/red] chunk {failure['chunk_id']}: {failure['error']}")
    if len(summary.failures) > 10:
        err_console.print(f"... and {len(summary.failures) - 10} more failures (recorded in teacher_calls)")


@app.command()
def rows(
    status: Annotated[
        str | None, typer.Option("--status", help="generated, auto_verified, needs_review, ...")
    ] = None,
    doc: Annotated[str | None, typer.Option("--doc", help="Only this document (file name).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array of rows.")] = False,
    limit: Annotated[int, typer.Option("--limit", help="Rows to show in the table (0 = all).")] = 30,
) -> None:
    """Question/answer rows with their verification status."""
    cfg = settings()
    with _warehouse(cfg, read_only=True) as con:
        found = distill_queries.list_rows(con, status=status, doc=doc)
    if as_json:
        print(json.dumps(found, ensure_ascii=False, indent=1, default=str))
        return
    table = Table("status", "question", "answer", "numbers", "grounded", "notes", title=f"{len(found)} rows")
    for r in found if limit <= 0 else found[:limit]:
        table.add_row(
            r["status"],
            _clip(r["question"], 30),
            _clip(r["answer"], 40),
            ",".join(r["numbers"]),
            "yes" if r["grounded"] else "no",
            _clip(r["verify_notes"], 40),
        )
    console.print(table)


@app.command()
def gate(
    name: Annotated[str, typer.Argument(help="pre_review or release")] = "pre_review",
    top: Annotated[int, typer.Option("--top", help="Offending rows to list.")] = 15,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Run a quality gate (Great Expectations) over the rows; a passing release gate freezes a dataset."""
    from expectations.runner import GATES, run_gate
    from tasks.train.dataset import freeze_dataset

    if name not in GATES:
        err_console.print(f"[red]unknown gate {name!r}[/red]; choose one of {', '.join(GATES)}")
        raise typer.Exit(2)
    cfg = settings()
    with _warehouse(cfg) as con:
        report = run_gate(con, cfg, name)
        dataset = (
            freeze_dataset(con, cfg, report.gate_run_id) if report.success and name == "release" else None
        )
    if as_json:
        payload = report.as_dict()
        payload["dataset_id"] = dataset.dataset_id if dataset else None
        print(json.dumps(payload, ensure_ascii=False, indent=1, default=str))
    else:
        _print_gate(report, top)
        if dataset:
            verb = "frozen" if dataset.created else "unchanged (same rows as before)"
            console.print(
                f"dataset [bold]{dataset.dataset_id}[/bold] {verb}: {dataset.row_count} rows "
                f"({dataset.train_count} train / {dataset.valid_count} valid), numeric share "
                f"{dataset.numeric_share:.1%}, at {dataset.path}"
            )
    if not report.success:
        raise typer.Exit(1)


def _print_gate(report: Any, top: int) -> None:
    table = Table("", "expectation", "column", "observed", "unexpected", title=f"gate {report.gate}")
    for o in report.outcomes:
        mark = "[green]pass[/green]" if o.success else "[red]FAIL[/red]"
        observed = f"{o.observed:.3f}" if isinstance(o.observed, float) else str(o.observed or "")
        table.add_row(
            mark, o.description or o.expectation, o.column or "", _clip(observed, 30), str(o.unexpected_count)
        )
    console.print(table)
    if report.conflicts:
        console.print("conflicts: " + ", ".join(f"{k} {v}" for k, v in sorted(report.conflicts.items())))
    if report.moved_to_review:
        console.print(f"{report.moved_to_review} auto-verified rows in conflicts sent to review")
    if report.offending:
        rows = Table("row", "question", "numbers", "status", "conflict partner", "fails", title="rows to fix")
        for r in report.offending[:top]:
            rows.add_row(
                r["row_id"],
                _clip(r["question"], 36),
                ",".join(r["numbers"]),
                r["status"],
                r["conflict_partner"] or "",
                ",".join(r["fails"]),
            )
        console.print(rows)
    if report.data_docs_index:
        console.print(f"Data Docs: {report.data_docs_index}")
    console.print(("[green]" if report.success else "[red]") + report.message)


@app.command()
def datasets() -> None:
    """Frozen dataset snapshots."""
    from warehouse.gates import list_datasets

    cfg = settings()
    with _warehouse(cfg, read_only=True) as con:
        found = list_datasets(con)
    table = Table("dataset", "created", "rows", "train", "valid", "numeric share", "path", title="datasets")
    for d in found:
        table.add_row(
            d["dataset_id"],
            str(d["created_at"])[:19],
            str(d["row_count"]),
            str(d["train_count"]),
            str(d["valid_count"]),
            f"{d['numeric_share']:.1%}",
            d["path"],
        )
    console.print(table)


_ALLOW_REMOTE_HELP = "Allow a non-loopback bind_host (exposes the server to the network)."


def _bind_host(cfg: Settings, server_name: str) -> str:
    """The checked listening address of our servers, or a one-line refusal and exit status 2."""
    from rich.markup import escape

    from runtime.netbind import RemoteBindRefused, bind_host

    try:
        return bind_host(cfg, server_name)
    except RemoteBindRefused as exc:
        err_console.print(f"[red]refused:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from exc


@review_app.command("up")
def review_up(
    allow_remote: Annotated[bool, typer.Option("--allow-remote", help=_ALLOW_REMOTE_HELP)] = False,
) -> None:
    """Install (first time: minutes, ~1 GB, its own venv) and start Label Studio on bind_host (127.0.0.1)."""
    from review import server

    cfg = settings(allow_remote_bind=True if allow_remote else None)
    _bind_host(cfg, "Label Studio")  # before installing anything
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
    """The server, and per batch: tasks, annotated, remaining, accepted, corrected, rejected."""
    from review import server
    from review.sync import batch_progress
    from warehouse.review import list_batches

    cfg = settings()
    info = server.status(cfg)
    console.print(f"Label Studio: {'running at ' + info.url if info.running else 'not running'}")
    with _warehouse(cfg) as con, _labelstudio_errors():
        batches = list_batches(con)
        table = Table(
            "batch",
            "status",
            "tasks",
            "annotated",
            "remaining",
            "accepted",
            "corrected",
            "rejected",
            "flow run",
            title="review batches",
        )
        client = server.client_for(cfg) if info.running else None
        for b in batches:
            counts = ["-"] * 6
            if client is not None:
                p = batch_progress(con, cfg, client, b["batch_id"])
                counts = [
                    str(v) for v in (p.tasks, p.annotated, p.remaining, p.accepted, p.corrected, p.rejected)
                ]
            table.add_row(b["batch_id"], b["status"], *counts, b.get("flow_run_id") or "")
    console.print(table)


@review_app.command("push")
def review_push(
    limit: Annotated[int | None, typer.Option("--limit", help="At most this many rows.")] = None,
) -> None:
    """Send the rows waiting for people to Label Studio as a review batch."""
    from review import server
    from review.push import push_batch

    cfg = settings()
    with _warehouse(cfg) as con, _labelstudio_errors():
        batch = push_batch(con, cfg, server.client_for(cfg), limit=limit)
    if batch is None:
        console.print("nothing waits for review")
        return
    console.print(
        f"batch {batch.batch_id}: {batch.row_count} rows ({batch.new_tasks} new tasks) at {batch.url}"
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
    with _warehouse(cfg) as con, _labelstudio_errors():
        ids = [batch] if batch else [b["batch_id"] for b in list_batches(con) if b["status"] != "synced"]
        client = server.client_for(cfg)
        for batch_id in ids:
            result = sync_batch(con, cfg, client, batch_id)
            console.print(
                f"batch {batch_id}: applied {result.applied}, {len(result.flagged)} flagged, "
                f"{result.unchanged} unchanged, status {result.status}"
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
    _prefect_home(cfg)
    try:
        with _warehouse(cfg) as con, _labelstudio_errors():
            batch_id, progress = resume_batch(con, cfg, server.client_for(cfg), batch, partial)
    except ResumeRefused as exc:
        err_console.print(f"[red]not resumed:[/red] {exc}")
        raise typer.Exit(1) from exc
    console.print(f"batch {batch_id}: flow run resumed ({progress.annotated}/{progress.tasks} annotated)")


def _prefect_home(cfg: Settings) -> None:
    """Without a Prefect server, every slm process of a workspace shares one local Prefect database, so a
    run paused by one process can be resumed from another."""
    if not os.environ.get("PREFECT_API_URL"):
        os.environ.setdefault("PREFECT_HOME", str((cfg.workspace / "prefect").resolve()))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


@review_app.command("auto")
def review_auto() -> None:
    """Apply the `auto` review policy (demos and CI only): grounded rows approved, the rest rejected."""
    from review.policy import apply_auto_policy

    cfg = settings()
    with _warehouse(cfg) as con:
        counts = apply_auto_policy(con, cfg.similarity_threshold)
    console.print(
        f"auto review policy (reviewer auto:ledger): {counts['approved']} approved, {counts['rejected']} rejected"
    )


server_app = typer.Typer(
    help="Our servers: Prefect (dashboard, schedules) and Label Studio.", no_args_is_help=True
)
app.add_typer(server_app, name="server")


@server_app.command("up")
def server_up(
    labelstudio: Annotated[
        bool, typer.Option("--labelstudio/--no-labelstudio", help="Also Label Studio.")
    ] = True,
    allow_remote: Annotated[bool, typer.Option("--allow-remote", help=_ALLOW_REMOTE_HELP)] = False,
) -> None:
    """Start the Prefect server (and Label Studio) on bind_host (127.0.0.1) with data under the workspace."""
    from deployments import server as prefect_server

    cfg = settings(allow_remote_bind=True if allow_remote else None)
    _bind_host(cfg, "the Prefect server")
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


@app.command()
def deploy() -> None:
    """Register the deployments of deployments/prefect.yaml (nightly schedule from the config) and start a worker."""
    from deployments import server as prefect_server

    cfg = settings()
    _bind_host(cfg, "the Prefect server")
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


golden_app = typer.Typer(
    help="The golden set: evaluation questions training never sees.", no_args_is_help=True
)
app.add_typer(golden_app, name="golden")


@golden_app.command("add")
def golden_add(path: Annotated[Path, typer.Argument(help="A question file (JSONL).")]) -> None:
    """Register a question file in the golden set (the release gate then keeps its questions out of training)."""
    from tasks.evaluate.evaluate import QuestionFileError
    from tasks.evaluate.golden import add_file

    cfg = settings()
    try:
        with _warehouse(cfg) as con:
            added = add_file(con, path)
    except QuestionFileError as exc:
        err_console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    console.print(f"{added} questions added to the golden set from {path}")


@golden_app.command("show")
def golden_show() -> None:
    """The golden set's questions by split, source and type (recall: trained facts in phrasings training
    never sees; reading: facts held out of training entirely; blank: a question file's)."""
    from warehouse.golden import list_items

    cfg = settings()
    with _warehouse(cfg, read_only=True) as con:
        items = list_items(con)
    splits = ", ".join(f"{name} {sum(i['split'] == name for i in items)}" for name in ("recall", "reading"))
    table = Table(
        "split",
        "type",
        "doc",
        "question",
        "numbers",
        "source",
        title=f"golden set: {len(items)} questions ({splits})",
    )
    for i in items:
        table.add_row(
            i["split"] or "",
            i["type"],
            i["doc"] or "",
            _clip(i["question"], 40),
            ",".join(i["numbers"]),
            i["source"],
        )
    console.print(table)


@app.command("eval")
def eval_command(
    questions: Annotated[
        Path | None, typer.Option("--questions", help="A question file (default: the golden set).")
    ] = None,
    model: Annotated[str | None, typer.Option("--model", help=_MODEL_HELP + "; or an adapter folder")] = None,
    base: Annotated[
        str | None,
        typer.Option("--base", help="Base model for --backend transformers (default: base_model)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON object.")] = False,
    limit: Annotated[int | None, typer.Option("--limit", help="Only the first N questions.")] = None,
    backend: Annotated[
        str,
        typer.Option("--backend", help="llamacpp (the exported GGUF, as `slm ask` answers) | transformers"),
    ] = "llamacpp",
    mode: Annotated[str, typer.Option("--mode", help=_MODE_HELP)] = "grounded",
) -> None:
    """Evaluate a model as `slm ask` answers: two score families, *model* (what the model wrote; a quote or
    abstention by the guard is the model failing) and *shown* (what the user saw), and the guard's actions."""
    from tasks.evaluate.evaluate import QuestionFileError, load_questions, run_and_store
    from tasks.evaluate.golden import golden_items

    cfg = settings()
    chosen_mode = _answer_mode(mode)
    if backend not in ("llamacpp", "transformers"):
        err_console.print(f"[red]--backend {escape(backend)}[/red]: use llamacpp or transformers")
        raise typer.Exit(2)
    try:
        items = load_questions(questions) if questions else None
    except QuestionFileError as exc:
        err_console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    with _warehouse(cfg) as con:
        if items is None:
            items = golden_items(con)
        if not items:
            err_console.print(
                "[red]no questions[/red]: pass --questions FILE or freeze a dataset (golden set)"
            )
            raise typer.Exit(2)
        if questions:  # a question file is one set, named after it (as `slm golden add` registers it)
            items = [replace(i, source=f"file:{questions.name}") for i in items]
        items = items[:limit] if limit else items
        label = model or ("champion" if backend == "llamacpp" else "base")
        batch = _answerer(cfg, con, model, base, backend, chosen_mode)
        with Progress(
            TextColumn(f"[bold]eval {escape(label)} ({chosen_mode})[/bold]"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err_console,
            transient=True,
            disable=not err_console.is_terminal,
        ) as progress:
            task = progress.add_task("", total=len(items))
            run_id, result = run_and_store(
                con,
                items,
                batch,
                label,
                f"file:{questions.name}" if questions else "golden",
                mode=chosen_mode,
                on_batch=lambda done, total: progress.update(task, completed=done),
                batch_size=1,
            )
    metrics = result.metrics
    if as_json:
        payload: dict[str, Any] = {
            "eval_run_id": run_id,
            "model_label": label,
            "mode": chosen_mode,
            "backend": backend,
            "model": metrics["model"],
            "shown": metrics["shown"],
            "guard_actions": metrics["guard_actions"],
            "per_set": metrics["per_set"],
            "items": [
                {
                    "id": m.id,
                    "question": m.question,
                    "type": m.type,
                    "set": question_set,
                    "model_answer": reply.model,
                    "draft": reply.draft,
                    "guard_action": reply.guard_action,
                    "shown": reply.shown,
                    "model_pass": _passes(m),
                    "shown_pass": _passes(s),
                }
                for m, s, reply, question_set in zip(
                    result.model, result.shown, result.replies, result.sets, strict=True
                )
            ],
        }
        print(json.dumps(payload, ensure_ascii=False, indent=1))
        return
    console.print(_families_table(f"evaluation of {label}, {chosen_mode} ({run_id})", metrics))
    for name, families in metrics["per_set"].items():
        console.print(_families_table(f"  {name}", families))
    console.print(f"guard actions: {_counts(metrics['guard_actions'])}")


def _passes(result: Any) -> dict[str, Any]:
    return {
        "numbers": result.numbers_ok,
        "keywords": None if result.keyword_share is None else result.keyword_share == 1.0,
        "no_invented": not result.invented,
        "abstention": result.abstained,
        "echoed": result.echoed,
        "strict": result.passed,
    }


_FAMILY_ROWS = (
    ("accuracy", "n"),
    ("numeric_accuracy", "n_numeric"),
    ("keyword_coverage", "n_keywords"),
    ("invented_number_rate", "n"),
    ("abstention_accuracy", "n_unanswerable"),
    ("echo_rate", "n"),
)


def _families_table(title: str, families: dict[str, Any]) -> Table:
    """One row per metric: the model's own answers beside what was shown, with the item count."""
    from tasks.evaluate.evaluate import fmt

    table = Table("metric", "model", "shown", "n", title=title)
    for key, count in _FAMILY_ROWS:
        table.add_row(
            key, fmt(families["model"][key]), fmt(families["shown"][key]), str(families["model"][count])
        )
    return table


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])) or "-"


def _answerer(cfg: Settings, con: Any, model: str | None, base: str | None, backend: str, mode: str) -> Any:
    """An ``answer_batch`` that answers as `slm ask` does (same guard, retry and max tokens), through the
    exported GGUF in llama.cpp, or through transformers with a base and an adapter."""
    from tasks.answer.answer import answer_batch

    if backend == "llamacpp":
        from tasks.answer.serve import answering_generator

        call: Any = answering_generator(_gguf_for(con, model), cfg)
    else:
        from tasks.answer.generate import TransformersGenerator

        generator = TransformersGenerator(
            base or cfg.base_model,
            _resolve_model(cfg, con, model or "base"),
            cfg.models_cache,
            cfg.answer_max_tokens,
        )
        call = generator.messages_call()
    return answer_batch(call, con, mode, cfg.answer_max_tokens)


def _resolve_model(cfg: Settings, con: Any, model: str) -> Path | None:
    """The adapter folder for base | champion | challenger | a path (None: the untuned base, which is also
    the champion until a challenger is promoted)."""
    if model == "base":
        return None
    if model in ("champion", "challenger"):
        from warehouse.models import get_champion, list_models

        challengers = list_models(con, "challenger")
        found = get_champion(con) if model == "champion" else (challengers[0] if challengers else None)
        if model == "champion" and (not found or not found.get("adapter_path")):
            return None  # nothing promoted yet: the untuned base is what serves
        if not found or not found.get("adapter_path"):
            err_console.print(f"[red]no {model} model yet[/red]: train one with `slm train`")
            raise typer.Exit(2)
        return Path(found["adapter_path"])
    path = Path(model)
    if not path.exists():
        err_console.print(f"[red]{model}: no such adapter folder[/red] (or use base, champion, challenger)")
        raise typer.Exit(2)
    return path


@app.command()
def train(
    dataset: Annotated[
        str | None, typer.Option("--dataset", help="Dataset id (default: the newest).")
    ] = None,
    base: Annotated[
        str | None, typer.Option("--base", help="Base model (default: setting base_model).")
    ] = None,
    profile: Annotated[
        str | None, typer.Option("--profile", help="cpu-small | gpu-qlora | prototype")
    ] = None,
    max_steps: Annotated[
        int | None, typer.Option("--max-steps", help="Stop after this many optimiser steps.")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted run from its checkpoint.")
    ] = False,
) -> None:
    """LoRA fine-tuning on a frozen dataset; the adapter becomes a challenger model."""
    from tasks.train.challenger import NoDataset, train_challenger

    cfg = settings()
    try:
        # The warehouse is opened by train_challenger before and after training, not held during it.
        result, model_id = train_challenger(
            cfg, dataset, base, profile, max_steps, resume, progress=err_console.is_terminal
        )
    except NoDataset as exc:
        err_console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    console.print(
        f"challenger {model_id}: {result.optimizer_steps} steps on {result.device}, {result.tokens_per_s:.0f} tokens/s,"
        f" peak {result.peak_rss_mb:.0f} MB, eval loss {result.final_eval_loss}, adapter {result.adapter_dir}"
    )


@app.command("run")
def run_pipeline(
    paths: Annotated[list[Path], typer.Argument(help="Rule documents (files or folders).")],
    review: Annotated[
        str | None, typer.Option("--review", help="labelstudio | auto (demos and CI only)")
    ] = None,
    teacher: Annotated[
        str | None, typer.Option("--teacher", help="extractive | gemini | openai | llamacpp")
    ] = None,
    base: Annotated[
        str | None, typer.Option("--base", help="Base model (default: setting base_model).")
    ] = None,
    max_steps: Annotated[
        int | None, typer.Option("--max-steps", help="Training budget in optimiser steps.")
    ] = None,
) -> None:
    """The whole pipeline: ingest, distil, gates, review, dataset, train, evaluate, promote, export."""
    cfg = settings()
    _prefect_home(cfg)
    from flows.pipeline import pipeline

    result = pipeline([str(p) for p in paths], str(cfg.workspace), teacher, review, base, max_steps)
    _print_run_summary(cfg, result)


def _print_run_summary(cfg: Settings, result: dict[str, Any]) -> None:
    built = result["dataset"]
    table = Table("stage", "result", title="pipeline summary")
    distilled = built["distill"]
    table.add_row(
        "review policy",
        built["review_policy"]
        + (" (no person reviewed: demo/CI only)" if built["review_policy"] == "auto" else ""),
    )
    table.add_row(
        "rows",
        f"{distilled['rows']} ({distilled['numeric_share']:.0%} numeric, "
        f"{distilled['facts_covered']}/{distilled['facts_total']} facts covered)",
    )
    table.add_row("gates", f"pre_review: {built['pre_review']}; release: {built['release']}")
    table.add_row("dataset", f"{built['dataset']['dataset_id']} ({built['dataset']['rows']} rows)")
    if not result.get("trained"):
        table.add_row("training", "no change: this dataset was already trained on; nothing trained")
        console.print(table)
        return
    from tasks.evaluate.evaluate import fmt

    evaluation = result["evaluation"]
    for label, scores in evaluation["scores"].items():
        model, grounded = label.removesuffix(" grounded"), label.endswith(" grounded")
        for set_name, families in scores["per_set"].items():
            m, s = families["model"], families["shown"]
            table.add_row(
                f"{model} ({'grounded' if grounded else 'closed book'}), {set_name}",
                f"model: accuracy {fmt(m['accuracy'])}, numeric {fmt(m['numeric_accuracy'])}, "
                f"abstention {fmt(m['abstention_accuracy'])}, invented {fmt(m['invented_number_rate'])}, "
                f"echo {fmt(m['echo_rate'])} | shown: accuracy {fmt(s['accuracy'])}, "
                f"numeric {fmt(s['numeric_accuracy'])}, abstention {fmt(s['abstention_accuracy'])} | n={m['n']}",
            )
        table.add_row(
            f"{model} ({'grounded' if grounded else 'closed book'}), guard", _counts(scores["guard_actions"])
        )
    table.add_row(
        "decision",
        ("promoted" if evaluation["promoted"] else "refused") + ": " + "; ".join(evaluation["reasons"]),
    )
    exported = result.get("export")
    table.add_row(
        "GGUF",
        f"{exported['path']} ({exported['quant']}, {exported['size_bytes'] / 1e6:.0f} MB; {exported['what']})"
        if exported
        else "none",
    )
    console.print(table)
    ws = cfg.workspace
    console.print(f"report: {evaluation['report_html']}")
    console.print(f'ask it: .venv/bin/slm -w {ws} ask "出差伙食补助费每人每天多少钱？"')
    console.print(f"data docs: {ws / 'reports' / 'data_docs' / 'index.html'}")


@app.command("export")
def export_command(
    quant: Annotated[str | None, typer.Option("--quant", help="f16 | q8_0 | q4_k_m")] = None,
    adapter_only: Annotated[
        bool, typer.Option("--adapter-only", help="Only the LoRA, for the base GGUF.")
    ] = False,
    model: Annotated[str, typer.Option("--model", help="champion | base | a model id")] = "champion",
) -> None:
    """Write the champion (merged) as GGUF for llama.cpp; size, quantisation and source model are recorded."""
    from tasks.export.export import ExportError, export_model
    from warehouse.models import get_champion, get_model

    cfg = settings()
    with _warehouse(cfg) as con:
        chosen = (
            get_champion(con) if model == "champion" else (None if model == "base" else get_model(con, model))
        )
        if model != "base" and chosen is None:
            err_console.print(f"[red]no {model} model[/red] (see `slm models`; train with `slm train`)")
            raise typer.Exit(2)
        adapter = Path(chosen["adapter_path"]) if chosen and chosen.get("adapter_path") else None
        try:
            result = export_model(
                adapter,
                chosen["base_spec"] if chosen else cfg.base_model,
                cfg.artifacts_dir / "gguf",
                quant or cfg.export_quant,
                adapter_only,
                cache_dir=cfg.models_cache,
                con=con,
                model_id=chosen["model_id"] if chosen else None,
            )
        except ExportError as exc:
            err_console.print(f"[red]export failed:[/red] {exc}")
            raise typer.Exit(1) from exc
    console.print(
        f"{result.path} ({result.quant}, {result.size_bytes / 1e6:.1f} MB) from {result.source_model_id}"
    )


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="A question about the rules.")],
    mode: Annotated[str, typer.Option("--mode", help=_MODE_HELP)] = "grounded",
    model: Annotated[str | None, typer.Option("--model", help=_MODEL_HELP)] = None,
    k: Annotated[int, typer.Option("--k", help="Chunks retrieved.")] = 3,
) -> None:
    """Answer with an exported model through llama.cpp: the answer, the article and document its numbers
    come from, and the guard's verdict. Grounded mode shows no number the ledger lacks."""
    from tasks.answer.answer import answer
    from tasks.answer.serve import answering_generator

    cfg = settings()
    with _warehouse(cfg, read_only=True) as con:
        path = _gguf_for(con, model)
        result = answer(
            question,
            answering_generator(path, cfg),
            None,
            con,
            mode=_answer_mode(mode),
            k=k,
            max_tokens=cfg.answer_max_tokens,
        )
    console.print(result.text, markup=False, highlight=False)
    _print_verdict(result)
    for note in result.notes:
        console.print(f"[dim]{escape(note)}[/dim]")


_MODE_HELP = "grounded (retrieval + numeric guard) | closed (the model alone; closed_book)"
_MODEL_HELP = "champion | base | a model id | a .gguf file (default: the newest export)"


def _answer_mode(mode: str) -> str:
    chosen = {"grounded": "grounded", "closed": "closed_book", "closed_book": "closed_book"}.get(mode)
    if chosen is None:
        err_console.print(f"[red]--mode {escape(mode)}[/red]: use grounded or closed")
        raise typer.Exit(2)
    return chosen


def _print_verdict(result: Any) -> None:
    """Where the numbers come from (article, document) and what the guard did."""
    for hit in result.cited:
        console.print(f"[dim]source: {escape(hit.doc)} › {escape(hit.heading_path or '(no heading)')}[/dim]")
    details = f"mode {result.mode}; numbers {', '.join(result.numbers) or '-'}; "
    details += f"verified {result.verified}; guard {result.guard_action}"
    console.print(f"[dim]{escape(details)}[/dim]")
    if result.draft and result.draft != result.text:  # what the model wrote, when the guard did not show it
        console.print(f"[dim]model's draft: {escape(_clip(result.draft, 120))}[/dim]")


def _gguf_for(con: Any, model: str | None) -> Path:
    """The GGUF to answer with: a file, or the newest full (not adapter-only) export of a registered model."""
    from warehouse.models import get_champion, list_exports, list_models

    if model is not None and model.endswith(".gguf"):
        if not Path(model).is_file():
            err_console.print(f"[red]{escape(model)}[/red]: GGUF file not found")
            raise typer.Exit(2)
        return Path(model)
    exports = [e for e in list_exports(con) if e.get("source") != "adapter"]
    if model == "champion" and get_champion(con) is None:
        model = "base"  # nothing promoted yet: the untuned base is what serves
    if model == "base":
        exports = [e for e in exports if e.get("source") == "base"]
    elif model is not None:
        if model == "champion":
            champion = get_champion(con)
            model_ids = {champion["model_id"]} if champion else set()
        else:
            model_ids = {m["model_id"] for m in list_models(con) if m["model_id"].startswith(model)}
        if not model_ids:
            err_console.print(f"[red]no {escape(model)} model[/red] (see `slm models`)")
            raise typer.Exit(2)
        exports = [e for e in exports if e.get("model_id") in model_ids]
    if not exports:
        which = f"--model {model}" if model else ""
        err_console.print(f"[red]no exported model[/red]: run `slm export {which}`".rstrip() + " first")
        raise typer.Exit(2)
    return Path(exports[0]["path"])


@app.command()
def chat(
    mode: Annotated[str, typer.Option("--mode", help=_MODE_HELP)] = "grounded",
    model: Annotated[str | None, typer.Option("--model", help=_MODEL_HELP)] = None,
) -> None:
    """Ask question after question (empty line or Ctrl-D ends); the model is loaded once. Answers stream as
    they are generated, up to their first number: numbers appear once the guard has checked them."""
    from tasks.answer.answer import GuardStats, HeldNumbersStream, answer
    from tasks.answer.retrieve import ChunkIndex
    from tasks.answer.serve import answering_generator

    cfg = settings()
    mode = _answer_mode(mode)
    with _warehouse(cfg, read_only=True) as con:
        generator = answering_generator(_gguf_for(con, model), cfg)
        index = ChunkIndex.build(con)
        stats = GuardStats()
        while True:
            try:
                question = input("问> ").strip()
            except EOFError:
                break
            if not question:
                break
            stream = HeldNumbersStream(
                lambda text: console.print(text, end="", markup=False, highlight=False)
            )
            generator.stream_to = stream.feed
            result = answer(
                question, generator, index, con, mode=mode, stats=stats, max_tokens=cfg.answer_max_tokens
            )
            stream.finish(result)
            _print_verdict(result)
        console.print(f"[dim]{escape(stats.report())}[/dim]")


@app.command("serve-model")
def serve_model(
    port: Annotated[int, typer.Option("--port", help="Port on bind_host.")] = 8080,
    model: Annotated[str | None, typer.Option("--model", help=_MODEL_HELP)] = None,
    host: Annotated[
        str | None, typer.Option("--host", help="Listen here (default: setting bind_host, 127.0.0.1).")
    ] = None,
    allow_remote: Annotated[bool, typer.Option("--allow-remote", help=_ALLOW_REMOTE_HELP)] = False,
) -> None:
    """llama-cpp-python's OpenAI-compatible server on bind_host (127.0.0.1) with the exported GGUF (needs
    its server extra)."""
    import importlib.util

    from runtime.netbind import url_host
    from tasks.answer.serve import server_command

    cfg = settings(bind_host=host, allow_remote_bind=True if allow_remote else None)
    bind = _bind_host(cfg, "the model server")  # first: refused before anything else is looked at
    # Prefect brings uvicorn and fastapi, so only the extra's own packages tell whether it is installed.
    server_extra = ("uvicorn", "fastapi", "sse_starlette", "starlette_context")
    if any(importlib.util.find_spec(name) is None for name in server_extra):
        err_console.print(
            "[red]the server needs llama-cpp-python's server extra[/red]: "
            "pip install 'llama-cpp-python\\[server]==0.3.36'"  # \\[: a literal bracket, not rich markup
        )
        raise typer.Exit(2)
    if model is not None and model.endswith(".gguf"):
        path = _gguf_for(None, model)  # a file: no warehouse needed
    else:
        with _warehouse(cfg, read_only=True) as con:
            path = _gguf_for(con, model)
    command = server_command(path, port, host=bind)
    command[0] = sys.executable
    console.print(f"serving {path} at http://{url_host(bind)}:{port}/v1 (Ctrl-C stops)")
    sys.stdout.flush()
    # The server replaces this process: a signal to `slm serve-model` (Ctrl-C, a supervisor's SIGTERM) stops
    # the server itself, and no orphan keeps the port.
    os.execv(command[0], command)


@app.command()
def models() -> None:
    """Registered models with kind (champion, challenger, rejected, ...), scores and the reason."""
    from warehouse.models import list_models

    cfg = settings()
    with _warehouse(cfg, read_only=True) as con:
        found = list_models(con)
    from tasks.evaluate.evaluate import fmt

    columns = ("closed_book numeric_accuracy", "grounded numeric_accuracy", "grounded invented_number_rate")
    table = Table(
        "model",
        "kind",
        "dataset",
        "numeric (closed book, model)",
        "numeric (grounded, model)",
        "invented (grounded)",
        "created",
        "note",
        title="models",
    )
    for m in found:
        metrics = m.get("eval_metrics") or {}
        if isinstance(metrics, str):
            metrics = json.loads(metrics)
        table.add_row(
            m["model_id"][:16],
            m["kind"],
            (m.get("dataset_id") or "")[:16],
            *[fmt(metrics.get(k)) for k in columns],
            str(m["created_at"])[:16],
            _clip(m.get("note") or "", 50),
        )
    console.print(table)


@app.command()
def promote(
    model_id: Annotated[str, typer.Argument(help="The model to make champion.")],
    force: Annotated[bool, typer.Option("--force", help="Overrule the champion/challenger gate.")] = False,
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded).")] = "",
) -> None:
    """Make a model champion by hand. Needs --force: the automatic gate did not promote it. Recorded."""
    import getpass

    from tasks.evaluate.promote import force_promote
    from warehouse.models import get_model

    if not force:
        err_console.print(
            "[red]refused:[/red] promotion by hand overrules the gate; repeat with --force --reason ..."
        )
        raise typer.Exit(2)
    cfg = settings()
    with _warehouse(cfg) as con:
        if get_model(con, model_id) is None:
            err_console.print(f"[red]no model {model_id}[/red] (see `slm models`)")
            raise typer.Exit(2)
        force_promote(con, model_id, reason or "(no reason given)", getpass.getuser())
    console.print(f"model {model_id} is champion (forced; recorded in its note)")


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
        con = connect(
            cfg.warehouse_path,
            read_only=read_only,
            lock_wait_s=cfg.warehouse_lock_wait_s,
            on_wait=lambda line: err_console.print(f"[yellow]{line}[/yellow]"),
        )
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
