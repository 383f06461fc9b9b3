"""The error taxonomy: every failure hotloop raises is either retryable or fatal.

Exceptions from aiohttp, tinker and the OS are mapped to these at the boundary (the client that
made the call), so callers and the single retry owner decide on type, not on strings.
"""

from __future__ import annotations


class HotloopError(Exception):
    """Base of every error hotloop raises on purpose."""


class RetryableError(HotloopError):
    """A transient failure: the same request may succeed later (408, 425, 429, 5xx, dropped link)."""

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class FatalError(HotloopError):
    """A failure that repeating the request cannot fix (4xx other than the retryable ones, bad input)."""


class ConfigError(FatalError):
    """Invalid user configuration; the message names the field at fault."""


class StuckError(FatalError):
    """A bounded wait ran out: the message says what was awaited and where."""
