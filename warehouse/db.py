"""The one way to open the warehouse: a DuckDB file with versioned migrations.

Migrations are the numbered ``migrations/NNNN_name.sql`` files beside this module; ``schema_version``
records which have been applied, so opening an older file brings it up to date in one transaction.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

_MIGRATION_NAME = re.compile(r"^(\d{4})_([\w-]+)\.sql$")
_LOCK_HOLDER = re.compile(r"\(PID (\d+)\)")  # DuckDB names the process holding the file lock
LOCK_POLL_S = 0.25


class WarehouseError(RuntimeError):
    """The warehouse file cannot be used; the message names the file and the reason."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    """All migrations shipped with the code, in version order."""
    found = []
    for entry in resources.files("warehouse").joinpath("migrations").iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    return sorted(found, key=lambda m: m.version)


def schema_version(con: duckdb.DuckDBPyConnection) -> int:
    row = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'schema_version'"
    ).fetchone()
    if not row or row[0] == 0:
        return 0
    current = con.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
    return int(current[0]) if current else 0


def migrate(con: duckdb.DuckDBPyConnection) -> list[Migration]:
    """Apply every migration newer than the file's version, each in its own transaction."""
    con.execute(
        "CREATE TABLE IF NOT EXISTS schema_version ("
        " version INTEGER PRIMARY KEY, name VARCHAR NOT NULL,"
        " applied_at TIMESTAMP NOT NULL DEFAULT current_timestamp)"
    )
    # Every missing version is applied, not only those above the newest: a migration added between two
    # existing ones (parallel work) still reaches files that already have the later one.
    done = {int(v) for (v,) in con.execute("SELECT version FROM schema_version").fetchall()}
    applied = []
    for migration in migrations():
        if migration.version in done:
            continue
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute(migration.sql)
            con.execute(
                "INSERT INTO schema_version (version, name) VALUES (?, ?)",
                [migration.version, migration.name],
            )
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise
        applied.append(migration)
    return applied


def _open_file(
    path: Path, read_only: bool, lock_wait_s: float, on_wait: Callable[[str], None] | None = None
) -> duckdb.DuckDBPyConnection:
    """``duckdb.connect``, waiting up to ``lock_wait_s`` while another process holds the file's lock.

    DuckDB allows one writing process per file and refuses (rather than queues) the others at once, so the
    wait is ours: poll until the holder closes the file or the time is up, then say who holds it.
    ``on_wait`` hears once that we are waiting, so a command that seems to hang says why."""
    deadline = time.monotonic() + max(0.0, lock_wait_s)
    told = False
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except (duckdb.IOException, duckdb.ConnectionException) as exc:
            message = str(exc)
            # In one process DuckDB refuses a read-only and a writing connection to the same file side by
            # side (a flow thread writing while a reader polls): that holder is ours and closes soon too.
            same_process = "different configuration than existing connections" in message
            if not same_process and "lock" not in message.lower():
                raise WarehouseError(f"{path}: cannot open the warehouse: {exc}") from exc
            holder = _LOCK_HOLDER.search(message)
            who = (
                "another connection of this process"
                if same_process
                else f"another slm process (pid {holder.group(1)})"
                if holder
                else "another slm process"
            )
            if time.monotonic() < deadline:
                if on_wait is not None and not told:
                    on_wait(f"{path}: in use by {who}; waiting up to {lock_wait_s:g} s for it")
                    told = True
                time.sleep(LOCK_POLL_S)
                continue
            waited = f" (waited {lock_wait_s:g} s; setting warehouse_lock_wait_s)" if lock_wait_s > 0 else ""
            raise WarehouseError(
                f"{path}: the warehouse is in use by {who}{waited}; wait for it to finish and retry"
            ) from exc
        except duckdb.Error as exc:
            raise WarehouseError(f"{path}: not a readable DuckDB warehouse: {exc}") from exc


def connect(
    path: Path | str,
    read_only: bool = False,
    lock_wait_s: float = 0.0,
    on_wait: Callable[[str], None] | None = None,
) -> duckdb.DuckDBPyConnection:
    """Open (creating if needed) and migrate the warehouse file at ``path``. While another process holds
    the file, wait up to ``lock_wait_s`` (the CLI passes the ``warehouse_lock_wait_s`` setting), then fail
    with a ``WarehouseError`` naming that process."""
    path = Path(path)
    if read_only and not path.exists():
        raise WarehouseError(f"{path}: no warehouse yet; run `slm ingest` first")
    path.parent.mkdir(parents=True, exist_ok=True)
    con = _open_file(path, read_only, lock_wait_s, on_wait)
    if not read_only:
        migrate(con)
    elif schema_version(con) < migrations()[-1].version:
        con.close()
        # A read-only handle cannot migrate; reopen for writing once, then hand back a read-only one.
        connect(path, lock_wait_s=lock_wait_s, on_wait=on_wait).close()
        con = _open_file(path, True, lock_wait_s, on_wait)
    return con


@contextmanager
def open_warehouse(
    path: Path | str,
    read_only: bool = False,
    lock_wait_s: float = 0.0,
    on_wait: Callable[[str], None] | None = None,
) -> Iterator[duckdb.DuckDBPyConnection]:
    """``with open_warehouse(settings.warehouse_path) as con: ...``; closes the file afterwards."""
    con = connect(path, read_only=read_only, lock_wait_s=lock_wait_s, on_wait=on_wait)
    try:
        yield con
    finally:
        con.close()


def settings_warehouse(
    settings: Any, read_only: bool = False, on_wait: Callable[[str], None] | None = None
) -> Any:
    """``open_warehouse`` for a workspace's settings: its file, waiting ``warehouse_lock_wait_s`` for another
    slm process to let go of it (flow steps wait like the CLI instead of failing at once); ``on_wait`` hears
    once that it waits (the CLI says so on stderr)."""
    return open_warehouse(settings.warehouse_path, read_only, settings.warehouse_lock_wait_s, on_wait)


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """All or nothing: a document's rows are written together or not at all."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


def bulk_insert(
    con: duckdb.DuckDBPyConnection, table: str, columns: list[str], rows: list[list[Any]]
) -> None:
    """Insert many rows through a registered Arrow table (measured: 40x faster than executemany here)."""
    if not rows:
        return
    frame = pa.table({name: [row[i] for row in rows] for i, name in enumerate(columns)})
    con.register("_bulk_rows", frame)
    try:
        names = ", ".join(columns)
        con.execute(f"INSERT INTO {table} ({names}) SELECT {names} FROM _bulk_rows")
    finally:
        con.unregister("_bulk_rows")


def fetch_dicts(cursor: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """The rows of an executed query as dicts keyed by column name (the one way every query returns rows)."""
    names = [col[0] for col in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
