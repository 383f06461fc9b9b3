"""Control-plane clients (async, aiohttp): trainer jobs and deployments in Fireworks' REST shape.

The same code drives Fireworks and hotloop's embedded control plane (``hotloop up``).
"""

from engine.backends.fireworks.config import (
    CreatedTrainerJob,
    DeploymentConfig,
    DeploymentInfo,
    TrainerEndpoint,
    TrainerJobConfig,
)
from engine.backends.fireworks.deployments import DeploymentManager
from engine.backends.fireworks.errors import (
    AuthenticationError,
    ConflictError,
    ControlPlaneError,
    DeploymentFailedError,
    HotloadError,
    NotFoundError,
    RetriesExhaustedError,
    TrainerJobFailedError,
)
from engine.backends.fireworks.jobs import TrainerJobManager
from engine.backends.fireworks.phases import HotloadProgress, evaluate_hotload_status
from engine.backends.fireworks.rest import RestRetryPolicy
from engine.clock import Clock, SystemClock

__all__ = [
    "AuthenticationError",
    "Clock",
    "ConflictError",
    "ControlPlaneError",
    "CreatedTrainerJob",
    "DeploymentConfig",
    "DeploymentFailedError",
    "DeploymentInfo",
    "DeploymentManager",
    "HotloadError",
    "HotloadProgress",
    "NotFoundError",
    "RestRetryPolicy",
    "RetriesExhaustedError",
    "SystemClock",
    "TrainerEndpoint",
    "TrainerJobConfig",
    "TrainerJobFailedError",
    "TrainerJobManager",
    "evaluate_hotload_status",
]
