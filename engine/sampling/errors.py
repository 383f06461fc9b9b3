"""Typed sampling failures: one attempt's retryable failure, and the request-level outcomes.

``AttemptError`` is what one streamed attempt raises for a transient failure; it carries the metrics the
concurrency controller should observe for it. The retry owner turns the last one into
``SamplingExhaustedError`` when the budget runs out. Everything a retry cannot fix is a ``FatalError``.
"""

from __future__ import annotations

from typing import Literal

from engine.errors import FatalError, RetryableError
from engine.sampling.metrics import ServerMetrics

ErrorKind = Literal["http_status", "not_ready", "sse_truncation", "connection", "timeout", "upstream_stream"]


class AttemptError(RetryableError):
    """One attempt failed transiently (408/425/429/5xx, 404 while not ready, dropped link, truncation)."""

    def __init__(
        self,
        message: str,
        *,
        kind: ErrorKind,
        status: int | None = None,
        retry_after_s: float | None = None,
        metrics: ServerMetrics | None = None,
    ) -> None:
        super().__init__(message, retry_after_s=retry_after_s)
        self.kind: ErrorKind = kind
        self.status = status
        self.metrics = metrics
        """What the concurrency controller observes for this attempt (None: free the slot only)."""
        self.attempts = 0
        """Set by the retry owner when it gives up: attempts made for the logical request."""
        self.gave_up: Literal["exhausted", "not_found"] | None = None


class SamplingStatusError(FatalError):
    """The deployment rejected the request with a status a retry cannot fix; ``message`` is the server's."""

    def __init__(self, status: int, message: str, *, request_id: str | None = None) -> None:
        super().__init__(f"HTTP {status} from deployment: {message}")
        self.status = status
        self.server_message = message
        self.request_id = request_id


class SamplingProtocolError(FatalError):
    """The deployment's stream broke the completions contract (bad JSON, no token ids, odd finish)."""


class SamplingExhaustedError(FatalError):
    """Every attempt of one logical request failed transiently; the last status and message are kept."""

    def __init__(
        self,
        *,
        request_id: str,
        attempts: int,
        last_kind: ErrorKind,
        last_status: int | None,
        last_message: str,
        model: str,
    ) -> None:
        status = f"HTTP {last_status}" if last_status is not None else last_kind
        super().__init__(
            f"sampling request {request_id} to {model} failed after {attempts} attempts;"
            f" last error ({status}): {last_message}"
        )
        self.request_id = request_id
        self.attempts = attempts
        self.last_kind: ErrorKind = last_kind
        self.last_status = last_status
        self.last_message = last_message
        self.model = model


class SamplingTimeoutError(SamplingExhaustedError):
    """Exhausted, and the last failure was a timeout (408, 504 or the per-attempt deadline)."""
