"""The sampler's retry policy (a value) and the single retry owner of one logical request.

Defaults follow Fireworks' sampler (fireworks-training-sdk.md §3.3): 7 attempts, backoff from 2 s
doubling to a 30 s cap, each sleep scaled by U[0.5, 1.5), a ``Retry-After`` header honored as a floor
(capped at 30 s). One difference: 404/425 "not ready" (mid hot-load) is retried by the same owner and
within the same budget instead of an inner 10 x 5 s loop, so budgets never multiply; a 404 that persists
past ``max_not_found_attempts`` is taken to be a real "no such model/route" and surfaces as fatal.

The owner is a plain loop with tenacity's semantics (stop after N, wait = policy, retry only typed
retryable errors, injectable sleep) rather than ``tenacity.AsyncRetrying``: building tenacity's retry
state costs ~160 us per request, a quarter of the sampler's whole client overhead on the happy path.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from engine.errors import ConfigError
from engine.retry import backoff_delay
from engine.sampling.errors import AttemptError

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class SamplingRetryPolicy:
    """The sampler's retry budget per logical request (the control-plane client has its own)."""

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
    idle_timeout_s: float = 300.0
    """Silence (no bytes at all, headers included) after which an attempt is cut: detected within 1-2x."""

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
        return backoff_delay(
            failed_attempt,
            initial_s=self.backoff_initial_s,
            multiplier=self.backoff_multiplier,
            max_s=self.backoff_max_s,
            jitter=rng.uniform(self.jitter_low, self.jitter_high),
            retry_after_s=retry_after_s,
            max_retry_after_s=self.retry_after_cap_s,
        )


async def retry_attempts(
    policy: SamplingRetryPolicy,
    attempt: Callable[[int], Awaitable[T]],
    *,
    rng: random.Random,
    sleep: Callable[[float], Awaitable[None]],
    on_retry: Callable[[int, AttemptError, float], None] | None = None,
) -> tuple[T, int]:
    """The one retry owner of a logical request: ``attempt(number)`` until it succeeds.

    Only ``AttemptError`` is retried; anything else propagates at once. When the budget runs out (or a
    404 outlives ``max_not_found_attempts``) the last ``AttemptError`` is raised with ``.attempts`` and
    ``.gave_up`` set. Returns (result, attempts used).
    """
    not_found = 0
    for number in range(1, policy.max_attempts + 1):
        try:
            return await attempt(number), number
        except AttemptError as exc:
            exc.attempts = number
            if exc.kind == "not_ready" and exc.status == 404:
                not_found += 1
                if not_found >= policy.max_not_found_attempts:
                    exc.gave_up = "not_found"
                    raise
            if number == policy.max_attempts:
                exc.gave_up = "exhausted"
                raise
            delay = policy.backoff(number, exc.retry_after_s, rng)
            if on_retry is not None:
                on_retry(number, exc, delay)
            await sleep(delay)
    raise AssertionError("unreachable: the loop returns or raises")
