"""Typed control-plane errors, mapped from HTTP statuses at the client boundary."""

from __future__ import annotations

from typing import Any

from engine.backends.base import PartLost
from engine.errors import FatalError, RetryableError, StuckError


class ControlPlaneError(FatalError):
    """A non-retryable HTTP answer (4xx other than 408/425/429); ``message`` is the server's own text."""

    def __init__(self, message: str, *, status: int, url: str, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.url = url
        self.body = body


class AuthenticationError(ControlPlaneError):
    """401/403: the API key is missing or wrong."""


class NotFoundError(ControlPlaneError):
    """404: the job, deployment or account does not exist."""


class ConflictError(ControlPlaneError):
    """409 that the caller could not resolve (e.g. a tombstoned id reused)."""


class RetriesExhaustedError(RetryableError):
    """Every attempt of one request failed with a retryable error; carries the last one's message."""

    def __init__(self, message: str, *, attempts: int, last_status: int | None) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.last_status = last_status


class TrainerJobFailedError(FatalError, PartLost):
    """The trainer job reached a failed, stopped or deleted state while we waited for it (a lost
    part to the recovery policy: FAILED or stopped can be resumed, deleted is gone)."""

    def __init__(self, message: str, *, job_id: str, state: str) -> None:
        from engine.backends.fireworks.phases import JOB_GONE_STATES  # phases imports this module

        PartLost.__init__(self, "trainer", "gone" if state in JOB_GONE_STATES else "failed", message)
        self.job_id = job_id
        self.state = state


class DeploymentFailedError(FatalError, PartLost):
    """The deployment reached FAILED, DELETING or DELETED while we waited for it (a lost part:
    it can be re-created)."""

    def __init__(self, message: str, *, deployment_id: str, state: str) -> None:
        PartLost.__init__(self, "deployment", "failed" if state == "FAILED" else "gone", message)
        self.deployment_id = deployment_id
        self.state = state


class HotloadError(FatalError):
    """The deployment reported a hot-load error for the snapshot we asked for."""


__all__ = [
    "AuthenticationError",
    "ConflictError",
    "ControlPlaneError",
    "DeploymentFailedError",
    "HotloadError",
    "NotFoundError",
    "RetriesExhaustedError",
    "StuckError",
    "TrainerJobFailedError",
]
