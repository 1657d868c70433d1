"""The factory in a browser (``slm web``): one Gradio app whose tabs call the same plain functions the CLI
calls, for the finance office and the person who maintains their model.

- *Documents*: upload PDF/TXT/Markdown; each file is checked (name, kind, size from ``max_file_mb``), copied
  into ``<workspace>/uploads/`` and read by ``tasks.ingest.documents.ingest_file`` (what `slm ingest` runs),
  with its status, pages, chunks, facts and failure reason in `slm ingest`'s words;
- *Ledger*: a document's facts (``warehouse.ledger.list_facts``); a selected fact shows its sentence with the
  number highlighted, its article path and its page;
- *Pipeline*: starts the ``build-dataset`` or ``pipeline`` Prefect flow (as `slm run` does) in a child
  process, and shows its stages advance from the flow's log, the Prefect run link, and a review batch
  waiting in Label Studio with its progress;
- *Rows and datasets*: rows by status (``warehouse.distill``), shares, the latest gate runs, frozen datasets
  with their JSONL files to download;
- *Models*: champion, challengers and rejected models with both score families (model / shown) of their
  evaluation runs, the decisions in their notes, and a forced promotion (``tasks.evaluate.promote``);
- *Ask*: grounded answers through ``tasks.answer.answer.answer`` (what `slm ask` calls), streamed up to the
  first number (``HeldNumbersStream``: no unchecked number on screen), with the guard's verdict and the
  article and document every number comes from; closed book on a toggle;
- *Settings*: teacher keys set or missing (never a key), Label Studio and Prefect servers.

The warehouse is opened per request and closed again (read-only where the page only reads), so `slm`
commands and flows in other processes can take it in between; one lock serialises this process's own use.
"""

from __future__ import annotations

import contextlib
import hashlib
import html
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from runtime.config import Settings
from tasks.ingest.extract import SUPPORTED_SUFFIXES, IngestError, read_bytes
from warehouse.db import WarehouseError, open_warehouse

ROOT = Path(__file__).resolve().parents[1]
UPLOADS = "uploads"  # under the workspace: what the Documents tab stored, what a pipeline run reads
MAX_QUESTION_CHARS = 2000
READ_WAIT_S = 3.0  # a page waits this long for another slm process holding the warehouse, then says so
STATUSES = ("generated", "auto_verified", "needs_review", "approved", "corrected", "rejected")
TEACHERS = ("extractive", "gemini", "openai", "llamacpp")
REVIEW_POLICIES = ("labelstudio", "auto")
FLOWS = ("build-dataset", "pipeline")

try:  # one lock with the guarded API's answers: DuckDB refuses a read-only and a writing handle in one process
    from webapp.api import WAREHOUSE_LOCK as _LOCK
except ImportError:  # the pages without the API module
    _LOCK = threading.RLock()


class Busy(RuntimeError):
    """The warehouse is missing or held by another process; the message is one line for people."""


@contextmanager
def _warehouse(settings: Settings, read_only: bool = True) -> Iterator[Any]:
    """The warehouse for one request: read-only for pages that only read, waiting briefly for another
    process (a running flow) before saying it is busy."""
    wait = min(settings.warehouse_lock_wait_s, READ_WAIT_S) if read_only else settings.warehouse_lock_wait_s
    with _LOCK:
        if read_only and not settings.warehouse_path.exists():
            raise Busy("no warehouse yet: upload a document on the Documents tab first")
        try:
            opener = open_warehouse(settings.warehouse_path, read_only, wait)
            con = opener.__enter__()
        except WarehouseError as exc:
            raise Busy(str(exc)) from exc
        try:
            yield con
        finally:
            opener.__exit__(None, None, None)


