"""The Gemini teacher with the real google-genai client against a fake Gemini server on 127.0.0.1.

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
from tasks.distill.teachers.base import TeacherConfigError, TeacherOutput
from tasks.distill.teachers.gemini import GeminiTeacher
from tasks.distill.teachers.resilience import KeyPool
from tests import fakes, teacher_checks
from tests.fakes.gemini_server import FakeGeminiServer
from tests.teacher_checks import CHUNK, PROXY_ENV_VARS, generate_checked, no_key_leaks_fixture

KEYS = ["sk-test-SECRET-key-1", "sk-test-SECRET-key-2", "sk-test-SECRET-key-3"]
ENV_VARS = (
    "GEMINI_API_KEYS",
    "SLM_GEMINI_API_KEYS",
    "GOOGLE_API_KEY",
    "GEMINI_API_KEY",
    "SLM_WORKSPACE",
    *PROXY_ENV_VARS,
    "GOOGLE_GENAI_USE_VERTEXAI",
    "GOOGLE_GENAI_API_VERSION",
    "GOOGLE_GENAI_HTTP_CLIENT",
)


no_key_leaks = no_key_leaks_fixture(ENV_VARS, ("SECRET",))


def make_settings(
    tmp_path: Path, server: FakeGeminiServer, keys: list[str] = KEYS, **overrides: Any
) -> Settings:
    values: dict[str, Any] = {
        "gemini_base_url": server.base_url,
        "gemini_api_keys": ",".join(keys),
        **teacher_checks.QUICK_RETRIES,
    }
    values.update(overrides)
    return load_settings(tmp_path / "ws", **values)


def assert_clean(out: TeacherOutput, teacher: GeminiTeacher) -> None:
    """No key, nor any part of one, in anything the teacher hands back."""
    for text in (repr(out), repr(teacher), repr(teacher._pool), repr(teacher._resilient)):
        assert "SECRET" not in text
        assert not any(key in text for key in KEYS)


def run(server: FakeGeminiServer, tmp_path: Path, **overrides: Any) -> tuple[TeacherOutput, GeminiTeacher]:
    teacher = GeminiTeacher(make_settings(tmp_path, server, **overrides))
    return generate_checked(teacher, server, assert_clean), teacher


def test_ok_rows_usage_and_request_shape(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with FakeGeminiServer(keys=KEYS) as server:
        out, teacher = run(server, tmp_path)
    assert any(r.levelno == logging.DEBUG for r in caplog.records)  # the leak check sees DEBUG logging
    assert out.error is None and len(out.rows) == 4
    assert {row.numbers for row in out.rows} == {("300",), ("80",)}
    assert out.usage.calls == 1 and out.usage.prompt_tokens > 0 and out.usage.completion_tokens > 0
    expected = (out.usage.prompt_tokens * 0.30 + out.usage.completion_tokens * 2.50) / 1e6
    assert out.usage.cost_usd == pytest.approx(expected)
    assert (teacher.name, teacher.model, teacher.prompt_version) == ("gemini", "gemini-2.5-flash", "llm-v1")
    body = server.bodies[0]
    assert "住宿费标准" in body["contents"][0]["parts"][0]["text"]
    assert "高校财务制度" in body["systemInstruction"]["parts"][0]["text"]
    config = body["generationConfig"]
    assert config["responseMimeType"] == "application/json" and config["temperature"] == 0.2
    assert set(config["responseSchema"]["properties"]) == {"rows"}


def test_rate_limited_key_rotates_to_the_next_key(tmp_path: Path) -> None:
    with FakeGeminiServer([fakes.RATE_LIMIT], keys=KEYS) as server:
        out, _ = run(server, tmp_path)
    assert out.error is None and out.rows
    assert [(c.key, c.outcome) for c in server.calls] == [(0, fakes.RATE_LIMIT), (1, fakes.OK)]


@pytest.mark.parametrize("fault", [fakes.SERVER_ERROR, fakes.UNAVAILABLE])
def test_server_error_is_retried_then_succeeds(tmp_path: Path, fault: str) -> None:
    with FakeGeminiServer([fault, fault], keys=KEYS) as server:
        out, _ = run(server, tmp_path)
    assert out.error is None and out.rows
    assert [c.outcome for c in server.calls] == [fault, fault, fakes.OK]


def test_timeout_is_retried(tmp_path: Path) -> None:
    with FakeGeminiServer([fakes.HANG], keys=KEYS, hang_s=3.0) as server:
        started = time.monotonic()
        out, _ = run(server, tmp_path, teacher_timeout_s=0.5)
    assert out.error is None and out.rows
    assert [c.outcome for c in server.calls] == [fakes.HANG, fakes.OK]
    assert time.monotonic() - started < 2.5  # the client gave up at its timeout, not the server's hang


def test_timeouts_exhaust_attempts_with_a_clear_error(tmp_path: Path) -> None:
    with FakeGeminiServer(lambda i, k: fakes.HANG, keys=KEYS, hang_s=3.0) as server:
        out, _ = run(server, tmp_path, teacher_timeout_s=0.3, teacher_max_attempts=2)
    assert out.error == "timeout (0.3 s) after 2 attempts" and not out.rows


@pytest.mark.parametrize("fault", [fakes.TRUNCATED, fakes.MALFORMED])
def test_truncated_or_malformed_json_is_repaired_into_rows(tmp_path: Path, fault: str) -> None:
    with FakeGeminiServer([fault], keys=KEYS) as server:
        out, _ = run(server, tmp_path)
    assert out.error is None and out.rows
    assert all(row.question and row.answer for row in out.rows)
    with pytest.raises(json.JSONDecodeError):
        json.loads(out.raw_text or "")  # what came back really was broken; the raw text is kept as sent
    assert out.usage.calls == 1


def test_hopeless_body_gives_error_and_keeps_raw_text(tmp_path: Path) -> None:
    with FakeGeminiServer([fakes.HOPELESS], keys=KEYS) as server:
        out, _ = run(server, tmp_path)
    assert out.failed and "no 'rows'" in (out.error or "")
    assert out.raw_text == fakes.HOPELESS_TEXT and not out.rows
    assert out.usage.calls == 1 and out.usage.completion_tokens > 0  # the call was billed all the same


def test_all_keys_rate_limited_waits_for_cooldown_then_succeeds(tmp_path: Path) -> None:
    with FakeGeminiServer([fakes.RATE_LIMIT] * 3, keys=KEYS) as server:
        started = time.monotonic()
        out, _ = run(server, tmp_path, key_cooldown_s=0.4)
        elapsed = time.monotonic() - started
    assert out.error is None and out.rows
    assert [(c.key, c.outcome) for c in server.calls] == [
        (0, fakes.RATE_LIMIT),
        (1, fakes.RATE_LIMIT),
        (2, fakes.RATE_LIMIT),
        (0, fakes.OK),
    ]
    assert 0.3 <= elapsed < 3.0  # waited for the first key's cool-down, no longer


def test_all_keys_rate_limited_fail_after_max_attempts(tmp_path: Path) -> None:
    with FakeGeminiServer(lambda i, k: fakes.RATE_LIMIT, keys=KEYS) as server:
        out, _ = run(server, tmp_path, key_cooldown_s=0.1, teacher_max_attempts=5)
    assert out.error == "HTTP 429 RESOURCE_EXHAUSTED after 5 attempts across 3 keys"
    assert len(server.calls) == 5 and not out.rows
    assert "RESOURCE_EXHAUSTED" in (out.raw_text or "")  # the last error body, for the audit


def test_server_errors_exhaust_attempts(tmp_path: Path) -> None:
    with FakeGeminiServer(lambda i, k: fakes.SERVER_ERROR, keys=KEYS) as server:
        out, _ = run(server, tmp_path, teacher_max_attempts=3)
    assert out.error == "HTTP 500 INTERNAL after 3 attempts"
    assert len(server.calls) == 3


@pytest.mark.parametrize("fault,status", [(fakes.UNAUTHORIZED, 401), (fakes.FORBIDDEN, 403)])
def test_refused_key_is_not_retried(tmp_path: Path, fault: str, status: int) -> None:
    with FakeGeminiServer([fault], keys=KEYS) as server:
        out, _ = run(server, tmp_path)
    assert len(server.calls) == 1
    assert out.error is not None and out.error.startswith(f"HTTP {status}")
    assert "key 1 of 3 was refused (not shown)" in out.error and "GEMINI_API_KEYS" in out.error


def test_invalid_key_answer_from_google_names_the_key_position(tmp_path: Path) -> None:
    # Google answers an unknown key with 400 INVALID_ARGUMENT / API_KEY_INVALID; this server knows keys 1, 3.
    with FakeGeminiServer(keys=[KEYS[0], KEYS[2]]) as server:
        teacher = GeminiTeacher(make_settings(tmp_path, server))
        first = teacher.generate(CHUNK)  # key 1: fine
        second = teacher.generate(CHUNK)  # key 2: refused
    assert first.error is None
    assert second.error == (
        "HTTP 400 INVALID_ARGUMENT: key 2 of 3 was refused (not shown); check GEMINI_API_KEYS"
    )
    assert second.raw_text is None  # a refused key's error body is not kept
    assert_clean(second, teacher)


def test_bad_request_is_not_retried(tmp_path: Path) -> None:
    with FakeGeminiServer([fakes.BAD_REQUEST], keys=KEYS) as server:
        out, _ = run(server, tmp_path)
    assert out.error == "HTTP 400 INVALID_ARGUMENT: Request contains an invalid argument. (not retried)"
    assert len(server.calls) == 1


def test_concurrent_chunks_under_random_faults_count_every_call(tmp_path: Path) -> None:
    with FakeGeminiServer(
        teacher_checks.mixed_faults(seed=7, rate_limit=0.2), keys=KEYS, latency_s=0.01
    ) as server:
        teacher = GeminiTeacher(make_settings(tmp_path, server, key_cooldown_s=0.05))
        teacher_checks.generate_concurrently_checked(teacher, server, assert_clean)
    assert server.outcome_counts().get(fakes.RATE_LIMIT, 0) > 0


def test_missing_keys_is_a_config_error(tmp_path: Path) -> None:
    settings = load_settings(tmp_path / "ws")
    with pytest.raises(TeacherConfigError, match=r"GEMINI_API_KEYS.*secrets\.toml"):
        GeminiTeacher(settings)


def test_random_faults_are_seeded_per_call_index() -> None:
    first = fakes.random_faults(3, {fakes.RATE_LIMIT: 0.3, fakes.SERVER_ERROR: 0.2})
    second = fakes.random_faults(3, {fakes.RATE_LIMIT: 0.3, fakes.SERVER_ERROR: 0.2})
    draws = [first(i, 0) for i in range(200)]
    assert draws == [second(i, 1) for i in range(200)]
    assert 40 < draws.count(fakes.RATE_LIMIT) < 80 and 20 < draws.count(fakes.SERVER_ERROR) < 60


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_key_pool_round_robin_cooldown_and_wait() -> None:
    clock = FakeClock()
    pool = KeyPool(["a", "b", "c"], cooldown_s=10.0, clock=clock, sleep=clock.sleep)
    assert [pool.acquire() for _ in range(4)] == ["a", "b", "c", "a"]
    pool.mark_rate_limited("b")
    assert [pool.acquire() for _ in range(3)] == ["c", "a", "c"]  # b rests
    clock.now = 2.0
    pool.mark_rate_limited("a")
    pool.mark_rate_limited("c")
    assert pool.cooling() == 3
    assert pool.acquire() == "b" and clock.slept == [8.0]  # b, rate limited at 0, wakes first (at 10)
    assert repr(pool) == "KeyPool(3 keys, 2 cooling)"


def test_key_pool_repr_shows_nothing_of_the_keys() -> None:
    pool = KeyPool(KEYS, cooldown_s=1.0)
    assert "SECRET" not in repr(pool) and "key-1" not in repr(pool) and "y-1" not in repr(pool)
    with pytest.raises(ValueError):
        KeyPool([" ", ""], cooldown_s=1.0)


def test_server_down_is_retried_and_not_billed(tmp_path: Path) -> None:
    """Nothing listens on the port: every attempt is refused at connect, so no call is counted (nothing was
    sent), and the error says the connection failed after the attempts."""
    server = FakeGeminiServer(keys=KEYS).start()
    settings = make_settings(tmp_path, server, teacher_max_attempts=3)
    server.stop()
    teacher = GeminiTeacher(settings)
    out = teacher.generate(CHUNK)
    assert_clean(out, teacher)
    assert out.rows == [] and out.error is not None and out.error.startswith("connection error")
    assert out.error.endswith("after 3 attempts")
    assert out.usage.calls == 0 and out.usage.prompt_tokens == 0
