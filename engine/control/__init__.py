"""Control-plane clients (async, aiohttp): trainer jobs and deployments in Fireworks' REST shape.

The same code drives Fireworks and hotloop's embedded control plane (``hotloop up``).
"""

from engine.control.clock import Clock, SystemClock
from engine.control.config import (
    CreatedTrainerJob,
    DeploymentConfig,
    DeploymentInfo,
    TrainerEndpoint,
    TrainerJobConfig,
)
from engine.control.deployment import DeploymentManager
from engine.control.errors import (
    AuthenticationError,
    ConflictError,
    ControlPlaneError,
    DeploymentFailedError,
    HotloadError,
    NotFoundError,
    RetriesExhaustedError,
    TrainerJobFailedError,
)
from engine.control.phases import HotloadProgress, evaluate_hotload_status
from engine.control.rest import RetryPolicy
from engine.control.trainer import TrainerJobManager

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
    "RetriesExhaustedError",
    "RetryPolicy",
    "SystemClock",
    "TrainerEndpoint",
    "TrainerJobConfig",
    "TrainerJobFailedError",
    "TrainerJobManager",
    "evaluate_hotload_status",
]
