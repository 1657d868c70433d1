"""Two `slm` processes writing one workspace at once (issue #10, part 3).

DuckDB lets one process write a file and refuses the others at once; `slm` turns that into a bounded wait
(``warehouse_lock_wait_s``) and then a clear error naming the process that holds the file. The scenarios
make the overlap certain instead of hoping for it: the first process is frozen (SIGSTOP) while it holds the
warehouse, mid-ingest, and the second starts then. Afterwards the file is reopened and compared, id by id,
with a sequential run of the same commands done in-process in another workspace.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from runtime.config import load_settings
from tasks.distill.distill import distill, make_teacher
from tasks.ingest.documents import ingest_file
from tests.reliability.outcome import FaultOutcome
from warehouse.db import connect, open_warehouse

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_MD = ROOT / "examples" / "sample_rules.md"
LOCK_MESSAGE = "the warehouse is in use by another slm process"
WAIT_MESSAGE = "waiting up to"
# What identifies the content of a workspace: ids are content hashes, so equal sets mean equal content.
SNAPSHOT_QUERIES = {
    "documents": "SELECT doc_id || ':' || status FROM documents",
    "chunks": "SELECT chunk_id FROM chunks",
    "facts": "SELECT fact_id FROM facts",
    "qa_rows": "SELECT row_id || ':' || status FROM qa_rows",
}


def documents(work: Path) -> tuple[list[Path], list[Path]]:
    """Documents for the first process (two: the sample and a variant) and one more for the second.
    Variants differ in bytes only by a closing line without numbers, so each is its own document with the
    sample's chunks and facts."""
    text = SAMPLE_MD.read_text(encoding="utf-8")
    docs = work / "docs"
    docs.mkdir(parents=True, exist_ok=True)
    variants = []
    for tag in ("甲", "乙"):
        path = docs / f"sample_rules_{tag}.md"
        path.write_text(f"{text}\n\n（本文件为副本{tag}。）\n", encoding="utf-8")
        variants.append(path)
    return [SAMPLE_MD, variants[0]], [variants[1]]


def snapshot(workspace: Path) -> dict[str, set[str]]:
    """The ids of every document, chunk, fact and row in a workspace's warehouse (opened afresh: a file a
    crash or a race damaged fails here). Every table is also read in full once."""
    with open_warehouse(workspace / "warehouse.duckdb", read_only=True) as con:
        for (table,) in con.execute("SELECT table_name FROM information_schema.tables").fetchall():
            con.execute(f'SELECT count(*) FROM "{table}"').fetchone()
        return {
            name: {row[0] for row in con.execute(sql).fetchall()} for name, sql in SNAPSHOT_QUERIES.items()
        }


def sequential(workspace: Path, batches: list[list[Path]], distil: bool = False) -> dict[str, set[str]]:
    """The same work done one command after the other, in this process: the expected content (a second
    call on the same workspace continues it)."""
    settings = load_settings(workspace)
    with open_warehouse(settings.warehouse_path) as con:
        for batch in batches:
            for path in batch:
                ingest_file(con, path, settings)
        if distil:
            distill(con, settings, make_teacher(settings))
    return snapshot(workspace)


def compare(outcome: FaultOutcome, got: dict[str, set[str]], want: dict[str, set[str]]) -> None:
    """Rows of the expected content that are missing count as lost; rows beyond it as duplicates."""
    for name in want:
        outcome.rows_lost += len(want[name] - got[name])
        outcome.duplicates += len(got[name] - want[name])


def slm_env(lock_wait_s: float) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLM_")}
    env.update({"PYTHONPATH": str(ROOT), "SLM_WAREHOUSE_LOCK_WAIT_S": str(lock_wait_s)})
    return env


class SlmProcess:
    """One `slm` command in the background; its stdout and stderr go to files under ``work/logs``."""

    def __init__(self, work: Path, name: str, args: list[str], lock_wait_s: float) -> None:
        logs = work / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self.stdout_path, self.stderr_path = logs / f"{name}.out", logs / f"{name}.err"
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "flows.cli", *args],
                cwd=work,
                env=slm_env(lock_wait_s),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(encoding="utf-8", errors="replace")

    def wait(self, timeout_s: float = 300.0) -> int:
        return self.proc.wait(timeout=timeout_s)

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(timeout=30)


def run_slm(work: Path, name: str, args: list[str], lock_wait_s: float = 0.0) -> SlmProcess:
    process = SlmProcess(work, name, args, lock_wait_s)
    process.wait()
    return process


