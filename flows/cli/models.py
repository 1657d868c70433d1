"""From a frozen dataset to a served model: train, eval, models, promote, export, the golden set, and the
whole pipeline (`slm run`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from flows.cli.options import (
    MODEL_HELP,
    Base,
    Mode,
    Teacher,
    answer_mode,
    clip,
    console,
    counts,
    err_console,
    fail,
    prefect_home,
    progress_bar,
    resolved_model,
    settings,
    warehouse,
)
from runtime.config import Settings

golden_app = typer.Typer(
    help="The golden set: evaluation questions training never sees.", no_args_is_help=True
)


@golden_app.command("add")
def golden_add(path: Annotated[Path, typer.Argument(help="A question file (JSONL).")]) -> None:
    """Register a question file in the golden set (the release gate then keeps its questions out of training)."""
    from tasks.evaluate.evaluate import QuestionFileError
    from tasks.evaluate.golden import add_file

    cfg = settings()
    try:
        with warehouse(cfg) as con:
            added = add_file(con, path)
    except QuestionFileError as exc:
        fail(f"[red]{exc}[/red]", 2, exc)
    console.print(f"{added} questions added to the golden set from {path}")


@golden_app.command("show")
def golden_show() -> None:
    """The golden set's questions by split, source and type (recall: trained facts in phrasings training
    never sees; reading: facts held out of training entirely; blank: a question file's)."""
    from warehouse.golden import list_items

    cfg = settings()
    with warehouse(cfg, read_only=True) as con:
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
            clip(i["question"], 40),
            ",".join(i["numbers"]),
            i["source"],
        )
    console.print(table)


def eval_command(
    questions: Annotated[
        Path | None, typer.Option("--questions", help="A question file (default: the golden set).")
    ] = None,
    model: Annotated[str | None, typer.Option("--model", help=MODEL_HELP + "; or an adapter folder")] = None,
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
    mode: Mode = "grounded",
) -> None:
    """Evaluate a model as `slm ask` answers: two score families, *model* (what the model wrote; a quote or
    abstention by the guard is the model failing) and *shown* (what the user saw), and the guard's actions."""
    from tasks.evaluate.evaluate import QuestionFileError, file_set
    from tasks.evaluate.run import BACKENDS, NoQuestions, evaluate_model, model_label, question_file_items
    from tasks.export.resolve import ModelNotFound, close_generator, generator_for

    cfg = settings()
    chosen_mode = answer_mode(mode)
    if backend not in BACKENDS:
        fail(f"[red]--backend {escape(backend)}[/red]: use llamacpp or transformers")
    try:
        items = question_file_items(questions) if questions else None
    except QuestionFileError as exc:
        fail(f"[red]{exc}[/red]", 2, exc)
    label = model_label(model, backend)
    with warehouse(cfg) as con, progress_bar(f"eval {escape(label)} ({chosen_mode})") as progress:
        task = progress.add_task("", total=None)
        # The transformers backend answers with the untuned base unless told otherwise.
        chosen = resolved_model(con, cfg, model if backend == "llamacpp" else (model or "base"), base)
        try:
            generator = generator_for(con, cfg, chosen, backend, base)
            run = evaluate_model(
                con,
                cfg,
                items,
                generator,
                label,
                chosen_mode,
                backend,
                file_set(questions) if questions else "golden",
                on_batch=lambda done, total: progress.update(task, completed=done, total=total),
                limit=limit,
            )
        except (NoQuestions, ModelNotFound) as exc:
            fail(f"[red]{escape(str(exc))}[/red]", 2, exc)
        close_generator(generator)
    if as_json:
        print(json.dumps(run.as_dict(), ensure_ascii=False, indent=1))
        return
    metrics = run.metrics
    console.print(_families_table(f"evaluation of {label}, {chosen_mode} ({run.run_id})", metrics))
    for name, families in metrics["per_set"].items():
        console.print(_families_table(f"  {name}", families))
    console.print(f"guard actions: {counts(metrics['guard_actions'])}")


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


