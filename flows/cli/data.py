"""From documents to a frozen dataset: ingest, docs, facts, distill, rows, gate, datasets; and the
effective configuration."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from flows.cli.options import (
    AsJson,
    Doc,
    Teacher,
    clip,
    console,
    err_console,
    fail,
    progress_bar,
    settings,
    warehouse,
)
from warehouse.ledger import FACT_FIELDS

config_app = typer.Typer(help="Show the effective configuration.", no_args_is_help=True)


@config_app.command("show")
def config_show(as_json: AsJson = False) -> None:
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


def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders (searched recursively).")],
) -> None:
    """Read PDF/Word (.docx)/TXT/Markdown rule documents into the warehouse and build the fact ledger.

    Files in a folder that no route reads are listed as skipped with the reason. Exit status: 1 when any
    file failed; skipped files alone leave it 0 (they are listed and counted, not errors)."""
    from tasks.ingest.documents import ingest_paths

    cfg = settings()
    with (
        warehouse(cfg) as con,
        progress_bar("ingest", described=True) as progress,
    ):
        task = progress.add_task("", total=None, visible=False)

        def started(path: Path, done: int, total: int) -> None:
            # A bar for one file says nothing the result line does not.
            progress.update(task, description=path.name, completed=done, total=total, visible=total >= 2)

        results = ingest_paths(con, paths, cfg, on_start=started)
    styles = {"added": "green", "unchanged": "dim", "failed": "red", "skipped": "yellow"}
    for result in results:
        style = styles[result.status]
        (err_console if result.status == "failed" else console).print(
            f"[{style}]{result.status:9}[/{style}] {escape(result.message)}"  # file names may hold [tags]
        )
    count = {status: sum(r.status == status for r in results) for status in styles}
    console.print(
        f"{count['added']} added, {count['unchanged']} unchanged, {count['failed']} failed, "
        f"{count['skipped']} skipped; {sum(r.facts for r in results)} new facts"
    )
    if count["failed"]:
        raise typer.Exit(1)


# What `slm facts --json` prints of a fact: its document, the ledger's columns, and where it stands.
_FACT_KEYS = ("doc", *FACT_FIELDS, "heading_path")


def facts(
    doc: Doc = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array of facts.")] = False,
    summary: Annotated[bool, typer.Option("--summary", help="Counts per document and unit only.")] = False,
    limit: Annotated[int, typer.Option("--limit", help="Rows to show in the table (0 = all).")] = 50,
) -> None:
    """The numeric fact ledger: value, unit, qualifier, subject and sentence of every rule number."""
    from warehouse import ledger

    cfg = settings()
    with warehouse(cfg, read_only=True) as con:
        rows = ledger.list_facts(con, doc)
        documents = ledger.list_documents(con)
        units = ledger.facts_by_unit(con)
    if as_json:
        print(json.dumps([{k: r[k] for k in _FACT_KEYS} for r in rows], ensure_ascii=False, indent=1))
        return
    if doc and not rows and not any(d["name"] == doc for d in documents):
        fail(f"[red]no document named {doc!r}[/red] in {cfg.warehouse_path}", 1)
    if summary or not rows:
        _print_summary(documents, units)
        return
    table = Table("doc", "subject", "value", "unit", "qualifier", "raw", "context", title="fact ledger")
    shown = rows if limit <= 0 else rows[:limit]
    for r in shown:
        value = r["value"] if r["value_max"] is None else f"{r['value']}–{r['value_max']}"
        table.add_row(
            r["doc"], r["subject"], value, r["unit"], r["qualifier"], r["raw"], clip(r["context"], 40)
        )
    console.print(table)
    if len(shown) < len(rows):
        console.print(f"({len(rows) - len(shown)} more; --limit 0 shows all, --json for machines)")


def docs() -> None:
    """Documents in the warehouse, with status and the reason for any failure."""
    from warehouse import ledger

    cfg = settings()
    with warehouse(cfg, read_only=True) as con:
        _print_summary(ledger.list_documents(con), [])


def _print_summary(documents: list[dict[str, Any]], units: list[tuple[str, int]]) -> None:
    # The routes a document took and the facts each produced; by kind for documents stored before that was kept.
    from tasks.ingest.extract import ROUTES

    table = Table("document", "route", "status", "pages", "chunks", "facts", "note", title="ledger summary")
    for d in documents:
        table.add_row(
            d["name"],
            d["routes"] or ROUTES.get(d["kind"], d["kind"]),
            d["status"],
            str(d["page_count"] or "-"),
            str(d["chunks"]),
            str(d["facts"]),
            clip(d["error"] or "", 60),
        )
    console.print(table)
    if units:
        console.print("facts by unit: " + ", ".join(f"{u} {n}" for u, n in units))
    console.print(
        f"{sum(d['facts'] for d in documents)} facts in {sum(d['status'] == 'ok' for d in documents)} "
        f"documents ({sum(d['status'] == 'failed' for d in documents)} failed)"
    )


def distill(
    teacher: Teacher = None,
    per_fact: Annotated[int | None, typer.Option("--per-fact", help="Questions per ledger fact.")] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="At most this many chunks.")] = None,
    doc: Doc = None,
) -> None:
    """Write question/answer rows with a teacher and verify every number against the ledger."""
    from tasks.distill.distill import distill as run_distill
    from tasks.distill.distill import make_teacher
    from tasks.distill.teachers.base import TeacherConfigError

    cfg = settings(teacher=teacher, per_fact=per_fact)
    try:
        chosen = make_teacher(cfg)
    except TeacherConfigError as exc:
        fail(f"[red]teacher error:[/red] {exc}", 2, exc)
    if cfg.distill_runner != "none":  # fanned out on Dask through Prefect, as the flows do
        from flows.distill_fan_out import fanned_out
        from runtime.config import ConfigError

        try:
            run = fanned_out(cfg, limit=limit, doc=doc)
        except ConfigError as exc:
            fail(f"[red]config error:[/red] {exc}", 2, exc)
        console.print(
            f"distillation run {run.run_id} ({run.teacher}, distill_runner {cfg.distill_runner}): {run.chunks} "
            f"chunks ({run.cached} cached, {run.failed} failed), {run.rows_added} rows added, {run.calls} teacher "
            f"calls; numeric share {run.numeric_share:.1%}, {run.rows} rows in all"
        )
        if run.chunks == 0:
            fail("[red]no chunks to distil[/red]: run `slm ingest` first (or check --doc)", 1)
        return
    with (
        warehouse(cfg) as con,
        progress_bar(f"distil ({chosen.name})") as progress,
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
        fail("[red]no chunks to distil[/red]: run `slm ingest` first (or check --doc)", 1)


def _print_distill_summary(summary: Any) -> None:
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


def rows(
    status: Annotated[
        str | None, typer.Option("--status", help="generated, auto_verified, needs_review, ...")
    ] = None,
    doc: Doc = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array of rows.")] = False,
    limit: Annotated[int, typer.Option("--limit", help="Rows to show in the table (0 = all).")] = 30,
) -> None:
    """Question/answer rows with their verification status."""
    from warehouse import distill as distill_queries

    cfg = settings()
    with warehouse(cfg, read_only=True) as con:
        found = distill_queries.list_rows(con, status=status, doc=doc)
    if as_json:
        print(json.dumps(found, ensure_ascii=False, indent=1, default=str))
        return
    table = Table("status", "question", "answer", "numbers", "grounded", "notes", title=f"{len(found)} rows")
    for r in found if limit <= 0 else found[:limit]:
        table.add_row(
            r["status"],
            clip(r["question"], 30),
            clip(r["answer"], 40),
            ",".join(r["numbers"]),
            "yes" if r["grounded"] else "no",
            clip(r["verify_notes"], 40),
        )
    console.print(table)


def gate(
    name: Annotated[str, typer.Argument(help="pre_review or release")] = "pre_review",
    top: Annotated[int, typer.Option("--top", help="Offending rows to list.")] = 15,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Run a quality gate (Great Expectations) over the rows; a passing release gate freezes a dataset."""
    from expectations.runner import GATES
    from tasks.train.release import run_gate_and_freeze

    if name not in GATES:
        fail(f"[red]unknown gate {name!r}[/red]; choose one of {', '.join(GATES)}")
    cfg = settings()
    with warehouse(cfg) as con:
        outcome = run_gate_and_freeze(con, cfg, name)
    report, dataset = outcome.report, outcome.dataset
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
            mark, o.description or o.expectation, o.column or "", clip(observed, 30), str(o.unexpected_count)
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
                clip(r["question"], 36),
                ",".join(r["numbers"]),
                r["status"],
                r["conflict_partner"] or "",
                ",".join(r["fails"]),
            )
        console.print(rows)
    if report.data_docs_index:
        console.print(f"Data Docs: {report.data_docs_index}")
    console.print(("[green]" if report.success else "[red]") + report.message)


