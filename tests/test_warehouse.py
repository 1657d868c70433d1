"""The warehouse: versioned migrations, reopening, and a clear message when another process holds it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import pytest

from warehouse.db import WarehouseError, connect, migrations, schema_version


def test_new_file_gets_every_migration(tmp_path: Path) -> None:
    con = connect(tmp_path / "w.duckdb")
    assert schema_version(con) == migrations()[-1].version
    tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    assert {"schema_version", "documents", "pages", "chunks", "facts"} <= tables
    con.close()


def test_older_file_is_migrated_and_keeps_its_data(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    old = duckdb.connect(str(path))
    old.execute(
        "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, name VARCHAR NOT NULL,"
        " applied_at TIMESTAMP NOT NULL DEFAULT current_timestamp)"
    )
    old.execute("CREATE TABLE notes (x INTEGER)")
    old.execute("INSERT INTO notes VALUES (42)")
    old.close()
    con = connect(path)
    assert schema_version(con) == migrations()[-1].version
    assert con.execute("SELECT x FROM notes").fetchall() == [(42,)]
    con.close()
    again = connect(path)  # reopening applies nothing twice
    versions = again.execute("SELECT version FROM schema_version ORDER BY version").fetchall()
    assert [v for (v,) in versions] == [m.version for m in migrations()]
    again.close()


def test_read_only_open_of_missing_warehouse_says_so(tmp_path: Path) -> None:
    with pytest.raises(WarehouseError, match="no warehouse yet"):
        connect(tmp_path / "absent.duckdb", read_only=True)


def test_not_a_duckdb_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "w.duckdb"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(WarehouseError, match=str(path)):
        connect(path)


def test_second_process_gets_a_clear_message(tmp_path: Path) -> None:
    path = tmp_path / "w.duckdb"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import sys, time, duckdb
            con = duckdb.connect({str(path)!r})
            print("ready", flush=True)
            sys.stdin.readline()
        """),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        with pytest.raises(WarehouseError, match="in use by another slm process"):
            connect(path)
    finally:
        holder.communicate("\n", timeout=30)
    con = connect(path)  # usable again once released
    con.close()


def test_a_writer_waits_for_a_reader_of_the_same_process(tmp_path: Path) -> None:
    """DuckDB refuses a writing connection beside a read-only one in the same process (a flow thread writes
    while a reader polls): the writer waits for the reader like for another process, or says who holds it."""
    import threading

    path = tmp_path / "w.duckdb"
    connect(path).close()
    reader = connect(path, read_only=True)
    with pytest.raises(WarehouseError, match="another connection of this process"):
        connect(path)
    threading.Timer(0.5, reader.close).start()
    writer = connect(path, lock_wait_s=10)
    assert writer.execute("SELECT 1").fetchone() == (1,)
    writer.close()


def test_recorded_drafts_are_the_newest_runs(tmp_path: Path) -> None:
    """bench/guard.py --drafts replays these: the draft of every item of the newest matching run."""
    from warehouse.db import open_warehouse
    from warehouse.evaluation import recorded_drafts, save_eval_run

    def item(run: str, question: str, draft: str | None) -> dict:
        return {
            "eval_run_id": run,
            "item_id": question,
            "question": question,
            "type": "numeric",
            "answer_given": draft or "",
            "passed": False,
            "numbers_ok": False,
            "invented": [],
            "abstained": False,
            "draft": draft,
        }

    with open_warehouse(tmp_path / "w.duckdb") as con:
        assert recorded_drafts(con) == {}
        runs = [("new", "新的", "grounded"), ("old", "旧的", "grounded"), ("cb", "闭卷", "closed_book")]
        for age, (run, draft, mode) in enumerate(runs):  # "new" written first, dated last
            meta = {"eval_run_id": run, "model_label": "challenger", "model_id": None, "mode": mode}
            save_eval_run(
                con, {**meta, "source": "golden", "n": 2, "metrics": {}}, [item(run, "问一", draft)]
            )
            con.execute(
                "UPDATE eval_runs SET created_at = now() - to_seconds(?) WHERE eval_run_id = ?",
                [60 * age if run != "new" else -60, run],
            )
        assert recorded_drafts(con) == {"问一": "新的"}
        assert recorded_drafts(con, mode="closed_book") == {"问一": "闭卷"}
        assert recorded_drafts(con, model_label="base") == {}
