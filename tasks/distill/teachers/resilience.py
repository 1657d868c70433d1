"""Retries and API-key rotation shared by the model teachers (gemini, openai).

One policy, whatever the client library:

* rate limited (HTTP 429 / RESOURCE_EXHAUSTED): with several keys, the key rests for ``key_cooldown_s`` and
  the next attempt takes another key at once; only when every key rests does ``KeyPool.acquire`` wait for the
  first to wake. With a single key there is nothing to rotate to, so the call backs off instead;
* transient (5xx, 408, timeouts, connection errors): exponential backoff with jitter, via tenacity;
* anything else (400, 401/403, 404, ...): no retry, one clear line saying why;
* every attempt that reached the server is one HTTP call and is counted in ``Usage.calls``, failed or not,
  so that a run's cost accounting matches what the servers saw; an attempt that never connected (connect
  timeout or refused) is retried like any transient failure but not counted.

API keys are secrets: they appear in no message, log line or repr made here (not even a suffix); a key is
named by its position in the list ("key 2 of 3"), and server text is scrubbed of every key before use.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import httpx
import tenacity

from tasks.distill.teachers.base import Usage

log = logging.getLogger(__name__)

T = TypeVar("T")

try:  # the SDKs send through httpx2 when it is installed, else httpx
    import httpx2

    _CONNECT_FAILURES: tuple[type[BaseException], ...] = (
        httpx.ConnectError,
        httpx.ConnectTimeout,
        httpx2.ConnectError,
        httpx2.ConnectTimeout,
    )
except ImportError:  # pragma: no cover - depends on the install
    _CONNECT_FAILURES = (httpx.ConnectError, httpx.ConnectTimeout)

BACKOFF_CAP_S = 60.0  # no single backoff waits longer than this, however many attempts


class FailureKind(enum.Enum):
    RATE_LIMITED = "rate_limited"  # rotate the key (or back off when there is one key)
    TRANSIENT = "transient"  # back off and retry
    IMMEDIATE = "immediate"  # retry at once: the caller changed the request (e.g. a format fallback)
    FATAL = "fatal"  # retrying cannot help


@dataclass(frozen=True)
class Failure:
    """A classified failed call: what kind, a one-line summary (no key in it), and the body if any."""

    kind: FailureKind
    summary: str
    body: str | None = None
    key_refused: bool = False  # 401/403 or an invalid-key answer: name the key's position, never the key
    sent: bool = True  # False when the connection was never made: the server saw no request


Classifier = Callable[[BaseException], Failure]


def never_sent(exc: BaseException) -> bool:
    """Whether ``exc`` (or the transport error an SDK raised it from) is a failure to connect: no request
    reached the server, so there is nothing it saw or could bill."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, _CONNECT_FAILURES):
            return True
        seen = seen.__cause__
    return False


class TeacherCallError(Exception):
    """A call that failed for good: ``summary`` is one line for ``TeacherOutput.error``, ``raw_text`` the last
    body the server sent (scrubbed of keys), ``attempts`` how many calls were made."""

    def __init__(self, summary: str, raw_text: str | None, attempts: int) -> None:
        super().__init__(summary)
        self.summary = summary
        self.raw_text = raw_text
        self.attempts = attempts


