"""Health and recovery of control-plane resources (the ``health``/``recover`` half of the seam for
engine.backends.fireworks.planes).

Health is one unretried GET of the job or deployment, read as a ``Health`` (engine.backends.base):
what the control plane says, in its own words ("trainer job 'x' is FAILED: trainer process killed by
SIGKILL; last log: ..."). Recovery uses what Fireworks' API offers: a FAILED (or stopped) trainer job
is resumed (``:resume``, through ``reconnect_and_wait``) and waited for; a FAILED or missing
deployment is re-created (deleted, then created again with the same id and trainer link) and waited
for. A re-created deployment serves its base weights, so the run owes it a full snapshot -- which
the run sees by reading its identity back.
"""

from __future__ import annotations

from typing import Any

from engine.backends.base import DeploymentRef, Health, TrainerRef
from engine.backends.fireworks.config import DeploymentConfig, DeploymentInfo
from engine.backends.fireworks.deployments import DeploymentManager
from engine.backends.fireworks.errors import AuthenticationError
from engine.backends.fireworks.jobs import TrainerJobManager
from engine.backends.fireworks.phases import (
    DEPLOYMENT_BAD,
    DEPLOYMENT_SERVING,
    JOB_GONE_STATES,
    job_phase,
    job_status_message,
)
from engine.errors import ConfigError, RetryableError

HEALTH_TIMEOUT_S = 10.0
RESUMABLE_WAIT_S = 120.0


def _unreachable(what: str, exc: Exception) -> Health:
    return Health("unreachable", f"{what}: the control plane did not answer ({exc})")


def _refused(what: str, exc: AuthenticationError) -> ConfigError:
    # A rejected key does not heal by waiting: "unreachable" would be retried by the recovery policy
    # for as long as its budget lasts; a ConfigError fails the run (unrecoverable) naming the cause.
    return ConfigError(f"api_key: the control plane refused it reading {what} ({exc})")


def deployment_config(
    deployment_id: str, base_model: str, trainer: TrainerRef, *, trainer_kind: str
) -> DeploymentConfig:
    """The run's deployment: linked to its trainer job's bucket when the trainer is a job of the same
    control plane, scaled 0..1 (provisioned and re-created alike)."""
    return DeploymentConfig(
        deployment_id=deployment_id,
        base_model=base_model,
        hot_load_trainer_job=trainer.attrs.get("job_name") if trainer.kind == trainer_kind else None,
        min_replica_count=0,
        max_replica_count=1,
    )


def job_health_of(job_id: str, job: dict[str, Any] | None) -> Health:
    """A job's health from its JSON (None: it does not exist); pure."""
    if job is None:
        return Health("gone", f"trainer job {job_id!r} does not exist")
    state = str(job.get("state") or "JOB_STATE_UNSPECIFIED")
    message = job_status_message(job)
    said = f"trainer job {job_id!r} is {state.removeprefix('JOB_STATE_')}"
    said += f": {message}" if message else ""
    phase = job_phase(state)
    if phase == "running":
        return Health("ok", said)
    if phase in ("pending", "starting"):
        return Health("starting", said)
    if state in JOB_GONE_STATES:
        return Health("gone", said)
    return Health("failed", said)  # FAILED, or stopped (resumable)


def deployment_health_of(deployment_id: str, info: DeploymentInfo | None) -> Health:
    """A deployment's health from its record (None: it does not exist); pure."""
    if info is None:
        return Health("gone", f"deployment {deployment_id!r} does not exist")
    reason = str((info.raw.get("status") or {}).get("message") or "")
    said = f"deployment {deployment_id!r} is {info.state}" + (f": {reason}" if reason else "")
    if info.state in DEPLOYMENT_SERVING:
        return Health("ok", said)
    if info.state == "FAILED":
        return Health("failed", said)
    if info.state in DEPLOYMENT_BAD:
        return Health("gone", said)
    return Health("starting", said)


async def job_health(jobs: TrainerJobManager, job_id: str) -> Health:
    """Raises ConfigError for a refused key; any other fatal answer (a 400) propagates as it is."""
    try:
        path = await jobs._jobs_path(job_id)
        result = await jobs.request_once("GET", path, timeout_s=HEALTH_TIMEOUT_S, none_on_404=True)
    except RetryableError as exc:
        return _unreachable(f"trainer job {job_id!r}", exc)
    except AuthenticationError as exc:
        raise _refused(f"trainer job {job_id!r}", exc) from exc
    body = result.body if result.status != 404 and isinstance(result.body, dict) else None
    return job_health_of(job_id, body)


async def deployment_health(deployments: DeploymentManager, deployment_id: str) -> Health:
    """Raises ConfigError for a refused key; any other fatal answer (a 400) propagates as it is."""
    try:
        path = await deployments._path(deployment_id)
        result = await deployments.request_once("GET", path, timeout_s=HEALTH_TIMEOUT_S, none_on_404=True)
    except RetryableError as exc:
        return _unreachable(f"deployment {deployment_id!r}", exc)
    except AuthenticationError as exc:
        raise _refused(f"deployment {deployment_id!r}", exc) from exc
    found = result.status != 404 and isinstance(result.body, dict)
    return deployment_health_of(deployment_id, DeploymentInfo.from_json(result.body) if found else None)


async def recover_job(jobs: TrainerJobManager, job_id: str, *, timeout_s: float, poll_s: float) -> str:
    """Resume the job if it stopped, wait until it is RUNNING and answers; returns its endpoint."""
    endpoint = await jobs.reconnect_and_wait(
        job_id,
        timeout_s=timeout_s,
        poll_interval_s=poll_s,
        max_wait_for_resumable_s=min(RESUMABLE_WAIT_S, timeout_s),
    )
    return endpoint.base_url


async def recover_deployment(
    deployments: DeploymentManager,
    ref: DeploymentRef,
    trainer: TrainerRef,
    *,
    trainer_kind: str,
    timeout_s: float,
    poll_s: float,
) -> None:
    """Re-create the deployment if it FAILED or is gone (same id, same trainer link), then wait READY."""
    info = await deployments.get(ref.resource_id)
    if info is None or info.state in DEPLOYMENT_BAD:
        base_model = ref.attrs.get("base_model", "")
        await deployments.create_or_get(
            deployment_config(ref.resource_id, base_model, trainer, trainer_kind=trainer_kind)
        )
    await deployments.wait_for_ready(ref.resource_id, timeout_s=timeout_s, poll_interval_s=poll_s)
