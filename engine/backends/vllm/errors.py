"""Typed errors of the vLLM adapter. Each names the endpoint (or file) at fault and vLLM's own message."""

from __future__ import annotations

from engine.errors import FatalError, RetryableError


class VllmUnavailableError(RetryableError):
    """vLLM did not answer, or answered with a transient status (timeouts, 429, 502-504): try again."""

    def __init__(self, message: str, *, endpoint: str, status: int | None = None) -> None:
        super().__init__(message)
        self.endpoint = endpoint
        self.status = status


class VllmAdminError(FatalError):
    """vLLM refused an admin call (4xx, or a 500 from a worker method such as ``reload_weights``)."""

    def __init__(self, message: str, *, endpoint: str, status: int | None) -> None:
        super().__init__(message)
        self.endpoint = endpoint
        self.status = status


class VllmHotloadError(FatalError):
    """A snapshot could not be made the served weights. The loader left the previous identity serving
    (or, when even that failed, labelled the server as unknown); the chain's next snapshot is a base."""

    def __init__(self, message: str, *, identity: str) -> None:
        super().__init__(message)
        self.identity = identity


class VllmLaunchError(FatalError):
    """A vLLM server hotloop started exited or did not become ready; the message quotes its log."""
