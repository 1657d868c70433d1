"""The `slm` command line end to end, in a subprocess like a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import SAMPLE_PDF


def slm_command(*args: str, env: dict[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of ``slm ARGS`` run from this checkout (no SLM_* from outside)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SLM_")}
    full_env.update(env or {})
    return [sys.executable, "-m", "flows.cli", *args], {**full_env, "PYTHONPATH": str(_root())}


def slm(
    *args: str, cwd: Path, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    command, full_env = slm_command(*args, env=env)
    return subprocess.run(
        command,
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=300,
        input=stdin,
    )


def _root() -> Path:
    return Path(__file__).resolve().parents[1]


def test_ingest_then_facts_json_and_summary(tmp_path: Path) -> None:
    first = slm("--workspace", "ws", "ingest", str(SAMPLE_PDF), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "1 added" in first.stdout
    again = slm("--workspace", "ws", "ingest", str(SAMPLE_PDF), cwd=tmp_path)
    assert (
        again.returncode == 0
        and "already ingested" in again.stdout
        and "0 added, 1 unchanged" in again.stdout
    )

    out = slm("-w", "ws", "facts", "--json", cwd=tmp_path)
    facts = json.loads(out.stdout)
    assert len(facts) >= 40
    assert {"doc", "value", "unit", "raw", "qualifier", "subject", "context"} <= set(facts[0])

    summary = slm("-w", "ws", "facts", "--summary", cwd=tmp_path)
    assert "sample_rules.pdf" in summary.stdout and "facts by unit" in summary.stdout


def test_workspace_from_environment(tmp_path: Path) -> None:
    result = slm("ingest", str(SAMPLE_PDF), cwd=tmp_path, env={"SLM_WORKSPACE": str(tmp_path / "envws")})
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "envws" / "warehouse.duckdb").exists()


def test_failed_file_gives_nonzero_exit_and_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "broken.pdf"
    bad.write_bytes(b"%PDF-1.4\nnot really")
    result = slm("-w", "ws", "ingest", str(bad), str(SAMPLE_PDF), cwd=tmp_path)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if "broken.pdf" in line]
    assert len(lines) == 1 and "corrupt PDF" in lines[0]
    assert "1 added" in result.stdout
    docs = slm("-w", "ws", "docs", cwd=tmp_path)
    assert "failed" in docs.stdout and "broken.pdf" in docs.stdout


def test_config_show_masks_secrets_and_reads_toml(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "slm.toml").write_text("chunk_size = 321\n", encoding="utf-8")
    (tmp_path / "slm.toml").write_text("chunk_size = 999\nchunk_overlap = 11\n", encoding="utf-8")
    secrets = ws / "secrets.toml"
    secrets.write_text('openai_api_key = "sk-from-file-123"\n', encoding="utf-8")
    secrets.chmod(0o600)
    env = {"SLM_GEMINI_API_KEYS": "key-one-abc,key-two-def", "SLM_MAX_PAGES": "77"}
    result = slm("-w", str(ws), "config", "show", "--json", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["chunk_size"] == 321  # workspace slm.toml beats the current folder's
    assert shown["chunk_overlap"] == 11  # the current folder's still applies where the workspace is silent
    assert shown["max_pages"] == 77  # environment beats files
    assert shown["gemini_api_keys"] == "********" and shown["openai_api_key"] == "********"
    assert (
        "key-one" not in result.stdout + result.stderr and "sk-from-file" not in result.stdout + result.stderr
    )


def test_world_readable_secrets_file_is_refused(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    secrets = ws / "secrets.toml"
    secrets.write_text('openai_api_key = "sk-abc"\n', encoding="utf-8")
    secrets.chmod(0o644)
    result = slm("-w", str(ws), "config", "show", cwd=tmp_path)
    assert result.returncode == 2
    assert "chmod 600" in result.stderr and "sk-abc" not in result.stderr


def test_facts_for_unknown_document(tmp_path: Path) -> None:
    slm("-w", "ws", "ingest", str(SAMPLE_PDF), cwd=tmp_path)
    result = slm("-w", "ws", "facts", "--doc", "nope.pdf", cwd=tmp_path)
    assert result.returncode == 1 and "no document named" in result.stderr


def eval_json(tmp_path: Path, questions: Path, model: str, *options: str, env: dict[str, str]) -> dict:
    """``slm -w ws eval --questions QUESTIONS --model MODEL [options] --json``, which must succeed: its report."""
    graded = slm(
        "-w",
        "ws",
        "eval",
        "--questions",
        str(questions),
        "--model",
        model,
        *options,
        "--json",
        cwd=tmp_path,
        env=env,
    )
    assert graded.returncode == 0, graded.stderr[-1500:]
    return json.loads(graded.stdout)


def test_train_models_and_eval_from_the_command_line(tmp_path: Path) -> None:
    """ingest -> distill -> auto review -> release gate -> slm train (tiny base) -> slm models -> slm eval."""
    from tests.conftest import SAMPLE_MD
    from tests.tiny import build_tiny_base

    base = build_tiny_base(tmp_path / "tiny")
    for args in (
        ("ingest", str(SAMPLE_MD)),
        ("distill", "--per-fact", "1"),
        ("review", "auto"),
        ("gate", "release"),
    ):
        step = slm("-w", "ws", *args, cwd=tmp_path)
        assert step.returncode == 0, (args, step.stdout[-500:], step.stderr[-500:])
    trained = slm(
        "-w",
        "ws",
        "train",
        "--base",
        str(base),
        "--max-steps",
        "2",
        cwd=tmp_path,
        env={"SLM_TRAIN_THREADS": "1"},
    )
    assert trained.returncode == 0, trained.stderr[-1500:]
    assert "challenger lora-" in trained.stdout
    listed = slm("-w", "ws", "models", cwd=tmp_path, env={"COLUMNS": "200"})
    assert "challenger" in listed.stdout
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question": "伙食补助费每人每天多少钱？", "numbers": ["100"]}\n', encoding="utf-8")
    payload = eval_json(
        tmp_path,
        questions,
        "challenger",
        "--base",
        str(base),
        "--backend",
        "transformers",
        "--mode",
        "closed",
        env={"SLM_ANSWER_MAX_TOKENS": "8"},
    )
    assert payload["mode"] == "closed_book" and payload["model"]["n"] == 1 and payload["shown"]["n"] == 1
    assert sum(payload["guard_actions"].values()) == 1 and set(payload["guard_actions"]) <= {
        "passed",
        "flagged",
    }
    assert payload["items"][0]["guard_action"] in ("passed", "flagged")
    refused = slm("-w", "ws", "eval", "--questions", str(questions), "--mode", "closedbook", cwd=tmp_path)
    assert refused.returncode == 2 and "use grounded or closed" in refused.stderr
    # Nothing promoted: the champion is the untuned base, evaluated as `slm ask` answers (its GGUF, grounded).
    env = {"SLM_ANSWER_MAX_TOKENS": "8", "SLM_BASE_MODEL": str(base), "SLM_EXPORT_QUANT": "f16"}
    exported = slm("-w", "ws", "export", "--model", "base", cwd=tmp_path, env={**env, "COLUMNS": "400"})
    assert exported.returncode == 0, exported.stderr[-1500:]
    modelfile = tmp_path / exported.stdout.split("ollama create NAME -f ", 1)[1].split()[0]  # beside the GGUF
    assert modelfile.is_file() and modelfile.read_text(encoding="utf-8").count("FROM ./") == 1
    payload = eval_json(tmp_path, questions, "champion", env=env)
    assert payload["mode"] == "grounded" and payload["backend"] == "llamacpp"
    assert payload["items"][0]["guard_action"] in ("passed", "retried_ok", "quoted_evidence", "abstained")
    assert list(payload["per_set"]) == ["file:q.jsonl"]


def test_review_commands_with_label_studio_down_say_so_in_one_line(tmp_path: Path) -> None:
    import socket

    from runtime.config import load_settings
    from warehouse import review as review_queries
    from warehouse.db import open_warehouse

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "slm.toml").write_text(
        f"labelstudio_port = {port}\nlabelstudio_attempts = 1\nlabelstudio_token = 'not-a-real-token'\n",
        encoding="utf-8",
    )
    with open_warehouse(load_settings(workspace).warehouse_path) as con:
        review_queries.create_batch(con, "rb-down", 7, "flow-x", ["row-1"])
    for command in (["review", "sync"], ["review", "resume", "--partial"], ["review", "push"]):
        done = slm("-w", str(workspace), *command, cwd=tmp_path)
        assert done.returncode == 1, (command, done.stdout, done.stderr)
        assert "Label Studio" in done.stderr and "Traceback" not in done.stderr, (command, done.stderr)
    status = slm("-w", str(workspace), "review", "status", cwd=tmp_path)
    assert status.returncode == 0 and "not running" in status.stdout, status.stderr
