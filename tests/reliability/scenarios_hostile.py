"""Bad and hostile input: every broken file ends with one clear line or correct rows, never a crash, a hang
or a half-written document; planted instructions never make an invented number pass verification.

Each scenario takes an empty work folder and returns a :class:`FaultOutcome` (``SCENARIOS`` lists them for
``bench/faults.py`` and ``tests/reliability/test_hostile_inputs.py``). How the counters are used here:

* ``faults``: one per hostile file, byte mutation or injected document, by kind;
* ``runs_completed``: files (or runs) that ended as the corpus says they must;
* ``rows_lost``: rows of a good document gone after the hostile files, plus rows a refused file left
  behind (a half-written document), plus rows with an invented number that verification trusted;
* ``duplicates``: rows added by ingesting the same bytes again;
* ``notes``: every problem found, one per line (empty when the scenario passed).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from runtime.config import Settings, load_settings
from tasks.distill.distill import distill, make_teacher
from tasks.ingest.documents import IngestResult, ingest_file, ingest_paths, shown
from tasks.ingest.extract import content_id
from tests.fakes import Reply, obey_injection
from tests.fakes.openai_server import FakeOpenAIServer
from tests.reliability.hostile import (
    GOOD_FACTS,
    GOOD_PAGES,
    INJECTED_NUMBER,
    INJECTIONS,
    RULE,
    Case,
    pdf_bytes,
    write_corpus,
)
from tests.reliability.outcome import FaultOutcome
from warehouse import ledger
from warehouse.db import connect, fetch_dicts, open_warehouse

ROOT = Path(__file__).resolve().parents[2]
FILE_TIMEOUT_S = 60.0  # one file; the slowest good case (a 200,000-character line) takes a few seconds
CLI_TIMEOUT_S = 240.0  # the whole corpus through `slm ingest` in a subprocess
TABLES = ("documents", "pages", "chunks", "facts")


@dataclass
class Checked:
    """What one hostile file did."""

    case: Case
    path: Path
    result: IngestResult | None
    problems: list[str] = field(default_factory=list)


def workspace(work: Path, **overrides: Any) -> Settings:
    """Settings for a workspace under ``work``; the limits the corpus is built around are set explicitly,
    so that a caller's SLM_* variables cannot change the verdicts."""
    limits = {"max_file_mb": 200.0, "max_pages": 1000, "min_text_chars_per_page": 20}
    return load_settings(work / "ws", **{**limits, **overrides})


def run_bounded(fn: Callable[[], Any], timeout_s: float) -> tuple[Any, BaseException | None, bool]:
    """``fn()`` in a daemon thread: (value, exception, finished). A hang is reported, not waited out."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # everything, for the report: this is what must never happen
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True, name="hostile-ingest")
    thread.start()
    thread.join(timeout_s)
    return box.get("value"), box.get("error"), not thread.is_alive()


def fact_values(con: duckdb.DuckDBPyConnection, doc_id: str) -> set[str]:
    rows = con.execute("SELECT value, value_max FROM facts WHERE doc_id = ?", [doc_id]).fetchall()
    return {v for row in rows for v in row if v is not None}


def check_case(con: duckdb.DuckDBPyConnection, settings: Settings, case: Case, path: Path) -> Checked:
    """Ingest one hostile file in-process (bounded) and check the result against the case's contract."""
    before = ledger.table_counts(con)
    result, error, finished = run_bounded(lambda: ingest_file(con, path, settings), FILE_TIMEOUT_S)
    checked = Checked(case, path, result)
    problems = checked.problems
    if not finished:
        problems.append(f"{case.name!r}: no result after {FILE_TIMEOUT_S:.0f} s (hang)")
        return checked
    if error is not None:
        problems.append(f"{case.name!r}: raised {type(error).__name__}: {error}")
        return checked
    assert isinstance(result, IngestResult)
    after = ledger.table_counts(con)
    message = result.message
    if "\n" in message or "\r" in message:
        problems.append(f"{case.name!r}: message is not one line: {message!r}")
    if not message.startswith(shown(path) + ": "):
        problems.append(f"{case.name!r}: message does not start with the file: {message!r}")
    expected = case.expect if case.expect != "skipped" else "refused"
    status = "refused" if result.status == "failed" else "added"
    if expected != "either" and status != expected:
        problems.append(f"{case.name!r}: expected {expected}, got {result.status}: {message}")
    if status == "refused":
        if case.reason and case.reason not in message:
            problems.append(f"{case.name!r}: reason {case.reason!r} not in {message!r}")
        grown = {t: after[t] - before[t] for t in TABLES if after[t] != before[t]}
        if set(grown) - {"documents"} or grown.get("documents", 0) > 1:
            problems.append(f"{case.name!r}: refused but left rows behind: {grown}")
        if result.doc_id and ledger.document_status(con, result.doc_id) != "failed":
            problems.append(f"{case.name!r}: refused but not recorded as failed")
    elif result.doc_id:
        values = fact_values(con, result.doc_id)
        counts = ledger.document_counts(con, result.doc_id)
        if not (counts["documents"] == 1 and counts["pages"] >= 1 and counts["chunks"] >= 1):
            problems.append(f"{case.name!r}: added but incomplete: {counts}")
        wanted = set(case.facts) if case.facts is not None else None
        if wanted is not None and case.expect == "added" and values != wanted:
            problems.append(f"{case.name!r}: facts {sorted(values)} != expected {sorted(wanted)}")
        if wanted is not None and case.expect == "either" and not values <= wanted:
            problems.append(f"{case.name!r}: recovered facts {sorted(values - wanted)} the file never had")
    return checked