def locked_by_another_process(path: Path) -> bool:
    """Whether some process holds DuckDB's lock on ``path`` now. Probes with a non-blocking shared POSIX
    lock released at once; a writer racing this probe is refused for an instant and retries (its
    ``warehouse_lock_wait_s`` is not 0)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing releases our probe lock
    return False


def wait_until(predicate: Callable[[], bool], timeout_s: float, poll_s: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll_s)
    return predicate()


@contextlib.contextmanager
def frozen_while_holding(first: SlmProcess, warehouse: Path) -> Iterator[None]:
    """Freeze ``first`` as soon as it holds the warehouse; thaw it when the block ends."""
    caught = wait_until(lambda: first.proc.poll() is not None or locked_by_another_process(warehouse), 240)
    if not caught or first.proc.poll() is not None:
        raise AssertionError(f"the first slm process never held the warehouse: {first.stderr[-500:]}")
    os.kill(first.pid, signal.SIGSTOP)
    try:
        if not locked_by_another_process(warehouse):  # it let go between the probe and the stop
            raise AssertionError("the first slm process released the warehouse before it could be frozen")
        yield
    finally:
        os.kill(first.pid, signal.SIGCONT)


def two_ingests_one_refused(work: Path) -> FaultOutcome:
    """`slm ingest` while another `slm ingest` writes (no waiting): the second fails at once with a message
    naming the first; the first's documents are all there; re-run, the second adds exactly its own."""
    outcome = FaultOutcome("concurrency: two ingests, the second refused")
    first_docs, second_docs = documents(work)
    ws = work / "ws"
    first = SlmProcess(work, "ingest-1", ["-w", str(ws), "ingest", *map(str, first_docs)], lock_wait_s=60)
    try:
        with frozen_while_holding(first, ws / "warehouse.duckdb"):
            outcome.add_fault("concurrent_writer")
            second = run_slm(work, "ingest-2", ["-w", str(ws), "ingest", *map(str, second_docs)])
        first_rc = first.wait()
    finally:
        first.kill()
    refused = second.proc.returncode == 2 and f"{LOCK_MESSAGE} (pid {first.pid})" in second.stderr
    outcome.notes = (
        f"first exit {first_rc}; second exit {second.proc.returncode}: {second.stderr.strip()[-300:]}"
    )
    if first_rc == 0 and refused:
        outcome.runs_completed += 1
    compare(outcome, snapshot(ws), sequential(work / "expected", [first_docs]))
    again = run_slm(work, "ingest-2-again", ["-w", str(ws), "ingest", *map(str, second_docs)])
    if again.proc.returncode == 0 and "1 added" in again.stdout:
        outcome.runs_completed += 1
    compare(outcome, snapshot(ws), sequential(work / "expected", [second_docs]))
    return outcome


def distill_waits_for_ingest(work: Path) -> FaultOutcome:
    """`slm distill` while `slm ingest` writes: distill says it waits, then runs once ingest is done, over
    every document ingest added; the result equals ingest-then-distill done one after the other."""
    outcome = FaultOutcome("concurrency: distill waits for ingest")
    first_docs, _ = documents(work)
    ws = work / "ws"
    first = SlmProcess(work, "ingest", ["-w", str(ws), "ingest", *map(str, first_docs)], lock_wait_s=60)
    second: SlmProcess | None = None
    try:
        with frozen_while_holding(first, ws / "warehouse.duckdb"):
            outcome.add_fault("concurrent_writer")
            second = SlmProcess(work, "distill", ["-w", str(ws), "distill"], lock_wait_s=240)
            said = wait_until(
                lambda: WAIT_MESSAGE in second.stderr or second.proc.poll() is not None, 240, 0.1
            )
        first_rc, second_rc = first.wait(), second.wait()
    finally:
        first.kill()
        if second is not None:
            second.kill()
    waited = said and f"in use by another slm process (pid {first.pid})" in second.stderr
    outcome.notes = (
        f"ingest exit {first_rc}; distill exit {second_rc}; distill said: {second.stderr.strip()[:300]}"
    )
    if first_rc == 0 and second_rc == 0 and waited:
        outcome.runs_completed += 1
    compare(outcome, snapshot(ws), sequential(work / "expected", [first_docs], distil=True))
    return outcome


def lock_message_is_bounded(work: Path) -> FaultOutcome:
    """A held warehouse and a short ``warehouse_lock_wait_s``: the command waits about that long, then
    fails with the message naming the holder and the setting (no hang, no traceback)."""
    outcome = FaultOutcome("concurrency: bounded wait for a held warehouse")
    ws = work / "ws"
    connect(ws / "warehouse.duckdb").close()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys; c = duckdb.connect(sys.argv[1]); print('ready', flush=True);"
         " sys.stdin.readline()", str(ws / "warehouse.duckdb")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        outcome.add_fault("held_warehouse")
        started = time.monotonic()
        blocked = run_slm(work, "docs", ["-w", str(ws), "docs"], lock_wait_s=2)
        took = time.monotonic() - started
    finally:
        holder.communicate("\n", timeout=30)
    message = f"{LOCK_MESSAGE} (pid {holder.pid}) (waited 2 s; setting warehouse_lock_wait_s)"
    outcome.notes = f"exit {blocked.proc.returncode} after {took:.1f} s: {blocked.stderr.strip()[-300:]}"
    if blocked.proc.returncode == 2 and message in blocked.stderr and "Traceback" not in blocked.stderr:
        outcome.runs_completed += 1
    with contextlib.suppress(Exception):
        connect(ws / "warehouse.duckdb").close()  # free again once the holder is gone
        outcome.runs_completed += 1
    return outcome


SCENARIOS: list[Callable[[Path], FaultOutcome]] = [
    two_ingests_one_refused,
    distill_waits_for_ingest,
    lock_message_is_bounded,
]
