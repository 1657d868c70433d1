"""The OpenAI-compatible teacher with the real openai client against a fake endpoint on 127.0.0.1.

Every test also checks (in the ``no_key_leaks`` fixture) that no planted key reaches a log or the console.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from runtime.config import Settings, load_settings
from tasks.distill.teachers.base import TeacherOutput
from tasks.distill.teachers.openai_compat import NO_KEY, OpenAITeacher
from tests import fakes, teacher_checks
from tests.fakes.openai_server import UNSUPPORTED_FORMAT, FakeOpenAIServer
from tests.teacher_checks import CHUNK, PROXY_ENV_VARS, generate_checked, no_key_leaks_fixture

KEY = "sk-test-SECRET-key-1"
ENV_VARS = (
    "OPENAI_API_KEY",
    "SLM_OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "SLM_OPENAI_BASE_URL",
    "SLM_WORKSPACE",
    "OPENAI_ORG_ID",
    "OPENAI_PROJECT_ID",
    *PROXY_ENV_VARS,
)


no_key_leaks = no_key_leaks_fixture(ENV_VARS, ("SECRET", KEY))


def make_settings(
    tmp_path: Path, server: FakeOpenAIServer, key: str | None = KEY, **overrides: Any
) -> Settings:
    values: dict[str, Any] = {
        "openai_base_url": server.base_url,
        "openai_model": "qwen-test",
        **teacher_checks.QUICK_RETRIES,
    }
    if key is not None:
        values["openai_api_key"] = key
    values.update(overrides)
    return load_settings(tmp_path / "ws", **values)


def assert_clean(out: TeacherOutput, teacher: OpenAITeacher) -> None:
    """No key, nor any part of one, in anything the teacher hands back."""
    for text in (repr(out), repr(teacher), repr(teacher._pool), repr(teacher._resilient)):
        assert "SECRET" not in text and KEY not in text and "ey-1" not in text


def run(server: FakeOpenAIServer, tmp_path: Path, **overrides: Any) -> tuple[TeacherOutput, OpenAITeacher]:
    teacher = OpenAITeacher(make_settings(tmp_path, server, **overrides))
    return generate_checked(teacher, server, assert_clean), teacher


def test_ok_rows_usage_and_request_shape(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with FakeOpenAIServer(keys=[KEY]) as server:
        out, teacher = run(server, tmp_path)
    assert any(r.levelno == logging.DEBUG for r in caplog.records)  # the leak check sees DEBUG logging
    assert out.error is None and len(out.rows) == 4
    assert out.usage.calls == 1 and out.usage.prompt_tokens > 0 and out.usage.completion_tokens > 0
    expected = (out.usage.prompt_tokens * 0.30 + out.usage.completion_tokens * 2.50) / 1e6
    assert out.usage.cost_usd == pytest.approx(expected)
    assert (teacher.name, teacher.model, teacher.prompt_version) == ("openai", "qwen-test", "llm-v1")
    body = server.bodies[0]
    assert body["model"] == "qwen-test" and body["temperature"] == 0.2
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["name"] == "qa_rows"
    assert "rows" in body["response_format"]["json_schema"]["schema"]["properties"]
    assert server.calls[0].key == 0


def test_no_key_configured_sends_a_placeholder(tmp_path: Path) -> None:
    with FakeOpenAIServer(keys=[NO_KEY]) as server:  # a local server: any key, but one must be sent
        out, _ = run(server, tmp_path, key=None)
    assert out.error is None and out.rows


def test_rate_limit_with_one_key_backs_off_and_retries(tmp_path: Path) -> None:
    with FakeOpenAIServer([fakes.RATE_LIMIT, fakes.RATE_LIMIT], keys=[KEY]) as server:
        started = time.monotonic()
        out, _ = run(server, tmp_path, teacher_backoff_s=0.1, key_cooldown_s=60.0)
        elapsed = time.monotonic() - started
    assert out.error is None and out.rows
    assert [(c.key, c.outcome) for c in server.calls] == [
        (0, fakes.RATE_LIMIT),
        (0, fakes.RATE_LIMIT),
        (0, fakes.OK),
    ]
    assert 0.3 <= elapsed < 5.0  # backed off 0.1 then 0.2 (+jitter); not the 60 s key cool-down


@pytest.mark.parametrize("fault", [fakes.SERVER_ERROR, fakes.UNAVAILABLE])
def test_server_error_is_retried_then_succeeds(tmp_path: Path, fault: str) -> None:
    with FakeOpenAIServer([fault], keys=[KEY]) as server:
        out, _ = run(server, tmp_path)
    assert out.error is None and out.rows
    assert [c.outcome for c in server.calls] == [fault, fakes.OK]


def test_timeout_is_retried(tmp_path: Path) -> None:
    with FakeOpenAIServer([fakes.HANG], keys=[KEY], hang_s=3.0) as server:
        started = time.monotonic()
        out, _ = run(server, tmp_path, teacher_timeout_s=0.5)
    assert out.error is None and out.rows
    assert [c.outcome for c in server.calls] == [fakes.HANG, fakes.OK]
    assert time.monotonic() - started < 2.5


@pytest.mark.parametrize("fault", [fakes.TRUNCATED, fakes.MALFORMED])
def test_truncated_or_malformed_json_is_repaired_into_rows(tmp_path: Path, fault: str) -> None:
    with FakeOpenAIServer([fault], keys=[KEY]) as server:
        out, _ = run(server, tmp_path)
    assert out.error is None and out.rows
    with pytest.raises(json.JSONDecodeError):
        json.loads(out.raw_text or "")
    assert out.usage.calls == 1


def test_hopeless_body_gives_error_and_keeps_raw_text(tmp_path: Path) -> None:
    with FakeOpenAIServer([fakes.HOPELESS], keys=[KEY]) as server:
        out, _ = run(server, tmp_path)
    assert out.failed and out.raw_text == fakes.HOPELESS_TEXT and not out.rows
    assert out.usage.calls == 1 and out.usage.completion_tokens > 0


def test_rate_limited_repeatedly_fails_after_max_attempts(tmp_path: Path) -> None:
    with FakeOpenAIServer(lambda i, k: fakes.RATE_LIMIT, keys=[KEY]) as server:
        out, _ = run(server, tmp_path, teacher_max_attempts=4)
    assert out.error == "HTTP 429 after 4 attempts"
    assert len(server.calls) == 4 and "rate_limit_exceeded" in (out.raw_text or "")


def test_server_errors_exhaust_attempts(tmp_path: Path) -> None:
    with FakeOpenAIServer(lambda i, k: fakes.SERVER_ERROR, keys=[KEY]) as server:
        out, _ = run(server, tmp_path, teacher_max_attempts=3)
    assert out.error == "HTTP 500 after 3 attempts" and len(server.calls) == 3


@pytest.mark.parametrize("fault,status", [(fakes.UNAUTHORIZED, 401), (fakes.FORBIDDEN, 403)])
def test_refused_key_is_not_retried_and_not_echoed(tmp_path: Path, fault: str, status: int) -> None:
    with FakeOpenAIServer([fault], keys=[KEY]) as server:
        out, _ = run(server, tmp_path)
    assert len(server.calls) == 1
    assert out.error == (
        f"HTTP {status}: the API key was refused (not shown); check OPENAI_API_KEY or openai_api_key"
    )
    assert out.raw_text is None  # OpenAI echoes a masked key in the body; it is not kept


def test_unknown_key_gets_openai_401(tmp_path: Path) -> None:
    with FakeOpenAIServer(keys=["sk-other"]) as server:
        out, _ = run(server, tmp_path)
    assert out.error is not None and out.error.startswith("HTTP 401: the API key was refused")
    assert len(server.calls) == 1


def test_bad_request_is_not_retried(tmp_path: Path) -> None:
    with FakeOpenAIServer([fakes.BAD_REQUEST], keys=[KEY]) as server:
        out, _ = run(server, tmp_path)
    assert out.error == "HTTP 400: Invalid request. (not retried)" and len(server.calls) == 1


def test_json_schema_refused_falls_back_to_json_object_once(tmp_path: Path) -> None:
    with FakeOpenAIServer(keys=[KEY], json_schema_supported=False) as server:
        teacher = OpenAITeacher(make_settings(tmp_path, server))
        first = teacher.generate(CHUNK)
        second = teacher.generate(CHUNK)  # remembered: no json_schema attempt any more
    assert first.error is None and first.rows and second.error is None and second.rows
    assert [c.outcome for c in server.calls] == [UNSUPPORTED_FORMAT, fakes.OK, fakes.OK]
    assert (first.usage.calls, second.usage.calls) == (2, 1)
    formats = [b["response_format"]["type"] for b in server.bodies]
    assert formats == ["json_schema", "json_object", "json_object"]
    assert '"rows"' in server.bodies[1]["messages"][0]["content"]  # the schema travels in the system prompt
    assert teacher.json_object_only


def test_concurrent_chunks_under_random_faults_count_every_call(tmp_path: Path) -> None:
    with FakeOpenAIServer(
        teacher_checks.mixed_faults(seed=11, rate_limit=0.15), keys=[KEY], latency_s=0.01
    ) as server:
        teacher = OpenAITeacher(make_settings(tmp_path, server))
        teacher_checks.generate_concurrently_checked(teacher, server, assert_clean)


def test_server_down_is_retried_and_not_billed(tmp_path: Path) -> None:
    """Nothing listens on the port: every attempt is refused at connect, so no call is counted (nothing was
    sent), and the error says the connection failed after the attempts."""
    server = FakeOpenAIServer(keys=[KEY]).start()
    settings = make_settings(tmp_path, server, teacher_max_attempts=3)
    server.stop()
    teacher = OpenAITeacher(settings)
    out = teacher.generate(CHUNK)
    assert_clean(out, teacher)
    assert out.rows == [] and out.error == "connection error after 3 attempts"
    assert out.usage.calls == 0 and out.usage.prompt_tokens == 0
