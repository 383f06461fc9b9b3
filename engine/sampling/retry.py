"""The sampler's retry policy: a value object turned into one tenacity retry owner per logical request.

Defaults follow Fireworks' sampler (fireworks-training-sdk.md §3.3): 7 attempts, backoff from 2 s
doubling to a 30 s cap, each sleep scaled by U[0.5, 1.5), a ``Retry-After`` header honored as a floor
(capped at 30 s). One difference: 404/425 "not ready" (mid hot-load) is retried by the same owner and
within the same budget instead of an inner 10 x 5 s loop, so budgets never multiply; a 404 that persists
past ``max_not_found_attempts`` is taken to be a real "no such model/route" and surfaces as fatal.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from tenacity import AsyncRetrying, RetryCallState, stop_after_attempt

from engine.errors import ConfigError
from engine.sampling.errors import AttemptError

RETRYABLE_STATUSES: frozenset[int] = frozenset({408, 429, 500, 502, 503, 504})
"""HTTP statuses retried as transient (plus 404/425 as "not ready")."""
NOT_READY_STATUSES: frozenset[int] = frozenset({404, 425})


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date); None if absent/invalid."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 7
    """Attempts per logical request, the first included."""
    backoff_initial_s: float = 2.0
    backoff_multiplier: float = 2.0
    backoff_max_s: float = 30.0
    jitter_low: float = 0.5
    jitter_high: float = 1.5
    """Each backoff is scaled by U[jitter_low, jitter_high)."""
    retry_after_cap_s: float = 30.0
    """A server's Retry-After is a floor on the sleep, but never more than this."""
    max_not_found_attempts: int = 3
    """404 answers tolerated (as "not ready yet") before the 404 is treated as final."""
    attempt_timeout_s: float = 600.0
    """Deadline for one attempt: connect, headers and the whole stream."""
    idle_timeout_s: float = 120.0
    """Longest silence between two reads of one stream."""

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.backoff_initial_s < 0 or self.backoff_max_s < 0 or self.backoff_multiplier < 1:
            raise ConfigError("backoff_initial_s/backoff_max_s must be >= 0 and backoff_multiplier >= 1")
        if not 0 <= self.jitter_low <= self.jitter_high:
            raise ConfigError("jitter must satisfy 0 <= jitter_low <= jitter_high")
        if self.attempt_timeout_s <= 0 or self.idle_timeout_s <= 0:
            raise ConfigError("attempt_timeout_s and idle_timeout_s must be > 0")

    def backoff(self, failed_attempt: int, retry_after_s: float | None, rng: random.Random) -> float:
        """Sleep before the attempt after ``failed_attempt`` (1-based)."""
        base = min(
            self.backoff_initial_s * self.backoff_multiplier ** (failed_attempt - 1), self.backoff_max_s
        )
        delay = base * rng.uniform(self.jitter_low, self.jitter_high)
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, self.retry_after_cap_s))
        return delay


class _NotFoundBudget:
    """Counts 404s within one logical request (tenacity's retry predicate is stateless)."""

    __slots__ = ("limit", "seen")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen = 0

    def allows(self, exc: AttemptError) -> bool:
        if exc.kind == "not_ready" and exc.status == 404:
            self.seen += 1
            return self.seen < self.limit
        return True


def build_retrying(
    policy: RetryPolicy,
    *,
    rng: random.Random,
    sleep: Callable[[float], Awaitable[None]],
    before_sleep: Callable[[RetryCallState], None] | None = None,
) -> tuple[AsyncRetrying, _NotFoundBudget]:
    """The tenacity loop for one logical request, and its 404 budget (to tell why a 404 stopped it)."""
    budget = _NotFoundBudget(policy.max_not_found_attempts)

    def should_retry(state: RetryCallState) -> bool:
        exc = state.outcome.exception() if state.outcome is not None else None
        return isinstance(exc, AttemptError) and budget.allows(exc)

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        retry_after = exc.retry_after_s if isinstance(exc, AttemptError) else None
        return policy.backoff(state.attempt_number, retry_after, rng)

    retrying = AsyncRetrying(
        stop=stop_after_attempt(policy.max_attempts),
        wait=wait,
        retry=should_retry,
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )
    return retrying, budget