def _good_document(con: duckdb.DuckDBPyConnection, settings: Settings, folder: Path) -> tuple[str, dict]:
    """A good PDF ingested first: hostile files after it must not take anything of it away."""
    path = folder / "good.pdf"
    path.write_bytes(pdf_bytes(GOOD_PAGES))
    result = ingest_file(con, path, settings)
    assert result.status == "added" and result.doc_id, result.message
    return result.doc_id, ledger.document_counts(con, result.doc_id)


def _lost(con: duckdb.DuckDBPyConnection, doc_id: str, counts: dict[str, int]) -> int:
    now = ledger.document_counts(con, doc_id)
    return sum(max(0, counts[t] - now[t]) for t in TABLES)


def ingest_each_hostile_file(
    work: Path, cases: list[Case] | None = None
) -> tuple[FaultOutcome, list[Checked]]:
    """Every corpus file through ``ingest_file`` in-process, one at a time, then each once more."""
    outcome = FaultOutcome("hostile files, one by one (in-process)")
    settings = workspace(work)
    written = write_corpus(work / "corpus", cases)
    checked: list[Checked] = []
    con = connect(settings.warehouse_path)
    try:
        good_id, good_counts = _good_document(con, settings, work)
        for case, path in written:
            outcome.add_fault(case.kind)
            result = check_case(con, settings, case, path)
            checked.append(result)
            if not result.problems:
                outcome.runs_completed += 1
            outcome.rows_lost += sum("left rows behind" in p for p in result.problems)
        # The same bytes again: nothing new (added files are unchanged, refused ones stay refused).
        counts = ledger.table_counts(con)
        for case, path in written:
            again, error, finished = run_bounded(lambda p=path: ingest_file(con, p, settings), FILE_TIMEOUT_S)
            if not finished or error is not None or again is None:
                checked.append(Checked(case, path, None, [f"{case.name!r}: second ingest failed: {error}"]))
        grown = ledger.table_counts(con)
        outcome.duplicates += sum(grown[t] - counts[t] for t in TABLES)
        outcome.rows_lost += _lost(con, good_id, good_counts)
    finally:
        con.close()
    outcome.notes = "\n".join(p for c in checked for p in c.problems)
    return outcome, checked


def hostile_files_one_by_one(work: Path) -> FaultOutcome:
    return ingest_each_hostile_file(work)[0]


@dataclass
class CliRun:
    returncode: int | None
    stdout: str
    stderr: str
    added: set[str]
    failed: dict[str, str]  # file name -> the line printed for it


