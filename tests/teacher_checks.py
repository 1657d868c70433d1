"""What the API-teacher tests (``test_teacher_gemini``, ``test_teacher_openai``) share: the chunk they send,
the clean environment with the no-key-leak check, and a generate call whose usage is held against the server.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tasks.distill.teachers.base import ChunkContext, FactRef, TeacherOutput
from tests import fakes
from tests.fakes import FakeServer

# Proxies are cleared as well: the real clients would send the fake server's traffic through one.
PROXY_ENV_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")

# Timeouts and retries short enough for a fake server: six attempts, 10 ms backoff.
QUICK_RETRIES: dict[str, Any] = {
    "teacher_timeout_s": 5.0,
    "teacher_max_attempts": 6,
    "teacher_backoff_s": 0.01,
    "key_cooldown_s": 0.3,
}

CHUNK = ChunkContext(
    chunk_id="c1",
    doc_id="d1",
    doc_name="差旅费管理办法",
    heading_path="第三章 住宿费 > 第十条",
    text="出差人员住宿费标准为每人每天不超过300元。市内交通费每人每天80元包干使用。",
    facts=(
        FactRef("f1", "300", None, "元/人/天", "每人每天不超过300元", "不超过", "住宿费标准", "", 10, 20),
        FactRef("f2", "80", None, "元/人/天", "每人每天80元", "", "市内交通费", "", 24, 31),
    ),
)


def no_key_leaks_fixture(env_vars: Iterable[str], secrets: Iterable[str]) -> Any:
    """An autouse fixture for a teacher test module: a clean environment (``env_vars`` unset), every logger at
    DEBUG, and after the test: none of ``secrets`` in the test's logs or console output."""
    env_vars, secrets = tuple(env_vars), tuple(secrets)

    @pytest.fixture(autouse=True)
    def no_key_leaks(
        caplog: pytest.LogCaptureFixture,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path,
    ) -> Iterator[None]:
        for var in env_vars:
            monkeypatch.delenv(var, raising=False)
        monkeypatch.chdir(tmp_path)
        caplog.set_level(logging.DEBUG)
        yield
        captured = capsys.readouterr()
        # At teardown caplog.text is the teardown phase's; the test's own records are kept per phase.
        logged = "\n".join(f"{r.name} {r.getMessage()}" for r in caplog.get_records("call"))
        for text in (logged, captured.out, captured.err):
            for secret in secrets:
                assert secret not in text

    return no_key_leaks


def generate_checked(
    teacher: Any, server: FakeServer, assert_clean: Callable[[TeacherOutput, Any], None]
) -> TeacherOutput:
    """``teacher.generate(CHUNK)``, checked for leaked keys and for usage that matches what the server saw."""
    out = teacher.generate(CHUNK)
    assert_clean(out, teacher)
    assert out.usage.calls == len(server.calls)  # cost accounting matches what the server saw
    return out


def mixed_faults(seed: int, rate_limit: float) -> Callable[[int, int | None], str]:
    """A seeded schedule of every transient fault: rate limits at ``rate_limit``, server errors at 10%, and
    unavailable, truncated and malformed answers at 5% each."""
    return fakes.random_faults(
        seed=seed,
        probabilities={
            fakes.RATE_LIMIT: rate_limit,
            fakes.SERVER_ERROR: 0.1,
            fakes.UNAVAILABLE: 0.05,
            fakes.TRUNCATED: 0.05,
            fakes.MALFORMED: 0.05,
        },
    )


def generate_concurrently_checked(
    teacher: Any, server: FakeServer, assert_clean: Callable[[TeacherOutput, Any], None], chunks: int = 30
) -> list[TeacherOutput]:
    """``chunks`` generate calls from six threads: every call the server saw is counted in some output's usage,
    nearly all succeed (six attempts make a failed chunk very unlikely), and no output leaks a key."""
    with ThreadPoolExecutor(max_workers=6) as pool:
        outs = list(pool.map(teacher.generate, [CHUNK] * chunks))
    assert sum(o.usage.calls for o in outs) == len(server.calls)
    assert sum(1 for o in outs if o.error is None) >= chunks - 2
    for out in outs:
        assert_clean(out, teacher)
    return outs