def _frame(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame([{c: r.get(c) for c in columns} for r in rows], columns=list(columns))


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


# ---------------------------------------------------------------------------------------------------------
# Documents


@dataclass(frozen=True)
class UploadResult:
    name: str  # the file name as shown (the upload's, made printable)
    status: str  # added | unchanged | failed | refused (refused: nothing stored, not even a failure)
    message: str  # `slm ingest`'s words
    pages: int = 0
    chunks: int = 0
    facts: int = 0


def upload_name(original: str) -> tuple[str, str]:
    """(printable name, refusal reason or "") for a browser-given file name. Names with folder parts
    (``../x.pdf``, ``a/b.pdf``, ``C:\\x.pdf``), control characters or no name at all are refused: a name is
    never a path."""
    shown_name = "".join(
        ascii(ch)[1:-1] if unicodedata.category(ch)[0] == "C" else ch for ch in str(original)
    ).strip()
    if not shown_name:
        return "(no name)", "the file has no name"
    if "/" in original or "\\" in original or original in (".", "..") or ":" in original:
        return shown_name, "file name holds folder parts (path traversal); upload the file under a plain name"
    if shown_name != original:
        return shown_name, "file name holds control characters; rename the file and upload it again"
    if original.startswith("."):
        return shown_name, "hidden file names (starting with a dot) are not documents"
    if Path(original).suffix.lower() not in SUPPORTED_SUFFIXES:
        kinds = ", ".join(sorted(SUPPORTED_SUFFIXES))
        return shown_name, f"not a rule document: only {kinds} files are read"
    return shown_name, ""


def ingest_uploads(settings: Settings, uploads: Sequence[tuple[str, str | Path]]) -> list[UploadResult]:
    """Check, store and ingest uploaded files: (name as the browser gave it, temporary path) each.

    A refused file (bad name or kind, too large, unreadable) leaves nothing behind; an accepted one is
    copied to ``<workspace>/uploads/<sha256 prefix>/<name>`` and read by ``ingest_file``, which lands it with
    all its pages, chunks and facts or records it as failed with the reason (and its copy is removed)."""
    from tasks.ingest.documents import ingest_file

    results: list[UploadResult] = []
    for original, temp in uploads:
        name, refused = upload_name(original)
        if refused:
            results.append(UploadResult(name, "refused", f"{name}: {refused}"))
            continue
        try:
            data = read_bytes(Path(temp), settings.max_file_mb)
        except IngestError as exc:
            results.append(UploadResult(name, "refused", f"{name}: {exc}"))
            continue
        except OSError as exc:
            results.append(UploadResult(name, "refused", f"{name}: cannot read the upload ({exc.strerror})"))
            continue
        folder = settings.workspace / UPLOADS / hashlib.sha256(data).hexdigest()[:16]
        dest = folder / original
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / f".{original}.part"
        partial.write_bytes(data)
        partial.replace(dest)  # never a half-written document under its own name
        try:
            with _warehouse(settings, read_only=False) as con:
                result = ingest_file(con, dest, settings)
        except Busy as exc:
            shutil.rmtree(folder, ignore_errors=True)
            results.append(UploadResult(name, "refused", f"{name}: {exc}"))
            continue
        message = result.message.replace(str(dest), name)
        if result.status == "failed":
            shutil.rmtree(folder, ignore_errors=True)
        results.append(UploadResult(name, result.status, message, result.pages, result.chunks, result.facts))
    return results


def documents_table(settings: Settings) -> pd.DataFrame:
    from warehouse import ledger

    columns = ["document", "route", "status", "pages", "chunks", "facts", "note"]
    try:
        with _warehouse(settings) as con:
            docs = ledger.list_documents(con)
    except Busy:
        return pd.DataFrame(columns=columns)
    return pd.DataFrame(
        [
            [
                d["name"],
                d["routes"] or d["kind"],
                d["status"],
                d["page_count"] or 0,
                d["chunks"],
                d["facts"],
                d["error"] or "",
            ]
            for d in docs
        ],
        columns=columns,
    )


def document_names(settings: Settings) -> list[str]:
    from warehouse import ledger

    try:
        with _warehouse(settings) as con:
            return [d["name"] for d in ledger.list_documents(con) if d["status"] == "ok"]
    except Busy:
        return []


# ---------------------------------------------------------------------------------------------------------
# Ledger

MARK_STYLE = "background:#ffe066;padding:0 2px;font-weight:bold"
FACT_COLUMNS = ["value", "unit", "qualifier", "subject", "raw", "article"]


def document_facts(settings: Settings, doc: str | None) -> list[dict[str, Any]]:
    """The facts of one document in document order (``warehouse.ledger.list_facts``), each with its page."""
    from warehouse import ledger

    if not doc:
        return []
    with _warehouse(settings) as con:
        facts = ledger.list_facts(con, doc)
        pages = {s["fact_id"]: s["page"] for s in ledger.fact_sources(con, [f["fact_id"] for f in facts])}
    for f in facts:
        f["page"] = pages.get(f["fact_id"]) or "-"
        f["value_shown"] = (
            _num(f["value"]) if f["value_max"] is None else f"{_num(f['value'])}–{_num(f['value_max'])}"
        )
    return facts


def _num(value: Any) -> str:
    text = str(value)
    return text.rstrip("0").rstrip(".") if "." in text else text


def facts_frame(facts: Sequence[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            [f["value_shown"], f["unit"], f["qualifier"], f["subject"], f["raw"], f["heading_path"] or ""]
            for f in facts
        ],
        columns=FACT_COLUMNS,
    )


def selected_fact(
    facts: Sequence[dict[str, Any]], index: Any, row_value: Sequence[Any] | None
) -> dict[str, Any] | None:
    """The fact of a selected table row: by the row's values (the table may be sorted in the browser), else by
    its position."""
    if row_value:
        wanted = [str(v) for v in row_value]
        frame = facts_frame(facts)
        for i, values in enumerate(frame.itertuples(index=False)):
            if [str(v) for v in values] == wanted:
                return facts[i]
    row = index[0] if isinstance(index, list | tuple) else index
    if row is None or not 0 <= int(row) < len(facts):
        return None
    return facts[int(row)]


def highlighted(fact: dict[str, Any]) -> str:
    """The fact's sentence as HTML (escaped) with its number marked, then its article path and page."""
    context = fact.get("context") or ""
    raw = fact.get("raw") or ""
    at = context.find(raw) if raw else -1
    if at >= 0:
        sentence = (
            html.escape(context[:at])
            + f'<mark class="fact-number" style="{MARK_STYLE}">{html.escape(raw)}</mark>'
            + html.escape(context[at + len(raw) :])
        )
    else:
        sentence = (
            html.escape(context)
            + f' <mark class="fact-number" style="{MARK_STYLE}">{html.escape(raw)}</mark>'
        )
    where = html.escape(fact.get("heading_path") or "(no heading)")
    doc = html.escape(fact.get("doc") or "")
    return (
        f'<div id="fact-detail"><p class="fact-sentence" style="font-size:1.1em">{sentence}</p>'
        f'<p class="fact-where">{doc} › {where} · page {html.escape(str(fact.get("page", "-")))}</p>'
        f'<p class="fact-meta">value {html.escape(str(fact.get("value_shown", "")))} '
        f"{html.escape(fact.get('unit') or '')}; qualifier {html.escape(fact.get('qualifier') or '-')}; "
        f"subject {html.escape(fact.get('subject') or '-')}</p></div>"
    )


# ---------------------------------------------------------------------------------------------------------
# Pipeline: a flow in a child process, watched through its log

STAGES = (
    ("ingest", "ingest"),
    ("distill", "distil"),
    ("quality-gate", "gate pre_review"),
    ("review", "review"),
    ("sync-review-batch", "sync review"),
    ("quality-gate#2", "gate release"),
    ("train-challenger", "train"),
    ("evaluate-challenger", "evaluate"),
    ("export-gguf", "export"),
)
_FINISHED = re.compile(r"Task run '(?P<task>[\w-]+?)-[0-9a-f]{3,}' - Finished in state (?P<state>\w+)")
_VIEW = re.compile(r"View at (?P<url>https?://\S+)")
_FLOW_RUN = re.compile(r"Beginning flow run '(?P<name>[^']+)' for flow '(?P<flow>[^']+)'")


@dataclass
class PipelineRun:
    flow: str
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    started: float = field(default_factory=time.time)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def exit_code(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""


_RUNS: dict[str, PipelineRun] = {}  # per workspace: the run this process started last


def flow_command(
    settings: Settings, flow: str, teacher: str, review: str, max_steps: int | None
) -> list[str]:
    """The child process for ``flow``: `slm run` for the pipeline, the build-dataset flow called the same
    way for the dataset only; both over the documents uploaded here."""
    workspace = str(settings.workspace.resolve())
    paths = [str((settings.workspace / UPLOADS).resolve())]
    if flow == "pipeline":
        command = [sys.executable, "-m", "flows.cli", "-w", workspace, "run", *paths]
        command += ["--review", review, "--teacher", teacher]
        if max_steps:
            command += ["--max-steps", str(int(max_steps))]
        return command
    script = (
        "import json, sys\n"
        "from runtime.config import load_settings\n"
        "from flows.cli.options import prefect_home\n"
        "workspace, teacher, review, paths = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]\n"
        "prefect_home(load_settings(workspace))\n"
        "from flows.build_dataset import build_dataset\n"
        "result = build_dataset(paths, workspace, teacher, review)\n"
        "print('build-dataset result: ' + json.dumps(result.as_dict(), ensure_ascii=False, default=str))\n"
    )
    return [sys.executable, "-c", script, workspace, teacher, review, *paths]


def start_run(
    settings: Settings, flow: str, teacher: str, review: str, max_steps: int | None = None
) -> PipelineRun:
    """Start ``flow`` unless this workspace's last run still runs (then that one is returned)."""
    key = str(settings.workspace.resolve())
    current = _RUNS.get(key)
    if current is not None and current.running:
        return current
    if flow not in FLOWS or teacher not in TEACHERS or review not in REVIEW_POLICIES:
        raise ValueError(f"unknown flow, teacher or review policy: {flow!r}, {teacher!r}, {review!r}")
    if not any((settings.workspace / UPLOADS).glob("*/*")):
        raise ValueError("no uploaded documents: upload rule documents on the Documents tab first")
    logs = settings.workspace / "web" / "runs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{time.strftime('%Y%m%d-%H%M%S')}-{flow}.log"
    run = PipelineRun(flow, log_path)
    env = {k: v for k, v in os.environ.items()}
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    with open(log_path, "wb") as out:
        run.process = subprocess.Popen(
            flow_command(settings, flow, teacher, review, max_steps),
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    _RUNS[key] = run
    return run


def current_run(settings: Settings) -> PipelineRun | None:
    return _RUNS.get(str(settings.workspace.resolve()))


def stop_run(settings: Settings) -> bool:
    """Stop this workspace's run (its whole process group); True when one was running."""
    import signal

    run = current_run(settings)
    if run is None or not run.running or run.process is None:
        return False
    try:
        os.killpg(run.process.pid, signal.SIGTERM)
        run.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.process.pid, signal.SIGKILL)
        run.process.wait(timeout=20)
    except ProcessLookupError:
        pass
    return True


def stages(log: str, flow: str, running: bool, exit_code: int | None) -> list[tuple[str, str]]:
    """(stage, state) from a flow's log: done, failed, running, paused for review, skipped, or waiting."""
    finished: dict[str, str] = {}
    for match in _FINISHED.finditer(log):
        task = match["task"]
        if task in ("auto-review", "push-review-batch"):
            task = "review"
        if task == "quality-gate" and "quality-gate" in finished:
            task = "quality-gate#2"
        finished[task] = "done" if match["state"] == "Completed" else match["state"].lower()
    wanted = STAGES if flow == "pipeline" else STAGES[:6]
    auto = "review policy auto" in log
    paused = "pausing flow" in log.lower()
    current_marked = any(state != "done" for state in finished.values())
    out: list[tuple[str, str]] = []
    for key, label in wanted:
        state = finished.get(key)
        if state is None:
            if key == "sync-review-batch" and auto:
                state = "skipped (auto policy)"
            elif not current_marked and running:
                state = "paused for review" if key == "sync-review-batch" and paused else "running"
                current_marked = True
            elif not current_marked and exit_code not in (None, 0):
                state = "failed"
                current_marked = True
            elif exit_code == 0:
                state = "skipped"
            else:
                state = "waiting"
        out.append((label, state))
    return out


def run_view(settings: Settings) -> tuple[str, pd.DataFrame, str, str]:
    """(status line, stages, review batch, log tail) of this workspace's current run."""
    run = current_run(settings)
    empty = pd.DataFrame(columns=["stage", "state"])
    if run is None:
        return "No run started from this page yet.", empty, review_view(settings), ""
    log = run.log()
    table = pd.DataFrame(stages(log, run.flow, run.running, run.exit_code), columns=["stage", "state"])
    elapsed = time.time() - run.started
    if run.running:
        state = f"**{run.flow}** running for {elapsed:.0f} s"
    elif run.exit_code == 0:
        state = f"**{run.flow}** finished in {elapsed:.0f} s"
    else:
        state = f"**{run.flow}** failed (exit status {run.exit_code}); see the log below"
    link = _VIEW.search(log)
    if link:
        state += f" · [Prefect run]({link['url']})"
    named = _FLOW_RUN.search(log)
    if named:
        state += f" · flow run `{named['name']}`"
    tail = "\n".join(log.splitlines()[-40:])
    # The flow holds the warehouse while it works; batches are looked up once it has pushed one, or ended.
    review = review_view(settings) if "push-review-batch" in log or not run.running else ""
    return state, table, review, tail


def review_view(settings: Settings) -> str:
    """Open review batches: their Label Studio link and progress (live when Label Studio runs)."""
    from review import server
    from warehouse.review import list_batches

    try:
        with _warehouse(settings) as con:
            batches = [b for b in list_batches(con) if b["status"] != "synced"]
    except Busy:
        return ""
    if not batches:
        return "No review batch is waiting."
    info = server.status(settings)
    lines = []
    for b in batches:
        url = f"{server.base_url(settings)}/projects/{b['ls_project_id']}"
        progress = ""
        if info.running:
            try:
                from review.sync import batch_progress

                with _warehouse(settings, read_only=False) as con:
                    p = batch_progress(con, settings, server.client_for(settings), b["batch_id"])
                progress = f": {p.annotated}/{p.tasks} annotated, {p.remaining} remaining"
            except Exception as exc:  # Label Studio down or slow: say so, keep the page alive
                progress = f": progress unavailable ({type(exc).__name__})"
        else:
            progress = ": Label Studio is not running (`slm review up`)"
        lines.append(
            f"- batch `{b['batch_id']}` ({b['row_count']} rows, {b['status']}) — [{url}]({url}){progress}"
        )
    return "Waiting for review:\n" + "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# Rows, gates and datasets

ROW_COLUMNS = ["status", "question", "answer", "numbers", "grounded", "doc", "notes"]


def rows_view(settings: Settings, status: str | None) -> tuple[pd.DataFrame, str]:
    from warehouse import distill

    chosen = None if not status or status == "all" else status
    try:
        with _warehouse(settings) as con:
            rows = distill.list_rows(con, status=chosen)
            summary = distill.rows_summary(con)
    except Busy as exc:
        return pd.DataFrame(columns=ROW_COLUMNS), str(exc)
    frame = pd.DataFrame(
        [
            [
                r["status"],
                r["question"],
                r["answer"],
                ", ".join(r["numbers"] or []),
                "yes" if r["grounded"] else "no",
                r["doc"],
                r["verify_notes"] or "",
            ]
            for r in rows[:500]
        ],
        columns=ROW_COLUMNS,
    )
    by_status = ", ".join(f"{k} {v}" for k, v in summary["by_status"].items()) or "none"
    text = (
        f"{summary['rows']} rows ({by_status}); numeric share {summary['numeric_share']:.1%}, grounded "
        f"{summary['grounded_share']:.1%}, unanswerable {summary['unanswerable_share']:.1%}; facts covered "
        f"{summary['facts_covered']}/{summary['facts_total']}"
        + (f"; showing the first 500 of {len(rows)}" if len(rows) > 500 else "")
    )
    return frame, text


def gates_view(settings: Settings) -> pd.DataFrame:
    from warehouse.gates import recent_gate_runs

    columns = ["gate", "passed", "rows", "when", "failed expectations", "data docs"]
    try:
        with _warehouse(settings) as con:
            runs = recent_gate_runs(con)
    except Busy:
        return pd.DataFrame(columns=columns)
    out = []
    for gate, success, count, created, report, docs in runs:
        outcomes = json.loads(report).get("outcomes", []) if report else []
        failed = [o.get("description") or o.get("expectation", "") for o in outcomes if not o.get("success")]
        out.append(
            [gate, "yes" if success else "no", count, str(created)[:19], "; ".join(failed), docs or ""]
        )
    return pd.DataFrame(out, columns=columns)


def datasets_view(settings: Settings) -> pd.DataFrame:
    from warehouse.gates import list_datasets

    columns = ["dataset", "created", "rows", "train", "valid", "numeric share", "path"]
    try:
        with _warehouse(settings) as con:
            found = list_datasets(con)
    except Busy:
        return pd.DataFrame(columns=columns)
    return pd.DataFrame(
        [
            [
                d["dataset_id"],
                str(d["created_at"])[:19],
                d["row_count"],
                d["train_count"],
                d["valid_count"],
                f"{d['numeric_share']:.1%}",
                d["path"],
            ]
            for d in found
        ],
        columns=columns,
    )


def dataset_files(settings: Settings, dataset_id: str) -> list[str]:
    """The JSONL files of a frozen dataset, copied to a temporary folder the page may serve."""
    from warehouse.gates import list_datasets

    with _warehouse(settings) as con:
        found = [d for d in list_datasets(con) if d["dataset_id"] == dataset_id]
    if not found:
        raise gr.Error(f"no dataset {dataset_id!r}")
    path = Path(found[0]["path"])
    files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    out = Path(tempfile.mkdtemp(prefix="slm-dataset-"))
    copied = []
    for f in files:
        if f.is_file():
            target = out / f"{dataset_id}-{f.name}"
            shutil.copyfile(f, target)
            copied.append(str(target))
    if not copied:
        raise gr.Error(f"dataset {dataset_id}: no JSONL file at {path}")
    return copied


# ---------------------------------------------------------------------------------------------------------
# Models

SCORE_KEYS = ("accuracy", "numeric_accuracy", "invented_number_rate", "abstention_accuracy")
MODEL_COLUMNS = ["model", "kind", "dataset", "mode", "family", *SCORE_KEYS, "n", "evaluated", "note"]


def models_view(settings: Settings) -> tuple[pd.DataFrame, str]:
    """Every registered model with its newest evaluation per mode, both score families side by side."""
    from warehouse.evaluation import list_eval_runs
    from warehouse.models import list_models

    try:
        with _warehouse(settings) as con:
            models = list_models(con)
            runs = list_eval_runs(con, limit=500)
    except Busy as exc:
        return pd.DataFrame(columns=MODEL_COLUMNS), str(exc)
    newest: dict[tuple[str | None, str], dict[str, Any]] = {}
    for run in runs:  # newest first
        newest.setdefault((run["model_id"] or run["model_label"], run["mode"]), run)
    order = {"champion": 0, "challenger": 1, "rejected": 2, "retired": 3, "base": 4}
    out = []
    for m in sorted(models, key=lambda m: order.get(m["kind"], 9)):
        found = [(mode, r) for (mid, mode), r in newest.items() if mid == m["model_id"]]
        for mode, run in sorted(found) or [("-", None)]:
            metrics = run["metrics"] if run else {}
            if isinstance(metrics, str):
                metrics = json.loads(metrics)
            for family in ("model", "shown"):
                scores = metrics.get(family, {}) if metrics else {}
                out.append(
                    [
                        m["model_id"][:16],
                        m["kind"],
                        (m.get("dataset_id") or "")[:16],
                        mode,
                        family,
                        *[_fmt(scores.get(k)) for k in SCORE_KEYS],
                        run["n"] if run else 0,
                        str(run["created_at"])[:16] if run else "",
                        m.get("note") or "",
                    ]
                )
    champion = next((m for m in models if m["kind"] == "champion"), None)
    head = (
        f"Champion: `{champion['model_id'][:16]}` ({champion.get('note') or 'promoted'})"
        if champion
        else "No champion yet: the untuned base answers until a challenger is promoted."
    )
    return pd.DataFrame(out, columns=MODEL_COLUMNS), head


def newest_report(settings: Settings) -> tuple[Path | None, list[Path]]:
    """The newest evaluation report (``tasks.evaluate.report``'s ``eval-<model>.md``) and its charts."""
    pages = sorted(settings.reports_dir.glob("eval-*.md"), key=lambda p: p.stat().st_mtime)
    if not pages:
        return None, []
    return pages[-1], sorted(settings.reports_dir.glob(f"{pages[-1].stem}-*.png"))


def report_view(settings: Settings) -> tuple[str, list[str]]:
    """The newest report's text (decisions, regressed and fixed items) and its charts, copied where the
    page may serve them."""
    page, charts = newest_report(settings)
    if page is None:
        return "No evaluation report yet (the pipeline writes one when it evaluates a challenger).", []
    out = Path(tempfile.mkdtemp(prefix="slm-charts-"))
    copied = []
    for chart in charts:
        shutil.copyfile(chart, out / chart.name)
        copied.append(str(out / chart.name))
    text = page.read_text(encoding="utf-8", errors="replace")
    text = re.sub(r"!\[[^\]]*\]\([^)]*\)", "", text)  # the charts are shown beside it
    return f"`{page}`\n\n{text}", copied


def force_promote_model(settings: Settings, model_id: str, reason: str, confirmed: bool) -> str:
    """`slm promote --force --reason`: overrule the gate by hand, recorded with who and why."""
    import getpass

    from tasks.evaluate.promote import force_promote
    from warehouse.models import get_model, list_models

    if not confirmed:
        return "Refused: promotion by hand overrules the gate; tick the box to confirm."
    if not reason.strip():
        return "Refused: say why (the reason is recorded in the model's note)."
    with _warehouse(settings, read_only=False) as con:
        matches = (
            [m for m in list_models(con) if m["model_id"].startswith(model_id.strip())]
            if model_id.strip()
            else []
        )
        if len(matches) != 1 or get_model(con, matches[0]["model_id"]) is None:
            return f"Refused: no single model matches {model_id!r}."
        force_promote(con, matches[0]["model_id"], reason.strip(), f"web:{getpass.getuser()}")
    return f"Model {matches[0]['model_id'][:16]} is champion (forced; recorded in its note)."


# ---------------------------------------------------------------------------------------------------------
# Ask


class Answering:
    """The answering call for the Ask tab: the planted ``generator`` when one is given (tests, the server's
    shared model), else the exported champion or base loaded once per choice; one question at a time."""

    def __init__(self, settings: Settings, generator: Callable[..., str] | None = None) -> None:
        self.settings = settings
        self.planted = generator
        self.loaded: dict[str, Any] = {}
        self.lock = threading.Lock()

    def generator(self, which: str) -> Any:
        if self.planted is not None:
            return self.planted
        if which not in self.loaded:
            from tasks.answer.serve import answering_generator
            from tasks.export.resolve import ModelNotFound, resolve_model

            with _warehouse(self.settings) as con:
                try:
                    path = resolve_model(con, self.settings, which).runnable_gguf()
                except ModelNotFound as exc:
                    raise Busy(str(exc)) from exc
            self.loaded[which] = answering_generator(path, self.settings)
        return self.loaded[which]

    def ask(self, question: str, which: str, closed_book: bool, on_piece: Callable[[str], None]) -> Any:
        """``tasks.answer.answer.answer`` as `slm ask` calls it; pieces of the draft go to ``on_piece`` up to
        its first number (``HeldNumbersStream``)."""
        from tasks.answer.answer import HeldNumbersStream, answer

        with self.lock:
            generator = self.generator(which)
            stream = HeldNumbersStream(on_piece)
            with contextlib.suppress(AttributeError):  # a callable without the hook: the answer comes whole
                generator.stream_to = stream.feed
            with _warehouse(self.settings) as con:
                result = answer(
                    question,
                    generator,
                    None,
                    con,
                    mode="closed_book" if closed_book else "grounded",
                    max_tokens=self.settings.answer_max_tokens,
                )
            return result, stream.shown


def verdict_markdown(result: Any) -> str:
    """Where the numbers come from and what the guard did (what `slm ask` prints under the answer)."""
    lines = []
    for hit in result.cited:
        lines.append(f"- source: **{_md(hit.doc)}** › {_md(hit.heading_path or '(no heading)')}")
    numbers = ", ".join(result.numbers) or "-"
    verdict = "verified against the ledger" if result.verified else "not verified"
    if result.mode == "closed_book" and not result.verified:
        verdict = "closed book, NOT verified: check the rule before relying on it"
    lines.append(f"- guard: **{result.guard_action}**; numbers {_md(numbers)}; {verdict}; mode {result.mode}")
    return "\n".join(lines)


def answer_footnote(result: Any) -> str:
    """One small line under an answer in the chat: its sources and the guard's action, so every answer in
    the conversation keeps where its numbers come from."""
    sources = "; ".join(f"{_md(h.doc)} › {_md(h.heading_path or '(no heading)')}" for h in result.cited)
    return f"<small>source: {sources or '-'} · guard {result.guard_action}</small>"


def _md(text: str) -> str:
    return html.escape(str(text)).replace("*", "\\*").replace("_", "\\_").replace("[", "\\[")


def question_problem(question: str) -> str:
    if not question or not question.strip():
        return "Type a question first."
    if len(question) > MAX_QUESTION_CHARS:
        return f"Question too long ({len(question)} characters; at most {MAX_QUESTION_CHARS})."
    return ""


# ---------------------------------------------------------------------------------------------------------
# Settings


def keys_view(settings: Settings) -> pd.DataFrame:
    """Teacher keys: set (how many) or missing; never a key."""

    def count(secret: Any) -> int:
        if secret is None:
            return 0
        return len([k for k in secret.get_secret_value().split(",") if k.strip()])

    rows = [
        ["gemini", "gemini_api_keys (GEMINI_API_KEYS)", _key_state(count(settings.gemini_api_keys))],
        ["openai", "openai_api_key (OPENAI_API_KEY)", _key_state(count(settings.openai_api_key))],
        [
            "label studio",
            "labelstudio_token (else generated at first start)",
            _key_state(count(settings.labelstudio_token)),
        ],
        ["extractive", "no key needed", "-"],
        ["llamacpp", "llamacpp_model_path", "set" if settings.llamacpp_model_path else "missing"],
    ]
    frame = pd.DataFrame(rows, columns=["teacher", "setting", "state"])
    frame.loc[len(frame)] = ["(chosen teacher)", "teacher", settings.teacher]
    return frame


def _key_state(n: int) -> str:
    return "missing" if n == 0 else ("set (1 key)" if n == 1 else f"set ({n} keys)")


def servers_view(settings: Settings) -> pd.DataFrame:
    from deployments import server as prefect_server
    from review import server as ls_server

    rows = []
    try:
        for info in prefect_server.status(settings).values():
            rows.append(
                [
                    info.name if info.name.startswith("prefect") else f"prefect {info.name}",
                    "running" if info.running else "stopped",
                    info.url or "",
                    str(info.log),
                ]
            )
    except Exception as exc:  # a broken pid file must not break the page
        rows.append(["prefect", f"unknown ({type(exc).__name__})", "", ""])
    try:
        ls = ls_server.status(settings)
        rows.append(["label studio", "running" if ls.running else "stopped", ls.url, str(ls.log_path)])
    except Exception as exc:
        rows.append(["label studio", f"unknown ({type(exc).__name__})", "", ""])
    run = current_run(settings)
    rows.append(
        [
            "flow run (this page)",
            "running" if run and run.running else "none",
            "",
            str(run.log_path) if run else "",
        ]
    )
    return pd.DataFrame(rows, columns=["service", "state", "url", "log"])


def settings_json(settings: Settings) -> dict[str, Any]:
    return settings.masked()


# ---------------------------------------------------------------------------------------------------------
# The app


def build_ui(settings: Settings, *, generator: Callable[..., str] | None = None) -> gr.Blocks:
    """The web app's pages over ``settings``' workspace. ``generator``: the answering call for the Ask tab
    (a planted scripted model in tests, the server's loaded model); None loads the exported champion/base."""
    answering = Answering(settings, generator)

    with gr.Blocks(title="slm-factory") as demo:
        gr.Markdown(f"## slm-factory · workspace `{html.escape(str(settings.workspace))}`")
        with gr.Tabs():
            # --- Documents ---------------------------------------------------------------------------
            with gr.Tab("Documents", id="documents"):
                gr.Markdown(
                    f"Upload rule documents (PDF, TXT, Markdown; at most {settings.max_file_mb:g} MB each). "
                    "Each is read into pages, chunks and the numeric fact ledger, as `slm ingest` does."
                )
                files = gr.File(
                    label="rule documents",
                    file_count="multiple",
                    file_types=sorted(SUPPORTED_SUFFIXES),
                    type="filepath",
                    elem_id="upload",
                )
                ingest_btn = gr.Button("Ingest", variant="primary", elem_id="ingest-btn")
                upload_msg = gr.Markdown(elem_id="upload-message")
                upload_table = gr.Dataframe(
                    headers=["file", "status", "pages", "chunks", "facts", "message"],
                    interactive=False,
                    label="this upload",
                    elem_id="upload-results",
                )
                docs_table = gr.Dataframe(
                    interactive=False, label="documents in the warehouse", elem_id="documents"
                )

            # --- Ledger ------------------------------------------------------------------------------
            with gr.Tab("Ledger", id="ledger") as ledger_tab:
                doc_choice = gr.Dropdown(label="document", choices=[], elem_id="ledger-doc")
                facts_state = gr.State([])
                facts_table = gr.Dataframe(
                    headers=FACT_COLUMNS, interactive=False, label="facts (select one)", elem_id="facts-table"
                )
                fact_html = gr.HTML("<p>Select a fact to see its sentence.</p>", elem_id="fact-html")

            # --- Pipeline ----------------------------------------------------------------------------
            with gr.Tab("Pipeline", id="pipeline") as pipeline_tab:
                gr.Markdown(
                    "Runs a Prefect flow over the uploaded documents in a child process, as `slm run` does; "
                    "the stages below advance as its log reports them."
                )
                with gr.Row():
                    flow_choice = gr.Radio(list(FLOWS), value="build-dataset", label="flow")
                    review_choice = gr.Radio(
                        list(REVIEW_POLICIES),
                        elem_id="review-policy",
                        value=settings.review_policy
                        if settings.review_policy in REVIEW_POLICIES
                        else "labelstudio",
                        label="review policy (auto: demos and CI only)",
                    )
                    teacher_choice = gr.Dropdown(
                        list(TEACHERS),
                        value=settings.teacher if settings.teacher in TEACHERS else "extractive",
                        label="teacher",
                    )
                    steps_choice = gr.Number(
                        value=None, label="max training steps (pipeline; 0: the profile's)", precision=0
                    )
                with gr.Row():
                    start_btn = gr.Button("Start run", variant="primary", elem_id="start-run")
                    watch_btn = gr.Button("Watch current run", elem_id="watch-run")
                    stop_btn = gr.Button("Stop run", variant="stop")
                run_state = gr.Markdown("No run started from this page yet.", elem_id="run-state")
                # Short polls rather than one long stream: a dropped stream froze the page mid-run (seen in CI),
                # a missed tick is made up by the next one.
                run_timer = gr.Timer(1.0, active=False)
                stage_table = gr.Dataframe(
                    headers=["stage", "state"], interactive=False, label="stages", elem_id="stages"
                )
                review_md = gr.Markdown(elem_id="review-batches")
                run_log = gr.Textbox(
                    label="flow log (last 40 lines)",
                    lines=12,
                    max_lines=12,
                    interactive=False,
                    elem_id="run-log",
                )

            # --- Rows and datasets -------------------------------------------------------------------
            with gr.Tab("Rows and datasets", id="rows") as rows_tab:
                status_choice = gr.Dropdown(["all", *STATUSES], value="all", label="status")
                rows_summary = gr.Markdown(elem_id="rows-summary")
                rows_table = gr.Dataframe(
                    headers=ROW_COLUMNS,
                    interactive=False,
                    label="rows",
                    wrap=True,
                    column_widths=["10%", "28%", "32%", "8%", "6%", "8%", "8%"],
                )
                gates_table = gr.Dataframe(interactive=False, label="gate runs (newest first)")
                datasets_table = gr.Dataframe(interactive=False, label="frozen datasets", elem_id="datasets")
                with gr.Row():
                    dataset_id = gr.Textbox(label="dataset id to download", elem_id="dataset-id")
                    download_btn = gr.Button("Get JSONL", elem_id="dataset-download")
                dataset_out = gr.File(label="dataset files", file_count="multiple", elem_id="dataset-files")

            # --- Models ------------------------------------------------------------------------------
            with gr.Tab("Models", id="models") as models_tab:
                models_head = gr.Markdown(elem_id="models-head")
                models_table = gr.Dataframe(
                    headers=MODEL_COLUMNS, interactive=False, label="models and scores", wrap=True
                )
                charts = gr.Gallery(label="newest report's charts", columns=3, height=320)
                with gr.Accordion(
                    "newest evaluation report (decisions, regressed and fixed items)", open=False
                ):
                    report_md = gr.Markdown()
                with gr.Accordion("Promote by hand (overrules the gate; recorded)", open=False):
                    with gr.Row():
                        promote_id = gr.Textbox(label="model id (or prefix)")
                        promote_reason = gr.Textbox(label="reason (recorded)")
                        promote_ok = gr.Checkbox(label="I overrule the gate")
                    promote_btn = gr.Button("Promote", variant="stop")
                    promote_msg = gr.Markdown()

            # --- Ask ---------------------------------------------------------------------------------
            with gr.Tab("Ask", id="ask"):
                with gr.Row():
                    # With the server's model planted, that one answers; else the exported champion or base.
                    models = ["champion", "base"] if generator is None else ["this server's model"]
                    which = gr.Radio(models, value=models[0], label="model", interactive=generator is None)
                    closed = gr.Checkbox(
                        False, label="closed book (the model alone; numbers flagged, not fixed)"
                    )
                chat = gr.Chatbot(label="answers", elem_id="chat", height=360)
                question = gr.Textbox(
                    label="question", placeholder="出差伙食补助费每人每天多少钱？", elem_id="question"
                )
                ask_btn = gr.Button("Ask", variant="primary", elem_id="ask-btn")
                verdict = gr.Markdown(elem_id="verdict")

            # --- Settings ----------------------------------------------------------------------------
            with gr.Tab("Settings", id="settings") as settings_tab:
                keys_table = gr.Dataframe(interactive=False, label="teacher keys (never shown)")
                servers_table = gr.Dataframe(interactive=False, label="servers")
                refresh_btn = gr.Button("Refresh")
                with gr.Accordion("effective settings (secrets masked)", open=False):
                    config_json = gr.JSON()

        # --- handlers -----------------------------------------------------------------------------------

        def on_ingest(paths: list[str] | None) -> tuple[str, pd.DataFrame, pd.DataFrame, Any, Any, Any, Any]:
            if not paths:
                raise gr.Error("Choose one or more PDF, TXT or Markdown files first.")
            results = ingest_uploads(settings, [(Path(p).name, p) for p in paths])
            added = [r for r in results if r.status == "added"]
            counts = {
                s: sum(r.status == s for r in results) for s in ("added", "unchanged", "failed", "refused")
            }
            message = (
                ", ".join(f"{n} {s}" for s, n in counts.items() if n)
                + f"; {sum(r.facts for r in results)} new facts"
            )
            table = pd.DataFrame(
                [[r.name, r.status, r.pages, r.chunks, r.facts, r.message] for r in results],
                columns=["file", "status", "pages", "chunks", "facts", "message"],
            )
            names = document_names(settings)
            chosen = added[0].name if added and added[0].name in names else (names[0] if names else None)
            facts = document_facts(settings, chosen) if chosen else []
            return (
                message,
                table,
                documents_table(settings),
                gr.update(choices=names, value=chosen),
                facts,
                facts_frame(facts),
                gr.update(value=None),
            )

        ingest_btn.click(
            on_ingest,
            [files],
            [upload_msg, upload_table, docs_table, doc_choice, facts_state, facts_table, files],
        )

        def on_doc(doc: str | None) -> tuple[list[dict[str, Any]], pd.DataFrame, str]:
            try:
                facts = document_facts(settings, doc)
            except Busy as exc:
                raise gr.Error(str(exc)) from exc
            return facts, facts_frame(facts), "<p>Select a fact to see its sentence.</p>"

        doc_choice.input(on_doc, [doc_choice], [facts_state, facts_table, fact_html])

        def on_fact(facts: list[dict[str, Any]], evt: gr.SelectData) -> str:
            fact = selected_fact(facts, evt.index, getattr(evt, "row_value", None))
            return highlighted(fact) if fact else "<p>Select a fact to see its sentence.</p>"

        facts_table.select(on_fact, [facts_state], [fact_html])

        def on_ledger_tab(current: str | None) -> tuple[Any, list[dict[str, Any]], pd.DataFrame]:
            names = document_names(settings)
            chosen = current if current in names else (names[0] if names else None)
            facts = document_facts(settings, chosen) if chosen else []
            return gr.update(choices=names, value=chosen), facts, facts_frame(facts)

        ledger_tab.select(on_ledger_tab, [doc_choice], [doc_choice, facts_state, facts_table])

        run_outputs = [run_state, stage_table, review_md, run_log, run_timer]

        def watch() -> tuple[str, pd.DataFrame, str, str, Any]:
            """Live view: the run's stages, review batch and log; the timer ticks while the run runs."""
            run = current_run(settings)
            return (*run_view(settings), gr.Timer(active=run is not None and run.running))

        def on_start(flow: str, review: str, teacher: str, steps: float | None) -> tuple[Any, ...]:
            try:
                start_run(settings, flow, teacher, review, int(steps) if steps else None)
            except ValueError as exc:
                raise gr.Error(str(exc)) from exc
            return watch()

        start_btn.click(on_start, [flow_choice, review_choice, teacher_choice, steps_choice], run_outputs)
        watch_btn.click(watch, None, run_outputs)
        run_timer.tick(watch, None, run_outputs)
        stop_btn.click(lambda: (stop_run(settings), watch())[1], None, run_outputs)
        pipeline_tab.select(watch, None, run_outputs)

        def on_rows(status: str) -> tuple[pd.DataFrame, str, pd.DataFrame, pd.DataFrame]:
            frame, text = rows_view(settings, status)
            return frame, text, gates_view(settings), datasets_view(settings)

        rows_tab.select(on_rows, [status_choice], [rows_table, rows_summary, gates_table, datasets_table])
        status_choice.input(on_rows, [status_choice], [rows_table, rows_summary, gates_table, datasets_table])
        download_btn.click(lambda d: dataset_files(settings, d.strip()), [dataset_id], [dataset_out])

        def on_models() -> tuple[pd.DataFrame, str, list[str], str]:
            frame, head = models_view(settings)
            text, shown_charts = report_view(settings)
            return frame, head, shown_charts, text

        models_tab.select(on_models, None, [models_table, models_head, charts, report_md])
        promote_btn.click(
            lambda m, r, ok: force_promote_model(settings, m, r, ok),
            [promote_id, promote_reason, promote_ok],
            [promote_msg],
        )

        def on_ask(
            text: str, history: list[dict[str, Any]] | None, model: str, closed_book: bool
        ) -> Iterator[tuple[list[dict[str, Any]], str, str]]:
            history = list(history or [])
            problem = question_problem(text)
            if problem:
                yield history, problem, text
                return
            history.append({"role": "user", "content": text})
            history.append({"role": "assistant", "content": "…"})
            yield history, "answering…", ""
            pieces: queue.Queue[str] = queue.Queue()
            outcome: dict[str, Any] = {}

            def work() -> None:
                try:
                    outcome["result"], _ = answering.ask(text, model, closed_book, pieces.put)
                except Exception as exc:  # shown on the page, the app keeps serving
                    outcome["error"] = exc

            worker = threading.Thread(target=work, daemon=True)
            worker.start()
            streamed = ""
            while worker.is_alive() or not pieces.empty():
                try:
                    streamed += pieces.get(timeout=0.2)
                except queue.Empty:
                    continue
                history[-1] = {"role": "assistant", "content": streamed + " …"}
                yield history, "answering… (numbers appear once the guard has checked them)", ""
            worker.join()
            if "error" in outcome:
                history[-1] = {"role": "assistant", "content": "(no answer)"}
                yield history, f"Could not answer: {html.escape(str(outcome['error']))}", ""
                return
            result = outcome["result"]
            history[-1] = {"role": "assistant", "content": f"{result.text}\n\n{answer_footnote(result)}"}
            yield history, verdict_markdown(result), ""

        ask_btn.click(on_ask, [question, chat, which, closed], [chat, verdict, question])
        question.submit(on_ask, [question, chat, which, closed], [chat, verdict, question])

        def on_settings() -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
            return keys_view(settings), servers_view(settings), settings_json(settings)

        settings_tab.select(on_settings, None, [keys_table, servers_table, config_json])
        refresh_btn.click(on_settings, None, [keys_table, servers_table, config_json])
        demo.load(lambda: documents_table(settings), None, [docs_table])
    return demo


__all__ = [
    "Answering",
    "UploadResult",
    "build_ui",
    "document_facts",
    "highlighted",
    "ingest_uploads",
    "stages",
    "start_run",
    "upload_name",
]