class KeyPool:
    """Round-robin API keys; a rate-limited key rests ``cooldown_s`` before it is handed out again.

    Thread-safe: chunks are distilled concurrently, and all threads share one pool so that a key that one
    thread saw rate-limited is rested for all of them.
    """

    def __init__(
        self,
        keys: Sequence[str],
        cooldown_s: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        unique = list(dict.fromkeys(k.strip() for k in keys if k and k.strip()))
        if not unique:
            raise ValueError("KeyPool needs at least one key")
        self._keys = unique
        self._index = {key: i for i, key in enumerate(unique)}
        self._free_at = [0.0] * len(unique)
        self._next = 0
        self._cooldown_s = cooldown_s
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"KeyPool({len(self._keys)} keys, {self.cooling()} cooling)"

    def cooling(self) -> int:
        """How many keys are resting now."""
        with self._lock:
            now = self._clock()
            return sum(1 for t in self._free_at if t > now)

    def position(self, key: str) -> int:
        """1-based position of ``key`` in the configured list: how messages name a key."""
        return self._index[key] + 1

    def acquire(self) -> str:
        """The next key that is not resting, round robin; waits for the earliest to wake when all rest."""
        while True:
            with self._lock:
                now = self._clock()
                n = len(self._keys)
                for step in range(n):
                    i = (self._next + step) % n
                    if self._free_at[i] <= now:
                        self._next = (i + 1) % n
                        return self._keys[i]
                wait = min(self._free_at) - now
            log.info("all %d API keys are rate limited; waiting %.2f s for the first to cool down", n, wait)
            self._sleep(max(wait, 0.0))  # outside the lock, so other threads can still mark keys

    def mark_rate_limited(self, key: str) -> None:
        """Rest ``key`` for the cool-down, counted from now."""
        with self._lock:
            i = self._index[key]
            self._free_at[i] = max(self._free_at[i], self._clock() + self._cooldown_s)


def redact(text: str, secrets: Sequence[str]) -> str:
    """``text`` with every secret replaced by ``[key]`` (servers sometimes echo what they were sent)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[key]")
    return text


class _Failed(Exception):
    """A classified failure on its way through tenacity; holds no client exception (those keep headers)."""

    def __init__(self, failure: Failure, key_position: int) -> None:
        super().__init__(failure.summary)
        self.failure = failure
        self.key_position = key_position


class Resilient:
    """Runs one logical request with the retry policy above; ``call(fn, usage)`` calls ``fn(key)``."""

    def __init__(
        self,
        pool: KeyPool,
        classify: Classifier,
        *,
        max_attempts: int,
        backoff_s: float,
        secrets: Sequence[str] = (),
        label: str = "teacher",
        key_hint: str = "the API key setting",
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.pool = pool
        self.classify = classify
        self.max_attempts = max(1, max_attempts)
        self.backoff_s = max(0.0, backoff_s)
        self.label = label
        self.key_hint = key_hint
        self._secrets = tuple(s for s in secrets if s)
        self._sleep = sleep
        self._backoff = tenacity.wait_exponential_jitter(
            initial=self.backoff_s, max=max(BACKOFF_CAP_S, self.backoff_s), exp_base=2, jitter=self.backoff_s
        )

    def __repr__(self) -> str:
        return f"Resilient({self.label}, {self.pool!r}, max_attempts={self.max_attempts})"

    def call(self, fn: Callable[[str], T], usage: Usage) -> T:
        """``fn(key)`` until it returns, retrying per policy; raises ``TeacherCallError`` when it gives up.
        Adds one to ``usage.calls`` per attempt that reached the server."""
        attempts = 0

        def attempt() -> T:
            nonlocal attempts
            key = self.pool.acquire()
            attempts += 1
            usage.calls += 1  # counted before the call: a failed call is still a call
            try:
                return fn(key)
            except Exception as exc:
                failure = self._scrubbed(self.classify(exc))
                if not failure.sent:
                    usage.calls -= 1  # never connected: nothing for the server to see or bill
                if failure.kind is FailureKind.RATE_LIMITED and len(self.pool) > 1:
                    self.pool.mark_rate_limited(key)
                raise _Failed(failure, self.pool.position(key)) from None

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.max_attempts),
            retry=tenacity.retry_if_exception(
                lambda e: isinstance(e, _Failed) and e.failure.kind is not FailureKind.FATAL
            ),
            wait=self._wait,
            sleep=self._sleep,
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            return retrying(attempt)
        except _Failed as failed:
            summary = self._final_summary(failed, attempts)
            raise TeacherCallError(summary, failed.failure.body, attempts) from None

    # -- policy ------------------------------------------------------------------------------------------
    def _wait(self, state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        kind = exc.failure.kind if isinstance(exc, _Failed) else FailureKind.TRANSIENT
        if kind is FailureKind.IMMEDIATE:
            return 0.0
        if kind is FailureKind.RATE_LIMITED and len(self.pool) > 1:
            return 0.0  # rotate now; KeyPool.acquire waits if every key is resting
        return float(self._backoff(state))

    def _log_retry(self, state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        summary = exc.failure.summary if isinstance(exc, _Failed) else "failure"
        wait = state.next_action.sleep if state.next_action else 0.0
        log.info(
            "%s: %s (attempt %d/%d); retrying in %.2f s",
            self.label,
            summary,
            state.attempt_number,
            self.max_attempts,
            wait,
        )

    def _scrubbed(self, failure: Failure) -> Failure:
        # A refused key's error body may echo part of the key (OpenAI does): it is not kept.
        keep = failure.body is not None and not failure.key_refused
        body = redact(failure.body, self._secrets) if keep and failure.body is not None else None
        return Failure(
            failure.kind, redact(failure.summary, self._secrets), body, failure.key_refused, failure.sent
        )

    def _final_summary(self, failed: _Failed, attempts: int) -> str:
        failure = failed.failure
        if failure.key_refused:
            which = f"key {failed.key_position} of {len(self.pool)}" if len(self.pool) > 1 else "the API key"
            return f"{failure.summary}: {which} was refused (not shown); check {self.key_hint}"
        if failure.kind is FailureKind.FATAL:
            return f"{failure.summary} (not retried)"
        if failure.kind is FailureKind.RATE_LIMITED and len(self.pool) > 1:
            return f"{failure.summary} after {attempts} attempts across {len(self.pool)} keys"
        return f"{failure.summary} after {attempts} attempts"
