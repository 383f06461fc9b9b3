"""Pure decisions over control-plane resource states and hot-load status bodies (no I/O)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from engine.backends.fireworks.errors import HotloadError

JOB_STATE_PENDING = "JOB_STATE_PENDING"
JOB_STATE_CREATING = "JOB_STATE_CREATING"
JOB_STATE_RUNNING = "JOB_STATE_RUNNING"
JOB_STATE_FAILED = "JOB_STATE_FAILED"
JOB_STATE_PAUSED = "JOB_STATE_PAUSED"
JOB_STATE_CANCELLING = "JOB_STATE_CANCELLING"
JOB_STATE_CANCELLED = "JOB_STATE_CANCELLED"
JOB_STATE_COMPLETED = "JOB_STATE_COMPLETED"
JOB_STATE_EARLY_STOPPED = "JOB_STATE_EARLY_STOPPED"
JOB_STATE_DELETING = "JOB_STATE_DELETING"
JOB_STATE_DELETED = "JOB_STATE_DELETED"
JOB_STATE_ARCHIVED = "JOB_STATE_ARCHIVED"

TOMBSTONE_STATES = frozenset({JOB_STATE_DELETED, JOB_STATE_ARCHIVED})
JOB_GONE_STATES = TOMBSTONE_STATES | {JOB_STATE_DELETING}
"""A trainer job that cannot come back (its id cannot be reused): tombstoned, or on its way there."""
STOPPED_STATES = frozenset(
    {
        JOB_STATE_CANCELLING,
        JOB_STATE_CANCELLED,
        JOB_STATE_COMPLETED,
        JOB_STATE_EARLY_STOPPED,
        JOB_STATE_DELETING,
    }
)
RESUMABLE_STATES = frozenset({JOB_STATE_FAILED, JOB_STATE_CANCELLED, JOB_STATE_PAUSED, JOB_STATE_COMPLETED})

JobPhase = Literal["tombstone", "failed", "stopped", "pending", "starting", "running"]


def job_phase(state: str) -> JobPhase:
    if state in TOMBSTONE_STATES:
        return "tombstone"
    if state == JOB_STATE_FAILED:
        return "failed"
    if state in STOPPED_STATES or state == JOB_STATE_PAUSED:
        return "stopped"
    if state == JOB_STATE_PENDING:
        return "pending"
    if state == JOB_STATE_RUNNING:
        return "running"
    return "starting"


def job_status_message(job: dict[str, Any]) -> str:
    """The control plane's explanation of a job's state, wherever the server put it."""
    status = job.get("status")
    if isinstance(status, dict) and status.get("message"):
        code = status.get("code")
        return f"{status['message']}" + (f" [{code}]" if code and code != "OK" else "")
    return str(job.get("statusMessage") or job.get("message") or "")


DEPLOYMENT_SERVING = frozenset({"READY", "UPDATING"})
DEPLOYMENT_BAD = frozenset({"FAILED", "DELETING", "DELETED"})


@dataclass(frozen=True)
class HotloadProgress:
    done: bool
    failed: bool
    detail: str


def first_replica(body: Any) -> dict[str, Any] | None:
    """``replicas[0]`` of a hot-load status, the only replica that counts (None: no replica yet);
    raises HotloadError for a body that is not a hot-load status."""
    replicas = body.get("replicas") if isinstance(body, dict) else None
    if not isinstance(replicas, list):
        raise HotloadError(f"Unrecognized hotload status response format: {str(body)[:300]}")
    if not replicas:
        return None
    return replicas[0] if isinstance(replicas[0], dict) else {}


def served_identity(replica: dict[str, Any]) -> str | None:
    """The snapshot identity a replica reports serving (None: its base weights, or none said)."""
    ident = replica.get("current_snapshot_identity")
    return ident if isinstance(ident, str) and ident else None


def evaluate_hotload_status(body: Any, expected_identity: str) -> HotloadProgress:
    """Fireworks' completion rule: only ``replicas[0]`` counts; done when it is ready and serves the
    expected identity (or lists it as a loaded adapter); an error stage fails only when it targets
    the expected identity (a stale error from an earlier snapshot is ignored)."""
    replica = first_replica(body)
    if replica is None:
        return HotloadProgress(False, False, "no replicas yet (deployment scaling up)")
    current = served_identity(replica)
    ready = bool(replica.get("readiness"))
    adapters = replica.get("loaded_adapters") or []
    adapter_loaded = any(
        isinstance(a, dict) and a.get("identity") == expected_identity and a.get("status") == "loaded"
        for a in adapters
    )
    loading = replica.get("loading_state") or {}
    stage = loading.get("stage") if isinstance(loading, dict) else None
    target = loading.get("target_snapshot_identity") if isinstance(loading, dict) else None
    detail = f"current={current!r} readiness={ready} stage={stage!r} target={target!r}"
    if ready and (current == expected_identity or adapter_loaded):
        return HotloadProgress(True, False, detail)
    if stage == "error" and target == expected_identity:
        message = loading.get("error_message") or loading.get("error") or loading.get("message") or ""
        return HotloadProgress(False, True, f"{detail} error={message!r}")
    return HotloadProgress(False, False, detail)