def slm(work: Path, *args: str, timeout_s: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """``slm --workspace <work>/ws ARGS`` in a subprocess with a clean environment and a time limit."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLM_")}
    env["COLUMNS"] = "400"  # one line per result, however long the path
    command = [sys.executable, "-c", "from flows.cli import main; main()", "--workspace", str(work / "ws")]
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, timeout=timeout_s, env=env, cwd=work
    )


def ingest_folder_cli(work: Path) -> tuple[FaultOutcome, CliRun]:
    """The whole hostile folder (and a good file) through ``slm ingest <dir>`` once, in a subprocess."""
    outcome = FaultOutcome("hostile folder through `slm ingest`")
    folder = work / "corpus"
    written = write_corpus(folder)
    good_bytes = pdf_bytes(GOOD_PAGES)
    (folder / "good.pdf").write_bytes(good_bytes)
    for case, _ in written:
        outcome.add_fault(case.kind)
    problems: list[str] = []
    try:
        done = slm(work, "ingest", str(folder))
    except subprocess.TimeoutExpired as exc:
        outcome.notes = f"`slm ingest` did not finish in {CLI_TIMEOUT_S:.0f} s (hang)"
        return outcome, CliRun(None, str(exc.stdout or ""), str(exc.stderr or ""), set(), {})
    added, failed = set(), {}
    for line in (done.stdout + done.stderr).splitlines():
        status, _, rest = line.strip().partition(" ")
        if status in ("added", "failed"):
            name = rest.strip().split(": ", 1)[0].rsplit("/", 1)[-1]
            (added.add(name) if status == "added" else failed.__setitem__(name, rest.strip()))
    run = CliRun(done.returncode, done.stdout, done.stderr, added, failed)
    if "Traceback" in done.stderr or "Traceback" in done.stdout:
        problems.append("a traceback was printed:\n" + done.stderr[-2000:])
    if done.returncode != 1:  # documented: non-zero (1) when any file failed
        problems.append(f"exit status {done.returncode}, expected 1; stderr: {done.stderr[-500:]}")
    if "good.pdf" not in added:
        problems.append("good.pdf was not added")
    for case, _ in written:
        name = shown(case.name)
        if case.expect == "added" and name not in added:
            problems.append(f"{name!r} not added")
        elif case.expect == "refused" and case.reason not in failed.get(name, ""):
            problems.append(
                f"{name!r}: expected a failure line with {case.reason!r}, got {failed.get(name)!r}"
            )
        elif case.expect == "skipped" and (name in added or name in failed):
            problems.append(f"{name!r} is a folder or loop and must be walked, not ingested")
        elif case.expect == "either" and not (name in added or case.reason in failed.get(name, "")):
            problems.append(f"{name!r}: neither added nor refused with {case.reason!r}")
        else:
            outcome.runs_completed += 1
    with open_warehouse(work / "ws" / "warehouse.duckdb", read_only=True) as con:
        for row in fetch_dicts(con.execute("SELECT doc_id, status FROM documents WHERE status = 'failed'")):
            counts = ledger.document_counts(con, row["doc_id"])
            outcome.rows_lost += counts["pages"] + counts["chunks"] + counts["facts"]
        good = con.execute(
            "SELECT doc_id FROM documents WHERE doc_id = ?", [content_id(good_bytes)]
        ).fetchone()
        if good is None or fact_values(con, good[0]) != set(GOOD_FACTS):
            problems.append("the good document's facts are wrong or missing")
    outcome.notes = "\n".join(problems)
    return outcome, run


def hostile_folder_cli(work: Path) -> FaultOutcome:
    return ingest_folder_cli(work)[0]


# -- byte mutations of a valid PDF ---------------------------------------------------------------------


def mutate(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    """One random damage: flip bytes, cut the file, insert or delete a run of bytes."""
    kind = rng.choice(["flip", "truncate", "insert", "delete"])
    buf = bytearray(data)
    at = rng.randrange(len(buf))
    if kind == "flip":
        for _ in range(rng.randint(1, 16)):
            buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
    elif kind == "truncate":
        del buf[at:]
    elif kind == "insert":
        buf[at:at] = rng.randbytes(rng.randint(1, 64))
    else:
        del buf[at : at + rng.randint(1, 256)]
    return kind, bytes(buf)


def check_pdf_bytes(con: duckdb.DuckDBPyConnection, settings: Settings, path: Path, data: bytes) -> list[str]:
    """Ingest damaged PDF bytes: added with facts the intact file has, or refused with a clear line and
    nothing but a failed record left behind. Returns the problems."""
    path.write_bytes(data)
    before = ledger.table_counts(con)
    result, error, finished = run_bounded(lambda: ingest_file(con, path, settings), FILE_TIMEOUT_S)
    if not finished:
        return [f"hang on {len(data)} bytes"]
    if error is not None:
        return [f"raised {type(error).__name__}: {error}"]
    assert isinstance(result, IngestResult)
    after = ledger.table_counts(con)
    if result.status == "failed":
        problems = []
        if "unexpected error" in result.message or "\n" in result.message:
            problems.append(f"unclear failure: {result.message!r}")
        if any(after[t] != before[t] for t in ("pages", "chunks", "facts")):
            problems.append(f"refused but left rows behind: {before} -> {after}")
        return problems
    # Added: flipped bits inside a digit may turn 100 into 108 (the bytes now say so), so values are not
    # compared; what was stored must be complete.
    counts = ledger.document_counts(con, result.doc_id or "")
    if counts["pages"] < 1 or counts["chunks"] < 1:
        return [f"added but incomplete: {counts}"]
    return []


def pdf_byte_mutations(work: Path, count: int = 120, seed: int = 10) -> FaultOutcome:
    """``count`` seeded random mutations of a small valid PDF, each ingested into one warehouse."""
    outcome = FaultOutcome("PDF byte mutations")
    settings = workspace(work)
    rng = random.Random(seed)
    original = pdf_bytes(GOOD_PAGES)
    problems: list[str] = []
    con = connect(settings.warehouse_path)
    try:
        good = work / "good.txt"
        good.write_text(RULE, encoding="utf-8")
        good_id = ingest_file(con, good, settings).doc_id or ""
        good_counts = ledger.document_counts(con, good_id)
        for index in range(count):
            kind, data = mutate(original, rng)
            outcome.add_fault(f"pdf_{kind}")
            found = check_pdf_bytes(con, settings, work / f"mutant-{index}.pdf", data)
            problems += [f"mutant {index} ({kind}): {p}" for p in found]
            outcome.runs_completed += not found
            outcome.rows_lost += sum("left rows behind" in p for p in found)
        outcome.rows_lost += _lost(con, good_id, good_counts)
    finally:
        con.close()
    outcome.notes = "\n".join(problems)
    return outcome


# -- prompt injection ----------------------------------------------------------------------------------


def trusted_invented_rows(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """Rows verification trusted (grounded, or auto-verified) although a number they state is not a fact of
    their chunk, or is the planted number given as the answer to a question about a real rule."""
    facts: dict[str, set[str]] = {}
    for chunk_id, value, value_max in con.execute("SELECT chunk_id, value, value_max FROM facts").fetchall():
        facts.setdefault(chunk_id, set()).update(v for v in (value, value_max) if v is not None)
    bad = []
    for row in fetch_dicts(con.execute("SELECT * FROM qa_rows")):
        trusted = (row["grounded"] and row["kind"] != "unanswerable") or row["status"] == "auto_verified"
        numbers = set(row["numbers"] or [])
        invented = numbers - facts.get(row["chunk_id"], set())
        hijacked = INJECTED_NUMBER in numbers and any(w in row["question"] for w in ("伙食", "交通", "差旅"))
        if trusted and (invented or hijacked):
            bad.append(row)
    return bad


def distil_injections(
    name: str, work: Path, teacher: str, **overrides: Any
) -> tuple[FaultOutcome, list[dict[str, Any]]]:
    """Ingest the injection documents and distil them with ``teacher``; the outcome and every row."""
    outcome = FaultOutcome(name)
    # Numeric rows are not sent to people here, so that the ledger check alone decides what is trusted.
    settings = workspace(work, teacher=teacher, review_numeric_rows=False, **overrides)
    folder = work / "in"
    folder.mkdir(parents=True, exist_ok=True)
    for file_name, text in INJECTIONS.items():
        (folder / file_name).write_text(text, encoding="utf-8")
        outcome.add_fault("prompt_injection")
    problems: list[str] = []
    con = connect(settings.warehouse_path)
    try:
        results = ingest_paths(con, [folder], settings)
        problems += [r.message for r in results if r.status != "added"]
        summary = distill(con, settings, make_teacher(settings))
        if summary.failed:
            problems.append(f"{summary.failed} teacher calls failed: {summary.failures[:2]}")
        rows = fetch_dicts(con.execute("SELECT * FROM qa_rows"))
        if not rows:
            problems.append("no rows were distilled")
        bad = trusted_invented_rows(con)
        outcome.rows_lost += len(bad)
        problems += [f"trusted: {r['question']} -> {r['answer']} ({r['status']})" for r in bad]
        outcome.runs_completed += not problems
    finally:
        con.close()
    outcome.notes = "\n".join(problems)
    return outcome, rows


def prompt_injection_extractive(work: Path) -> FaultOutcome:
    """The offline teacher over documents with planted instructions."""
    return distil_injections("prompt injection, extractive teacher", work, "extractive")[0]


def prompt_injection_openai(work: Path) -> FaultOutcome:
    """An OpenAI-compatible teacher whose model obeys the planted instructions (fake server)."""
    with FakeOpenAIServer(lambda index, key: Reply(text=obey_injection)) as server:
        outcome, _ = distil_injections(
            "prompt injection, obedient OpenAI-compatible model",
            work,
            "openai",
            openai_base_url=server.base_url,
            openai_model="obedient",
            teacher_backoff_s=0.01,
            distill_concurrency=2,
        )
    return outcome


SCENARIOS: list[Callable[[Path], FaultOutcome]] = [
    hostile_files_one_by_one,
    hostile_folder_cli,
    pdf_byte_mutations,
    prompt_injection_extractive,
    prompt_injection_openai,
]
