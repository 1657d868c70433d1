"""Crash scenarios: ``kill -9`` of an ``slm`` process in the middle of a stage, then the same command again.

Each scenario runs the stage uninterrupted in a reference workspace and, in a second workspace, starts the
same command in a subprocess, SIGKILLs it at a moment chosen from something observable (the warehouse's
write-ahead log growing, a fake teacher's request count, an archive or checkpoint or ``.part`` file
appearing), runs the command again to completion and compares: the warehouse rows that matter (content-hash
ids and content, never timestamps or run ids), duplicates (count against count distinct of the ids), and
what the stage hands on (dataset id, Label Studio tasks and annotations, optimiser steps, the GGUF file).

Every scenario takes an empty work folder and returns a :class:`FaultOutcome`; ``SCENARIOS`` lists them for
``bench/faults.py`` and ``tests/reliability/test_crashes.py``.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from runtime.config import Settings, load_settings
from tests.conftest import SAMPLE_MD
from tests.reliability.outcome import FaultOutcome
from warehouse.db import connect, fetch_dicts, open_warehouse

ROOT = Path(__file__).resolve().parents[2]
POLL_S = 0.005  # how often the kill condition is checked: well below the time one unit of work takes

# The rows each stage must reproduce: (table, id expression, compared columns). Timestamps, run ids and
# durations are left out; long texts are compared by hash to keep the snapshots small.
LEDGER_TABLES: list[tuple[str, str, str]] = [
    (
        "documents",
        "doc_id",
        "doc_id, name, path, kind, size_bytes, encoding, page_count, char_count, md5(text), status, error",
    ),
    ("pages", "doc_id || ':' || page_no", "doc_id, page_no, start_char, char_count"),
    (
        "chunks",
        "chunk_id",
        "chunk_id, doc_id, seq, heading_path, md5(text), start_char, end_char, page_start, page_end",
    ),
    (
        "facts",
        "fact_id",
        "fact_id, doc_id, chunk_id, value, value_max, unit, raw, qualifier, subject, context, span_start,"
        " span_end",
    ),
]
DISTILL_TABLES: list[tuple[str, str, str]] = [
    ("teacher_calls", "cache_key", "cache_key, chunk_id, teacher, model, prompt_version, status, row_count"),
    (
        "qa_rows",
        "row_id",
        "row_id, cache_key, chunk_id, doc_id, teacher, question, answer, evidence, kind, unsure, numbers,"
        " is_numeric, evidence_found, grounded, fact_ids, verify_notes, status, reviewer",
    ),
]
DATASET_TABLES: list[tuple[str, str, str]] = [
    ("datasets", "dataset_id", "dataset_id, prompt_format, row_count, train_count, valid_count"),
    ("dataset_rows", "dataset_id || ':' || row_id", "dataset_id, row_id, split"),
]


# ---------------------------------------------------------------------------------------------------------
# Running slm


def slm_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of an ``slm`` subprocess: no inherited SLM_* settings, one thread per library (two
    shared cores), no telemetry."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLM_")}
    env.update(
        PYTHONPATH=str(ROOT),
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        GX_ANALYTICS_ENABLED="False",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        COLUMNS="200",
        SLM_TRAIN_THREADS="1",
    )
    env.update(extra or {})
    return env


def slm_command(workspace: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "flows.cli", "-w", str(workspace), *args]


class StageFailed(RuntimeError):
    """An ``slm`` command that had to succeed did not; the message carries the end of its output."""


def run_slm(
    workspace: Path, *args: str, env: dict[str, str] | None = None, timeout_s: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run ``slm -w workspace args`` to completion; raises StageFailed on a non-zero exit."""
    done = subprocess.run(
        slm_command(workspace, *args),
        cwd=workspace.parent,
        env=slm_env(env),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    if done.returncode != 0:
        raise StageFailed(
            f"slm {' '.join(args)} exited {done.returncode}:\n{done.stdout[-1500:]}\n{done.stderr[-3000:]}"
        )
    return done


def kill_when(
    workspace: Path,
    args: Sequence[str],
    ready: Callable[[], bool],
    env: dict[str, str] | None = None,
    timeout_s: float = 180,
) -> tuple[bool, str]:
    """Start ``slm args`` and SIGKILL it the moment ``ready()`` holds.

    Returns (killed, output): killed is False when the command ended before the moment came (then no fault
    was injected, and the caller says so)."""
    log = workspace.parent / f"killed-{args[0]}-{time.monotonic_ns()}.log"
    with log.open("w", encoding="utf-8") as out:
        child = subprocess.Popen(
            slm_command(workspace, *args),
            cwd=workspace.parent,
            env=slm_env(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        killed = False
        try:
            deadline = time.monotonic() + timeout_s
            while child.poll() is None and time.monotonic() < deadline:
                if ready():
                    os.kill(child.pid, signal.SIGKILL)
                    killed = True
                    break
                time.sleep(POLL_S)
        finally:
            if child.poll() is None and not killed:
                child.kill()  # the moment never came within the timeout: do not leave it running
            child.wait()
    return killed and child.returncode == -signal.SIGKILL, log.read_text(encoding="utf-8", errors="replace")


def settings_for(workspace: Path, env: dict[str, str] | None = None) -> Settings:
    """The settings an ``slm`` subprocess given ``env`` works with, for running a step in this process.

    The clean reference runs happen in this process: the same functions the commands call, without paying
    another interpreter start (seconds on a busy machine) for a run that is not the one being killed."""
    overrides = {k.removeprefix("SLM_").lower(): v for k, v in (env or {}).items() if k.startswith("SLM_")}
    return load_settings(workspace, **overrides)


def warehouse_path(workspace: Path) -> Path:
    return load_settings(workspace).warehouse_path


def wal_path(workspace: Path) -> Path:
    path = warehouse_path(workspace)
    return path.with_name(path.name + ".wal")


def wal_grew(workspace: Path, commits: int) -> Callable[[], bool]:
    """True once the write-ahead log has been seen growing ``commits`` times: that many transactions of the
    running command are durable (the file starts without a WAL: a clean close checkpoints it away)."""
    wal = wal_path(workspace)
    seen: list[int] = []

    def ready() -> bool:
        size = wal.stat().st_size if wal.exists() else 0
        if size > (seen[-1] if seen else 0):
            seen.append(size)
        return len(seen) >= commits

    return ready


# ---------------------------------------------------------------------------------------------------------
# Comparing warehouses


def snapshot(workspace: Path, tables: list[tuple[str, str, str]]) -> dict[str, Counter[tuple[Any, ...]]]:
    """Table -> multiset of compared rows."""
    with open_warehouse(warehouse_path(workspace), read_only=True) as con:
        return {
            table: Counter(
                tuple(_hashable(v) for v in row)
                for row in con.execute(f"SELECT {cols} FROM {table}").fetchall()
            )
            for table, _, cols in tables
        }


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def duplicate_ids(workspace: Path, tables: list[tuple[str, str, str]]) -> dict[str, int]:
    """Table -> rows whose id is stored more than once (count - count distinct)."""
    with open_warehouse(warehouse_path(workspace), read_only=True) as con:
        found = {}
        for table, key, _ in tables:
            rows = fetch_dicts(con.execute(f"SELECT count(*) AS n, count(DISTINCT {key}) AS d FROM {table}"))
            found[table] = int(rows[0]["n"]) - int(rows[0]["d"])
        return found


def compare_warehouses(
    outcome: FaultOutcome, reference: Path, crashed: Path, tables: list[tuple[str, str, str]]
) -> None:
    """Rows of the clean run missing after the crash count as lost; rows stored twice, or rows the clean run
    does not have, count as duplicates. The notes say which table."""
    expected, actual = snapshot(reference, tables), snapshot(crashed, tables)
    for table, _, _ in tables:
        missing = sum((expected[table] - actual[table]).values())
        extra = sum((actual[table] - expected[table]).values())
        outcome.rows_lost += missing
        outcome.duplicates += extra
        if missing or extra:
            _note(outcome, f"{table}: {missing} missing, {extra} extra")
    for table, count in duplicate_ids(crashed, tables).items():
        outcome.duplicates += count
        if count:
            _note(outcome, f"{table}: {count} duplicate ids")


def _note(outcome: FaultOutcome, text: str) -> None:
    outcome.notes = f"{outcome.notes}; {text}" if outcome.notes else text


def _rerun(outcome: FaultOutcome, workspace: Path, *args: str, env: dict[str, str] | None = None) -> bool:
    """The same command again after the kill; a failure is recorded, not raised (it is what we measure)."""
    try:
        run_slm(workspace, *args, env=env)
    except StageFailed as exc:
        outcome.problems.append(f"re-run failed: {exc}")
        return False
    outcome.runs_completed += 1
    return True


def _killed(outcome: FaultOutcome, fault: str, killed: bool, output: str) -> None:
    if killed:
        outcome.add_fault(fault)
    else:
        # Nothing was tested: the stage was too quick for its kill moment (or the moment never came).
        outcome.problems.append(f"{fault}: the command finished before the kill moment:\n{output[-800:]}")


def _new_workspaces(work: Path) -> tuple[Path, Path]:
    reference, crashed = work / "reference", work / "crashed"
    for ws in (reference, crashed):
        ws.mkdir(parents=True, exist_ok=True)
        connect(warehouse_path(ws)).close()  # migrated and checkpointed: no WAL until the stage writes
    return reference, crashed


SCHOOLS = "甲乙丙丁戊己庚辛"
_ARTICLE = re.compile(r"^(第[一二三四五六七八九十百]+条)　", re.M)


def rule_documents(folder: Path, count: int) -> Path:
    """``count`` rule documents: the sample for different schools, each article naming its school, so that
    no two documents share a chunk (a shared clause is one teacher call, which would hide half the work)."""
    folder.mkdir(parents=True, exist_ok=True)
    sample = SAMPLE_MD.read_text(encoding="utf-8")
    for i, school in enumerate(SCHOOLS[:count], 1):
        text = _ARTICLE.sub(rf"\1　{school}校规定：", sample.replace("学校", f"{school}校"))
        (folder / f"rules_{i:02d}.md").write_text(f"# {school}校财务管理规定\n\n{text}", encoding="utf-8")
    return folder


def dataset_ids(workspace: Path) -> list[str]:
    with open_warehouse(warehouse_path(workspace), read_only=True) as con:
        return [r for (r,) in con.execute("SELECT dataset_id FROM datasets ORDER BY dataset_id").fetchall()]


def freeze(workspace: Path, distil: bool = False) -> None:
    """(Extractive distillation,) auto review and the release gate: the dataset a crash-free pipeline would
    train on. In this process, not through ``slm``: it is not the step under test, and Great Expectations
    then loads once for every scenario instead of once per command."""
    from expectations.runner import run_gate
    from review.policy import apply_auto_policy
    from tasks.distill.distill import distill, make_teacher
    from tasks.train.dataset import freeze_dataset

    settings = load_settings(workspace, per_fact=1, teacher="extractive")
    with open_warehouse(settings.warehouse_path) as con:
        if distil:
            distill(con, settings, make_teacher(settings))
        apply_auto_policy(con, settings.similarity_threshold)
        report = run_gate(con, settings, "release")
        if not report.success:
            raise StageFailed(f"{workspace}: release gate failed: {report.message}")
        freeze_dataset(con, settings, report.gate_run_id)


def _same_dataset(outcome: FaultOutcome, reference: Path, crashed: Path) -> None:
    expected, actual = dataset_ids(reference), dataset_ids(crashed)
    if not expected or expected != actual:
        outcome.rows_lost += max(len(expected), 1)
        _note(outcome, f"dataset ids differ: clean {expected}, after the crash {actual}")


# ---------------------------------------------------------------------------------------------------------
# Scenarios


INGEST_DOCS = 5


def _ingest(workspace: Path, docs: Path, env: dict[str, str] | None = None) -> None:
    from tasks.ingest.documents import ingest_paths

    settings = settings_for(workspace, env)
    with open_warehouse(settings.warehouse_path) as con:
        failed = [r.message for r in ingest_paths(con, [docs], settings) if r.status == "failed"]
    if failed:
        raise StageFailed(f"{workspace}: ingest failed: {failed}")


def crash_during_ingest(work: Path) -> FaultOutcome:
    """Five documents; killed once the WAL has grown twice (at least one document committed), i.e. while a
    later one is being read or written. The re-run adds the rest; ledger, distilled rows and dataset id match."""
    outcome = FaultOutcome("kill -9 during ingest")
    docs = rule_documents(work / "docs", INGEST_DOCS)
    reference, crashed = _new_workspaces(work)
    _ingest(reference, docs)
    killed, output = kill_when(crashed, ["ingest", str(docs)], wal_grew(crashed, 2))
    _killed(outcome, "kill -9 during ingest", killed, output)
    _note(outcome, f"killed with {_count(crashed, 'documents')} of {INGEST_DOCS} documents stored")
    if _rerun(outcome, crashed, "ingest", str(docs)):
        compare_warehouses(outcome, reference, crashed, LEDGER_TABLES)
        for ws in (reference, crashed):
            freeze(ws, distil=True)
        compare_warehouses(outcome, reference, crashed, DISTILL_TABLES + DATASET_TABLES)
        _same_dataset(outcome, reference, crashed)
    return outcome


def _after_a_flush(workspace: Path, calls: list[Any], more: int = 8) -> Callable[[], bool]:
    """True once a group of teacher results is committed (the WAL grew past the run's start record) and the
    teacher has since been asked ``more`` times: answers that exist only in the killed process's memory."""
    durable = wal_grew(workspace, 2)
    at_flush: list[int] = []

    def ready() -> bool:
        if not at_flush and durable():
            at_flush.append(len(calls))
        return bool(at_flush) and len(calls) >= at_flush[0] + more

    return ready


def _distill(workspace: Path, env: dict[str, str]) -> None:
    from tasks.distill.distill import distill, make_teacher

    settings = settings_for(workspace, env)
    with open_warehouse(settings.warehouse_path) as con:
        distill(con, settings, make_teacher(settings))


def crash_during_distill(work: Path) -> FaultOutcome:
    """A fake OpenAI-compatible teacher answering each chunk after 0.15 s, four chunks at a time; killed
    after the first group of results is committed, once eight more chunks have been sent to the teacher
    (answers held only in memory). The re-run asks only for what was not stored; rows, calls and the
    dataset id match the clean run."""
    from tests.fakes.openai_server import FakeOpenAIServer

    outcome = FaultOutcome("kill -9 during distillation")
    docs = rule_documents(work / "docs", 2)
    reference, crashed = _new_workspaces(work)
    with FakeOpenAIServer(latency_s=0.15) as server:
        env = {
            "SLM_TEACHER": "openai",
            "SLM_OPENAI_BASE_URL": server.base_url,
            "SLM_OPENAI_API_KEY": "sk-local-fake",
            "SLM_OPENAI_MODEL": "fake-teacher",
            "SLM_DISTILL_CONCURRENCY": "4",
            "SLM_TEACHER_BACKOFF_S": "0.01",
        }
        for ws in (reference, crashed):
            _ingest(ws, docs, env)
        _distill(reference, env)
        total = len(server.calls)
        before = len(server.calls)
        killed, output = kill_when(crashed, ["distill"], _after_a_flush(crashed, server.calls), env=env)
        _killed(outcome, "kill -9 during distillation", killed, output)
        killed_calls = len(server.calls) - before
        _note(outcome, f"killed with {_count(crashed, 'teacher_calls')} of {total} teacher calls stored")
        if _rerun(outcome, crashed, "distill", env=env):
            rerun_calls = len(server.calls) - before - killed_calls
            _note(outcome, f"teacher calls: clean {total}, killed run {killed_calls}, re-run {rerun_calls}")
            if rerun_calls >= total:
                _note(
                    outcome, "the re-run asked the teacher for every chunk again: nothing stored was reused"
                )
    compare_warehouses(outcome, reference, crashed, DISTILL_TABLES)
    for ws in (reference, crashed):
        freeze(ws)
    compare_warehouses(outcome, reference, crashed, DATASET_TABLES)
    _same_dataset(outcome, reference, crashed)
    return outcome


def _count(workspace: Path, table: str, where: str = "true") -> int:
    with open_warehouse(warehouse_path(workspace), read_only=True) as con:
        return int(con.execute(f"SELECT count(*) FROM {table} WHERE {where}").fetchone()[0])


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _dataset_workspaces(reference: Path, crashed: Path) -> None:
    """The sample ingested, distilled and frozen in ``reference`` (in this process: training is the step
    under test), and the same warehouse and dataset copied to ``crashed`` (half the setup time)."""
    import shutil

    from tasks.ingest.documents import ingest_file

    settings = load_settings(reference)
    with open_warehouse(settings.warehouse_path) as con:
        ingest_file(con, SAMPLE_MD, settings)
    freeze(reference, distil=True)
    shutil.copyfile(settings.warehouse_path, warehouse_path(crashed))
    shutil.copytree(reference / "datasets", crashed / "datasets")
    with open_warehouse(warehouse_path(crashed)) as con:  # the copy's dataset lives in its own workspace
        con.execute("UPDATE datasets SET path = replace(path, ?, ?)", [str(reference), str(crashed)])


TRAIN_STEPS = 12
TRAIN_ENV = {"SLM_TRAIN_SAVE_STEPS": "3", "SLM_TRAIN_EARLY_STOPPING_PATIENCE": "1000"}


def _run_dir(workspace: Path) -> Path | None:
    runs = sorted((workspace / "artifacts" / "runs").glob("*"))
    return runs[0] if runs else None


def _has_checkpoint(workspace: Path) -> Callable[[], bool]:
    from tasks.train.train import last_complete_checkpoint

    def ready() -> bool:
        run = _run_dir(workspace)
        return run is not None and last_complete_checkpoint(run / "checkpoints") is not None

    return ready


def _adapter_report(workspace: Path) -> tuple[dict[str, Any], dict[str, tuple[int, ...]]]:
    """The adapter's metadata and its tensors' shapes (loading the file proves it is whole)."""
    import json

    from safetensors import safe_open

    run = _run_dir(workspace)
    assert run is not None, f"{workspace}: no training run folder"
    adapter = run / "adapter"
    meta = json.loads((adapter / "slm_adapter.json").read_text(encoding="utf-8"))
    with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as weights:
        shapes = {name: tuple(weights.get_slice(name).get_shape()) for name in weights.keys()}  # noqa: SIM118
    return meta, shapes


def crash_during_training(work: Path) -> FaultOutcome:
    """LoRA on the tiny Llama, 16 steps with a checkpoint every 4; killed the moment the first complete
    checkpoint exists. ``slm train --resume`` must end with the clean run's 16 steps, each trained once, a
    loadable adapter of the same shape, and one challenger and one training run in the warehouse."""
    from tests.tiny import build_tiny_base

    outcome = FaultOutcome("kill -9 during training")
    base = str(build_tiny_base(work / "tiny-base"))
    reference, crashed = _new_workspaces(work)
    _dataset_workspaces(reference, crashed)
    args = ["train", "--base", base, "--max-steps", str(TRAIN_STEPS)]
    from tasks.train.challenger import train_challenger

    train_challenger(
        settings_for(reference, slm_env(TRAIN_ENV)), base=base, max_steps=TRAIN_STEPS, progress=False
    )
    killed, output = kill_when(crashed, args, _has_checkpoint(crashed), env=TRAIN_ENV)
    _killed(outcome, "kill -9 during training", killed, output)
    if not _rerun(outcome, crashed, *args, "--resume", env=TRAIN_ENV):
        return outcome
    (clean, clean_shapes), (resumed, shapes) = _adapter_report(reference), _adapter_report(crashed)
    steps = [step for step, train_loss, _ in resumed["loss_curve"] if train_loss is not None]
    if resumed["optimizer_steps"] != clean["optimizer_steps"] or steps != list(range(1, TRAIN_STEPS + 1)):
        outcome.rows_lost += abs(TRAIN_STEPS - len(set(steps)))
        outcome.duplicates += len(steps) - len(set(steps))
        _note(outcome, f"optimiser steps: clean {clean['optimizer_steps']}, resumed {steps}")
    if not resumed.get("resumed_from"):
        outcome.problems.append("the re-run trained from scratch instead of resuming from the checkpoint")
    if shapes != clean_shapes:
        outcome.rows_lost += 1
        _note(outcome, "the resumed adapter's tensors differ in names or shapes from the clean run's")
    for table in ("models", "train_runs"):
        stored = _count(crashed, table)
        outcome.duplicates += max(stored - 1, 0)
        outcome.rows_lost += 1 if stored == 0 else 0
        if stored != 1:
            _note(outcome, f"{table}: {stored} rows after the resumed run, expected 1")
    return outcome


def _medium_base(folder: Path) -> Path:
    """The tiny base's tokenizer with a wider model (27 MB as f16), so writing the GGUF takes long enough
    to be caught in the middle."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.tiny import build_tiny_base

    build_tiny_base(folder)
    config = LlamaConfig.from_pretrained(folder)
    config.hidden_size, config.intermediate_size, config.num_hidden_layers = 512, 1408, 4
    config.num_attention_heads, config.num_key_value_heads = 8, 4
    torch.manual_seed(0)
    LlamaForCausalLM(config).float().save_pretrained(folder)
    return folder


def _part_file(folder: Path, pattern: str) -> Callable[[], bool]:
    return lambda: any(folder.glob(pattern))


def _broken_ggufs(folder: Path) -> list[str]:
    """GGUF files under their final names that do not read back whole."""
    from tasks.export.export import read_gguf

    broken = []
    for path in sorted(folder.glob("*.gguf")):
        try:
            read_gguf(path)
        except Exception as exc:  # any failure to read is a partial or corrupt file
            broken.append(f"{path.name}: {type(exc).__name__}: {exc}")
    return broken


def _export_base(workspace: Path, env: dict[str, str]) -> None:
    """What ``slm export --model base --quant q8_0`` does, in this process."""
    from tasks.export.export import export_model

    settings = settings_for(workspace, env)
    with open_warehouse(settings.warehouse_path) as con:
        export_model(
            None,
            settings.base_model,
            settings.artifacts_dir / "gguf",
            "q8_0",
            cache_dir=settings.models_cache,
            con=con,
        )


def crash_during_export(work: Path) -> FaultOutcome:
    """``slm export --model base --quant q8_0`` of a 13M-parameter Llama: killed once while the f16 file is
    written (its ``.part`` appears), then again while it is quantised (the q8_0 ``.part`` appears), then run
    to the end. No partial file may ever sit under a final name; the last run writes the same bytes as the
    clean run, llama.cpp's reader loads them, and the export is recorded once."""
    import gguf

    outcome = FaultOutcome("kill -9 during export")
    base = str(_medium_base(work / "medium-base"))
    reference, crashed = _new_workspaces(work)
    env = {"SLM_BASE_MODEL": base}
    args = ["export", "--model", "base", "--quant", "q8_0"]
    _export_base(reference, env)
    out = crashed / "artifacts" / "gguf"
    for fault, pattern in (
        ("kill -9 while writing the f16 GGUF", ".*-f16.gguf.part"),
        ("kill -9 while quantising", ".*-q8_0.gguf.part"),
    ):
        killed, output = kill_when(crashed, args, _part_file(out, pattern), env=env)
        _killed(outcome, fault, killed, output)
        for broken in _broken_ggufs(out):
            outcome.rows_lost += 1
            _note(outcome, f"after '{fault}' a partial file sits under its final name: {broken}")
    if not _rerun(outcome, crashed, *args, env=env):
        return outcome
    expected = sorted((reference / "artifacts" / "gguf").glob("*.gguf"))
    finished = sorted(out.glob("*.gguf"))
    if [p.name for p in finished] != [p.name for p in expected]:
        _note(
            outcome,
            f"files: clean {[p.name for p in expected]}, after the crashes {[p.name for p in finished]}",
        )
        outcome.rows_lost += len({p.name for p in expected} - {p.name for p in finished})
        outcome.duplicates += len({p.name for p in finished} - {p.name for p in expected})
    leftovers = sorted(p.name for p in out.glob("*.part"))
    if leftovers:
        _note(outcome, f"temporary files left behind: {leftovers}")
        outcome.duplicates += len(leftovers)
    for clean, path in zip(expected, finished, strict=False):
        if _sha256(clean) != _sha256(path):
            outcome.rows_lost += 1
            _note(outcome, f"{path.name}: different bytes from the clean run's export")
        reader = gguf.GGUFReader(path)  # llama.cpp's own reader: header, metadata and every tensor
        if not reader.tensors:
            outcome.rows_lost += 1
            _note(outcome, f"{path.name}: no tensors")
    compare_warehouses(
        outcome,
        reference,
        crashed,
        [("exports", "export_id", "export_id, model_id, quant, size_bytes, source")],
    )
    return outcome


REVIEW_ROWS = 4  # rows per review batch


def _verdicts(con: Any, rows: list[dict[str, Any]]) -> list[tuple[list[dict[str, Any]], str]]:
    """(Label Studio result, expected row status) per row: accept, reject, and a correction that states the
    chunk's own number (trusted), in turn."""
    from review.labeling import COMMENT, CORRECTED_ANSWER, CORRECTED_NUMBERS, VERDICT
    from warehouse import review as queries

    def result(verdict: str, texts: dict[str, str]) -> list[dict[str, Any]]:
        out = [
            {"from_name": VERDICT, "to_name": "answer", "type": "choices", "value": {"choices": [verdict]}}
        ]
        out += [
            {"from_name": name, "to_name": "answer", "type": "textarea", "value": {"text": [text]}}
            for name, text in texts.items()
        ]
        return out

    facts = queries.chunk_facts(con, sorted({r["chunk_id"] for r in rows}))
    plan = []
    for i, row in enumerate(rows):
        fact = (facts.get(row["chunk_id"]) or [None])[0]
        if i % 3 == 2 and fact is not None:
            answer = f"按规定，标准为{fact['raw']}。"
            plan.append(
                (result("correct", {CORRECTED_ANSWER: answer, CORRECTED_NUMBERS: fact["raw"]}), "corrected")
            )
        elif i % 3 == 1:
            plan.append((result("reject", {COMMENT: "not usable"}), "rejected"))
        else:
            plan.append((result("accept", {}), "approved"))
    return plan


def _fact_correct() -> list[dict[str, Any]]:
    """A fact task's annotation: the number, unit and subject are right (fact and row tasks share the
    labelling interface, so this is the "accept" choice)."""
    from review.labeling import VERDICT

    return [{"from_name": VERDICT, "to_name": "answer", "type": "choices", "value": {"choices": ["accept"]}}]


def _fact_tasks(con: Any, batch_id: str) -> list[tuple[str, int | None]]:
    """(fact id, Label Studio task id) of a batch's fact tasks (fact-first review)."""
    return [
        (str(f), t)
        for f, t in con.execute(
            "SELECT fact_id, ls_task_id FROM review_tasks WHERE batch_id = ? AND kind = 'fact' ORDER BY fact_id",
            [batch_id],
        ).fetchall()
    ]


def _ls_tasks(client: Any, project_ids: list[int]) -> list[tuple[int, str, int]]:
    """(project, row or fact id, annotation count) of every task in the projects."""
    found = []
    for project in project_ids:
        for task in client.tasks.list(project=project, fields="all"):
            data = task.data if hasattr(task, "data") else task["data"]
            annotations = getattr(task, "annotations", None) or []
            found.append((project, data.get("row_id") or data["fact_id"], len(annotations)))
    return found


def _project_has_tasks(client: Any) -> Callable[[], bool]:
    """True once Label Studio holds an imported task of a new project (polled at most every 50 ms: each
    look is two HTTP requests)."""
    last = [0.0]

    def ready() -> bool:
        if time.monotonic() - last[0] < 0.05:
            return False
        last[0] = time.monotonic()
        return any(
            next(iter(client.tasks.list(project=int(p.id))), None) is not None for p in client.projects.list()
        )

    return ready


def crash_during_review(work: Path) -> FaultOutcome:
    """A real Label Studio. ``slm review push`` is killed the moment its tasks exist in Label Studio (the
    warehouse may not know their ids yet) and run again; a second batch is pushed; every task is annotated
    through the API (accept, reject, a trusted correction); ``slm review sync`` is killed the moment its
    first export archive appears (before or while it is applied) and run again. Afterwards every
    Label Studio task exists once, and every annotation is applied to its row exactly once."""
    from review import push, server
    from warehouse import review as queries

    outcome = FaultOutcome("kill -9 during review push and sync")
    workspace = work / "ws"
    workspace.mkdir(parents=True)
    env = {
        "SLM_LABELSTUDIO_PORT": str(server.free_port()),
        "SLM_LABELSTUDIO_ATTEMPTS": "2",
        "SLM_LABELSTUDIO_BACKOFF_S": "0.05",
    }
    settings = settings_for(workspace, env)
    server.ensure_installed(settings)
    # Label Studio's first start takes about a minute (migrations): the rows are made meanwhile.
    starting = ThreadPoolExecutor(max_workers=1).submit(server.start, settings)
    try:
        with open_warehouse(settings.warehouse_path) as con:
            from tasks.distill.distill import distill, make_teacher
            from tasks.ingest.documents import ingest_file

            ingest_file(con, SAMPLE_MD, settings)
            distill(con, settings.model_copy(update={"per_fact": 1}), make_teacher(settings, "extractive"))
            waiting = len(queries.review_candidates(con))
        starting.result()
        client = server.client_for(settings)
        if waiting < 2 * REVIEW_ROWS:
            raise StageFailed(f"only {waiting} rows wait for review; the scenario needs {2 * REVIEW_ROWS}")

        push_args = ["review", "push", "--limit", str(REVIEW_ROWS)]
        killed, output = kill_when(workspace, push_args, _project_has_tasks(client), env=env)
        _killed(outcome, "kill -9 during review push", killed, output)
        with open_warehouse(settings.warehouse_path, read_only=True) as con:
            recorded = len(queries.list_batches(con))
            unconfirmed = len(queries.batches_missing_task_ids(con))
        more = False
        if recorded and not unconfirmed:
            # The re-run is a new push. The first batch's fact tasks may decide every row still waiting, and
            # then there is nothing left for a second batch (plan_batch is what the push itself runs first).
            with open_warehouse(settings.warehouse_path) as con:
                more = push.plan_batch(con, settings.similarity_threshold, limit=REVIEW_ROWS).tasks > 0
        _note(outcome, f"push killed with {recorded} batch recorded, {unconfirmed} without its task ids")
        # The re-run finishes the interrupted batch and stops (an uninterrupted `push --limit 4` makes one);
        # only when the killed push had already recorded every task id is the re-run a second, new push, and
        # that makes a batch only if something is left to review.
        expected_batches = 2 if recorded and not unconfirmed and more else 1
        _rerun(outcome, workspace, *push_args, env=env)
        with open_warehouse(settings.warehouse_path) as con:
            after_rerun = len(queries.list_batches(con))
            push.push_batch(con, settings, client, limit=REVIEW_ROWS)  # another batch, pushed cleanly
            batches = queries.list_batches(con)
        if after_rerun != expected_batches:
            outcome.duplicates += abs(after_rerun - expected_batches)
            _note(outcome, f"{after_rerun} review batches after the push re-run, expected {expected_batches}")
        with open_warehouse(settings.warehouse_path) as con:
            tasks = {b["batch_id"]: queries.batch_tasks(con, b["batch_id"]) for b in batches}
            fact_tasks = {b["batch_id"]: _fact_tasks(con, b["batch_id"]) for b in batches}
            expected: dict[str, tuple[int, str]] = {}  # row id -> (annotation id, status)
            expected_facts: dict[str, int] = {}  # fact id -> annotation id (every fact judged correct)
            for batch in batches:
                rows = tasks[batch["batch_id"]]
                for row, (result, status) in zip(rows, _verdicts(con, rows), strict=True):
                    if row["ls_task_id"] is None:
                        raise StageFailed(
                            f"row {row['row_id']} has no Label Studio task after the push re-run"
                        )
                    made = client.annotations.create(id=int(row["ls_task_id"]), result=result)
                    expected[row["row_id"]] = (int(made.id), status)
                # Label Studio task -> its annotation (the facts of one sentence share a task).
                made_for: dict[int, int] = {}
                for fact_id, ls_task_id in fact_tasks[batch["batch_id"]]:
                    if ls_task_id is None:
                        raise StageFailed(f"fact {fact_id} has no Label Studio task after the push re-run")
                    if int(ls_task_id) not in made_for:
                        made = client.annotations.create(id=int(ls_task_id), result=_fact_correct())
                        made_for[int(ls_task_id)] = int(made.id)
                    expected_facts[fact_id] = made_for[int(ls_task_id)]
        projects = sorted(int(b["ls_project_id"]) for b in batches)

        exports = workspace / "review" / "exports"
        killed, output = kill_when(workspace, ["review", "sync"], _part_file(exports, "*.json"), env=env)
        _killed(outcome, "kill -9 during review sync", killed, output)
        _rerun(outcome, workspace, "review", "sync", env=env)

        in_ls = _ls_tasks(client, projects)
        sentences = sum(len({t for _, t in f}) for f in fact_tasks.values())  # one task per sentence
        pushed = sum(len(rows) for rows in tasks.values()) + sentences
        outcome.duplicates += len(in_ls) - len({row for _, row, _ in in_ls})
        outcome.duplicates += sum(max(n - 1, 0) for _, _, n in in_ls)
        outcome.rows_lost += max(pushed - len({row for _, row, _ in in_ls}), 0)
        if len(in_ls) != pushed:
            _note(outcome, f"{len(in_ls)} Label Studio tasks for {pushed} pushed rows")
        with open_warehouse(settings.warehouse_path, read_only=True) as con:
            applied = fetch_dicts(
                con.execute(
                    "SELECT t.row_id, t.annotation_id, r.status, b.status AS batch_status FROM review_tasks t"
                    " JOIN qa_rows r USING (row_id) JOIN review_batches b USING (batch_id)"
                    " WHERE coalesce(t.kind, 'row') = 'row'"
                )
            )
            judged = dict(
                con.execute(
                    "SELECT t.fact_id, v.annotation_id FROM review_tasks t"
                    " LEFT JOIN fact_verdicts v USING (fact_id) WHERE t.kind = 'fact'"
                ).fetchall()
            )
        for fact_id, annotation_id in expected_facts.items():
            if judged.get(fact_id) != annotation_id:
                outcome.annotations_lost += 1
                _note(
                    outcome,
                    f"fact {fact_id}: verdict from annotation {judged.get(fact_id)}, expected {annotation_id}",
                )
        by_row = Counter(a["row_id"] for a in applied)
        outcome.duplicates += sum(n - 1 for n in by_row.values())
        for a in applied:
            annotation_id, status = expected.get(a["row_id"], (None, None))
            if a["annotation_id"] != annotation_id or a["status"] != status:
                outcome.annotations_lost += 1
                _note(
                    outcome,
                    f"row {a['row_id']}: annotation {a['annotation_id']} status {a['status']},"
                    f" expected {annotation_id} {status}",
                )
        outcome.annotations_lost += len(set(expected) - set(by_row))
        unsynced = sorted({a["batch_status"] for a in applied} - {"synced"})
        if unsynced:
            outcome.problems.append(f"batches left {unsynced} after the sync re-run")
        _note(
            outcome,
            f"{len(batches)} batches, {pushed} tasks, {len(expected)} row and {len(expected_facts)} fact annotations",
        )
    finally:
        starting.exception()  # let a start still under way finish, so that stop finds the server it made
        server.stop(settings)
    return outcome


SCENARIOS: list[Callable[[Path], FaultOutcome]] = [
    crash_during_ingest,
    crash_during_distill,
    crash_during_review,
    crash_during_training,
    crash_during_export,
]
