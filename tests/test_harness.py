"""The test run's own rules (tests/conftest.py): a real component that cannot start skips on a developer's
machine and fails in CI; a process a test leaves alive fails the run; a run that collects no test fails.

Loaded as a plugin (``-p tests.test_harness``) this module also breaks Label Studio's installation, so the
real Label Studio test can be run to show what it does when its component cannot start."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from tests.conftest import ROOT, import_or_require, in_ci, require_or_skip

BROKEN = "made to fail by tests.test_harness"
LABEL_STUDIO_TEST = "tests/test_review_labelstudio.py::test_review_round_trip_with_a_real_label_studio"


def pytest_configure(config: pytest.Config) -> None:
    """Only as a plugin (pytest never registers hooks of a collected test module): Label Studio's
    installation fails as it would on a machine without it."""
    from review import server

    def ensure_installed(*args: object, **kwargs: object) -> None:
        raise OSError(BROKEN)

    server.ensure_installed = ensure_installed


def _pytest(*args: str, ci: str | None, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_SLM_RUN")}
    if ci is not None:
        environ["CI"] = ci
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.parametrize(
    ("value", "ci"),
    [
        ("", False),
        ("0", False),
        ("false", False),
        ("False", False),
        ("true", True),
        ("1", True),
        ("yes", True),
    ],
)
def test_ci_is_any_value_but_empty_0_or_false(monkeypatch: pytest.MonkeyPatch, value: str, ci: bool) -> None:
    monkeypatch.setenv("CI", value)
    assert in_ci() is ci


def test_require_or_skip_skips_on_a_developer_machine_and_fails_in_ci(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no server here"):
        require_or_skip("no server here")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no server here"):
        require_or_skip("no server here")


@pytest.mark.parametrize("ci", ["true", None])
def test_a_real_label_studio_test_fails_in_ci_when_label_studio_cannot_start(
    ci: str | None, tmp_path: Path
) -> None:
    result = _pytest("-p", "tests.test_harness", LABEL_STUDIO_TEST, "-rsf", ci=ci, tmp_path=tmp_path)
    out = result.stdout + result.stderr
    assert BROKEN in out, out
    if ci:
        assert result.returncode == pytest.ExitCode.TESTS_FAILED, out
        assert "1 failed" in out, out
    else:
        assert result.returncode == pytest.ExitCode.OK, out
        assert "1 skipped" in out, out


def test_a_run_that_collects_no_test_fails(tmp_path: Path) -> None:
    result = _pytest("tests/test_harness.py", "-k", "no_test_has_this_name", ci=None, tmp_path=tmp_path)
    assert result.returncode == pytest.ExitCode.NO_TESTS_COLLECTED, result.stdout + result.stderr


def test_a_process_left_alive_fails_the_run_and_is_stopped(tmp_path: Path) -> None:
    """A child left running, and a daemon that left pytest's process tree (``sh -c 'sleep &'``): both are
    named, the run fails, and both are gone afterwards."""
    pids = tmp_path / "pids"
    test = tmp_path / "test_leaks.py"
    test.write_text(
        textwrap.dedent(
            f"""
            import subprocess
            from pathlib import Path

            def test_forgets_its_servers():
                child = subprocess.Popen(["sleep", "301"])
                daemon = subprocess.run(
                    ["sh", "-c", "sleep 302 >/dev/null 2>&1 & echo $!"], capture_output=True, text=True
                )
                Path({str(pids)!r}).write_text(f"{{child.pid}} {{daemon.stdout.strip()}}")
            """
        ),
        encoding="utf-8",
    )
    result = _pytest("-p", "tests.conftest", str(test), ci=None, tmp_path=tmp_path, SLM_TEST_LEAK_GRACE_S="1")
    out = result.stdout + result.stderr
    assert "1 passed" in out, out
    assert result.returncode == pytest.ExitCode.TESTS_FAILED, out
    assert "still alive" in out and "sleep 301" in out and "sleep 302" in out, out
    for pid in map(int, pids.read_text().split()):
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_stop_later_stops_every_server_when_the_test_fails(tmp_path: Path) -> None:
    """Stops registered with ``stop_later`` run after a failing test, last first, each even if one raises;
    a stop that raised is reported."""
    log = tmp_path / "stops"
    test = tmp_path / "test_stops.py"
    test.write_text(
        textwrap.dedent(
            f"""
            from pathlib import Path

            def stop(name, fail=False):
                def run():
                    with open({str(log)!r}, "a") as f:
                        f.write(name + "\\n")
                    if fail:
                        raise RuntimeError("stop " + name + " failed")
                return run

            def test_fails_after_starting(stop_later):
                stop_later(stop("first"))
                stop_later(stop("second", fail=True))
                stop_later(stop("third"))
                assert False, "the test failed with its servers up"
            """
        ),
        encoding="utf-8",
    )
    result = _pytest("-p", "tests.conftest", str(test), ci=None, tmp_path=tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode == pytest.ExitCode.TESTS_FAILED, out
    assert log.read_text().split() == ["third", "second", "first"]
    assert "the test failed with its servers up" in out and "stop second failed" in out, out


def test_a_missing_package_skips_on_a_developer_machine_and_fails_in_ci(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert pytest.importorskip is import_or_require  # every test module's importorskip goes through it
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        pytest.importorskip("no_such_package_slm_test")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI is set"):
        pytest.importorskip("no_such_package_slm_test")
    assert pytest.importorskip("json").dumps([]) == "[]"
