"""The import contracts of pyproject.toml ([tool.importlinter]) hold: the layers (runtime <- warehouse <-
expectations <- tasks <- review <- deployments <- flows), the pipeline stages inside tasks, and no cycles
between sibling modules. Runs the venv's ``lint-imports`` and fails with its report."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_the_contracts_cover_every_package_and_stage() -> None:
    """A contract that forgot a package would keep without checking it: every installed package (setuptools'
    include list) is a root package of the linter, a layer and checked for cycles."""
    config = _config()
    packages = {p.removesuffix("*") for p in config["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert {"runtime", "warehouse", "expectations", "tasks", "review", "flows", "deployments"} <= packages
    assert set(config["tool"]["importlinter"]["root_packages"]) == packages
    by_id = {c["id"]: c for c in config["tool"]["importlinter"]["contracts"]}
    assert set(by_id["layers"]["layers"]) == packages
    assert set(by_id["acyclic"]["ancestors"]) == packages
    stages = {p.name for p in (ROOT / "tasks").iterdir() if (p / "__init__.py").exists()}
    assert set(by_id["stages"]["layers"]) == stages
    assert by_id["stages"]["containers"] == ["tasks"]


def test_import_contracts_are_kept() -> None:
    if not LINT_IMPORTS.exists():
        pytest.fail(f"{LINT_IMPORTS} is missing: install the dev extra (pip install -e '.[dev]')")
    result = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1"},  # this checkout's packages
    )
    report = result.stdout + result.stderr
    if result.returncode != 0:
        pytest.fail(f"lint-imports exited {result.returncode}:\n{report}", pytrace=False)
    assert "0 broken" in report, report
