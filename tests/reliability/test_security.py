"""Security (issue #10, part 5): scenarios in ``scenarios_security``; each must lose nothing and leak nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability import scenarios_security as scenarios


def test_servers_refuse_a_non_loopback_address_without_the_opt_in(tmp_path: Path) -> None:
    outcome = scenarios.servers_refuse_remote_bind(tmp_path)
    # 3 servers x 4 addresses, 4 loopback addresses, the opt-in, 4 commands, the model server's command
    # line, --allow-remote
    assert outcome.lost == 0 and outcome.notes == "" and outcome.runs_completed == 12 + 4 + 1 + 4 + 1 + 1, (
        outcome
    )


def test_the_webhook_listens_on_loopback_and_wants_its_secret(tmp_path: Path) -> None:
    outcome = scenarios.webhook_listens_on_loopback_and_wants_its_secret(tmp_path)
    assert outcome.lost == 0 and outcome.notes == "" and outcome.runs_completed == 6, outcome


def test_secret_files_are_private(tmp_path: Path) -> None:
    outcome = scenarios.secret_files_are_private(tmp_path)
    assert outcome.lost == 0 and outcome.notes == "" and outcome.runs_completed == 7, outcome


def test_teacher_errors_carry_no_key(tmp_path: Path) -> None:
    outcome = scenarios.teacher_errors_carry_no_key(tmp_path)
    assert outcome.lost == 0 and outcome.runs_completed == 1, outcome


@pytest.mark.slow
def test_a_whole_pipeline_run_leaks_no_secret(tmp_path: Path) -> None:
    outcome = scenarios.pipeline_leaks_no_secret(tmp_path)
    assert outcome.secrets_found == 0 and outcome.lost == 0, outcome.notes
    assert outcome.runs_completed == 1, outcome.notes


def test_the_leak_detectors_find_a_planted_secret(tmp_path: Path) -> None:
    """A negative control: zero leaks means something only if a leak would have been found."""
    from warehouse.db import open_warehouse

    secret = scenarios.planted("control")
    (tmp_path / "a.log").write_text(f"token={secret[:12]}…\n", encoding="utf-8")
    (tmp_path / "b.bin").write_bytes(secret[-12:].encode("utf-16-le"))
    with open_warehouse(tmp_path / "w.duckdb") as con:
        con.execute("CREATE TABLE t (v VARCHAR)")
        con.execute("INSERT INTO t SELECT ? || range FROM range(5000)", [secret])
    found = scenarios.leaks_in_files(tmp_path, [secret], skip=[tmp_path / "w.duckdb"])
    assert sorted(f.split(":")[0] for f in found) == [str(tmp_path / "a.log"), str(tmp_path / "b.bin")]
    assert scenarios.leaks_in_warehouse(tmp_path / "w.duckdb", [secret])
    assert scenarios.leaks_in_text(f"x {scenarios.fragments(secret)[-1]} y", [secret])  # the masked echo