datasets_app = typer.Typer(
    help="Frozen dataset snapshots (listed without a subcommand); export them for other tools."
)


@datasets_app.callback(invoke_without_command=True)
def datasets(ctx: typer.Context) -> None:
    """Frozen dataset snapshots."""
    if ctx.invoked_subcommand is not None:
        return
    from warehouse.gates import list_datasets

    cfg = settings()
    with warehouse(cfg, read_only=True) as con:
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


@datasets_app.command("export")
def datasets_export(
    dataset_id: Annotated[str, typer.Argument(help="Dataset id (a unique prefix is enough).")],
    fmt: Annotated[str, typer.Option("--format", help="llamafactory | alpaca | sharegpt | hf")],
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Folder (default: <workspace>/artifacts/dataset-exports/<id>-<format>)."),
    ] = None,
) -> None:
    """Write a frozen dataset for LLaMA-Factory (with its dataset_info.json entry), as Alpaca or ShareGPT
    JSON, or as a Hugging Face dataset (save_to_disk)."""
    from tasks.export.datasets import DatasetExportError, export_frozen_dataset
    from tasks.train.challenger import NoDataset

    cfg = settings()
    with warehouse(cfg, read_only=True) as con:
        try:
            done = export_frozen_dataset(con, cfg, dataset_id, fmt, out)
        except (DatasetExportError, NoDataset) as exc:
            fail(f"[red]export failed:[/red] {escape(str(exc))}", 2, exc)
    counts = ", ".join(f"{n} {split}" for split, n in done.counts.items()) + " records"
    console.print(f"dataset {done.dataset_id} as {done.format} ({counts}) in {done.out_dir}")
    for path in done.files:
        console.print(f"  {path}")
    if done.entries:
        console.print(
            f"dataset_info.json entries: {', '.join(done.entries)} (LLaMA-Factory dataset_dir {done.out_dir})"
        )
