"""Retry arithmetic shared by the control-plane client and the sampler: one formula, two budgets.

Each client keeps its own ``RetryPolicy`` value (different defaults and fields, see
``engine.control.RetryPolicy`` and ``engine.sampling.RetryPolicy``); both compute the sleep here so the
backoff rule cannot drift between them. Which HTTP statuses are retried stays with each client: the
control plane retries 425 like a 5xx, while the sampler treats 404/425 as "not ready" under its own
budget.
"""

from __future__ import annotations

import email.utils
import time


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date); None if absent/invalid.

    ``now`` (epoch seconds) pins the clock an HTTP-date is measured against; the wall clock otherwise.
    """
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
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def backoff_delay(
    attempt: int,
    *,
    initial_s: float,
    multiplier: float,
    max_s: float,
    jitter: float,
    retry_after_s: float | None,
    max_retry_after_s: float,
) -> float:
    """Sleep before the retry that follows failed attempt ``attempt`` (1-based).

    Exponential backoff capped at ``max_s``, then scaled by ``jitter`` (the caller draws it, so the
    random source stays injectable). A server's Retry-After is a floor on the sleep, but never more
    than ``max_retry_after_s``: a misbehaving server must not park a client for hours.
    """
    delay = min(initial_s * multiplier ** (attempt - 1), max_s) * jitter
    if retry_after_s is not None:
        delay = max(delay, min(retry_after_s, max_retry_after_s))
    return delay
