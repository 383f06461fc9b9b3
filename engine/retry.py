"""The retry rules every HTTP client of hotloop shares: which statuses are transient, what an error
body says, how long to sleep.

Each client keeps its own budget as a value (``engine.backends.fireworks.RestRetryPolicy``,
``engine.sampling.SamplingRetryPolicy``), but the statuses, the error-body reading and the backoff
formula live here once, so they cannot drift between the control-plane client, the sampler, the
tinker edge and the load tester. The sampler additionally reads 404/425 as "not ready" (a deployment
mid hot-load) and budgets them apart; that set lives here too.
"""

from __future__ import annotations

import email.utils
import json
import time
from typing import Any

TRANSIENT_STATUSES: frozenset[int] = frozenset({408, 425, 429, 500, 502, 503, 504})
"""Answers that the same request may not get later: timeouts, too early, rate limits, server errors."""

NOT_READY_STATUSES: frozenset[int] = frozenset({404, 425})
"""What a deployment answers while a model is (re)loading; the sampler retries them as "not ready"."""


def is_transient(status: int) -> bool:
    """A listed transient status, or any other 5xx."""
    return status in TRANSIENT_STATUSES or status >= 500


def error_message(body: Any, fallback: str = "", *, limit: int = 2000) -> str:
    """The human message inside an error body (bytes, text or parsed JSON), whichever shape the server
    uses: ``{"error": {"message"}}`` (OpenAI, Fireworks), ``{"error": "..."}``, ``{"message"}``,
    ``{"detail"}`` (FastAPI, vLLM), ``{"statusMessage"}``; else the text itself."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", errors="replace")
    if isinstance(body, str):
        text = body.strip()
        try:
            body = json.loads(text) if text[:1] in ("{", "[") else text
        except ValueError:
            body = text
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:limit]
        if isinstance(err, str) and err:
            return err[:limit]
        for key in ("message", "detail", "statusMessage"):
            if body.get(key):
                return str(body[key])[:limit]
        return (str(err) if err else fallback or json.dumps(body))[:limit]
    if isinstance(body, str) and body:
        return body[:limit]
    return fallback


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