def train(
    dataset: Annotated[
        str | None, typer.Option("--dataset", help="Dataset id (default: the newest).")
    ] = None,
    base: Base = None,
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
        fail(f"[red]{exc}[/red]", 2, exc)
    console.print(
        f"challenger {model_id}: {result.optimizer_steps} steps on {result.device}, {result.tokens_per_s:.0f} tokens/s,"
        f" peak {result.peak_rss_mb:.0f} MB, eval loss {result.final_eval_loss}, adapter {result.adapter_dir}"
    )


def run_pipeline(
    paths: Annotated[list[Path], typer.Argument(help="Rule documents (files or folders).")],
    review: Annotated[
        str | None, typer.Option("--review", help="labelstudio | auto (demos and CI only)")
    ] = None,
    teacher: Teacher = None,
    base: Base = None,
    max_steps: Annotated[
        int | None, typer.Option("--max-steps", help="Training budget in optimiser steps.")
    ] = None,
) -> None:
    """The whole pipeline: ingest, distil, gates, review, dataset, train, evaluate, promote, export."""
    cfg = settings()
    prefect_home(cfg)
    from flows.pipeline import pipeline
    from flows.progress import RichStages, listening

    with listening(RichStages(err_console)):  # each stage's start and end, bars for the long ones
        result = pipeline([str(p) for p in paths], str(cfg.workspace), teacher, review, base, max_steps)
    _print_run_summary(cfg, result)


def _print_run_summary(cfg: Settings, result: Any) -> None:
    """``result``: a ``flows.results.PipelineRun``."""
    built, distilled, dataset = result.dataset, result.dataset.distill, result.dataset.dataset
    table = Table("stage", "result", title="pipeline summary")
    table.add_row(
        "review policy",
        built.review_policy
        + (" (no person reviewed: demo/CI only)" if built.review_policy == "auto" else ""),
    )
    table.add_row(
        "rows",
        f"{distilled.rows} ({distilled.numeric_share:.0%} numeric, "
        f"{distilled.facts_covered}/{distilled.facts_total} facts covered)",
    )
    table.add_row("gates", f"pre_review: {built.pre_review}; release: {built.release}")
    table.add_row("dataset", f"{dataset.dataset_id} ({dataset.rows} rows)")
    if result.run is None:
        table.add_row("training", "no change: this dataset was already trained on; nothing trained")
        console.print(table)
        return
    from tasks.evaluate.evaluate import MODE_NAMES, fmt

    evaluation = result.run.evaluation
    for mode, by_model in evaluation.scores.items():
        for model, scores in by_model.items():
            for set_name, families in scores["per_set"].items():
                m, s = families["model"], families["shown"]
                table.add_row(
                    f"{model} ({MODE_NAMES[mode]}), {set_name}",
                    f"model: accuracy {fmt(m['accuracy'])}, numeric {fmt(m['numeric_accuracy'])}, "
                    f"abstention {fmt(m['abstention_accuracy'])}, invented {fmt(m['invented_number_rate'])}, "
                    f"echo {fmt(m['echo_rate'])} | shown: accuracy {fmt(s['accuracy'])}, "
                    f"numeric {fmt(s['numeric_accuracy'])}, abstention {fmt(s['abstention_accuracy'])} | "
                    f"n={m['n']}",
                )
            table.add_row(f"{model} ({MODE_NAMES[mode]}), guard", counts(scores["guard_actions"]))
    table.add_row(
        "decision", ("promoted" if evaluation.promoted else "refused") + ": " + "; ".join(evaluation.reasons)
    )
    exported = result.run.export
    table.add_row(
        "GGUF",
        f"{exported.path} ({exported.quant}, {exported.size_bytes / 1e6:.0f} MB; {exported.what})"
        if exported
        else "none",
    )
    console.print(table)
    ws = cfg.workspace
    console.print(f"report: {evaluation.report_html}")
    console.print(f'ask it: .venv/bin/slm -w {ws} ask "出差伙食补助费每人每天多少钱？"')
    console.print(f"data docs: {ws / 'reports' / 'data_docs' / 'index.html'}")


def export_command(
    quant: Annotated[str | None, typer.Option("--quant", help="f16 | q8_0 | q4_k_m")] = None,
    adapter_only: Annotated[
        bool, typer.Option("--adapter-only", help="Only the LoRA, for the base GGUF.")
    ] = False,
    model: Annotated[str, typer.Option("--model", help="champion | base | a model id")] = "champion",
) -> None:
    """Write the champion (merged) as GGUF for llama.cpp; size, quantisation and source model are recorded."""
    from tasks.export.export import ExportError

    cfg = settings()
    with warehouse(cfg) as con:
        chosen = resolved_model(con, cfg, model)
        if chosen.fell_back:  # asked for the champion by name: the untuned base is exported with --model base
            fail(f"[red]no {model} model[/red] (see `slm models`; train with `slm train`)")
        try:
            result = chosen.export(con, cfg, quant, adapter_only)
        except ExportError as exc:
            fail(f"[red]export failed:[/red] {exc}", 1, exc)
    console.print(
        f"{result.path} ({result.quant}, {result.size_bytes / 1e6:.1f} MB) from {result.source_model_id}"
    )
    if result.modelfile is not None:
        console.print(f"Ollama: ollama create NAME -f {result.modelfile}")
    for note in result.notes:
        if note.startswith("no Modelfile"):
            err_console.print(f"[yellow]{escape(note)}[/yellow]")


def models() -> None:
    """Registered models with kind (champion, challenger, rejected, ...), scores and the reason."""
    from tasks.evaluate.evaluate import fmt
    from warehouse.models import list_models

    cfg = settings()
    with warehouse(cfg, read_only=True) as con:
        found = list_models(con)
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
            clip(m.get("note") or "", 50),
        )
    console.print(table)


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
        fail("[red]refused:[/red] promotion by hand overrules the gate; repeat with --force --reason ...")
    cfg = settings()
    with warehouse(cfg) as con:
        if get_model(con, model_id) is None:
            fail(f"[red]no model {model_id}[/red] (see `slm models`)")
        force_promote(con, model_id, reason or "(no reason given)", getpass.getuser())
    console.print(f"model {model_id} is champion (forced; recorded in its note)")
