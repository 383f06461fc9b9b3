"""``RunContext``: what every state coroutine gets -- the run's config, resources and counters.

States read and replace ``ctx.counters`` (immutable) and note facts with ``ctx.record`` (committed
with the state's exit record). Resources (managers, training session, syncer, sampler) are created
by REQUESTING/WAITING and closed by ``RunContext.aclose``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.config import RunConfig
from engine.lifecycle.replay import Replay
from engine.lifecycle.rundir import RunDir
from engine.lifecycle.runner import LifecycleContext
from engine.lifecycle.schedule import Schedule
from engine.log import get_logger
from engine.recipes.rl import RolloutBatch
from engine.recipes.tasks import Task

log = get_logger("engine.run")


@dataclass
class Connection:
    """How to reach the control plane (an embedded stack or a remote one)."""

    base_url: str
    api_key: str
    account_id: str | None = None
    inference_url: str | None = None
    hotload_api_url: str | None = None
    trainer_gateway_url: str | None = None

    def __repr__(self) -> str:  # never show the key
        return f"Connection(base_url={self.base_url!r})"


@dataclass
class RunContext(LifecycleContext):
    config: RunConfig = field(default_factory=RunConfig)
    run_dir: RunDir | None = None
    run_id: str = ""
    schedule: Schedule = field(default_factory=lambda: Schedule(max_steps=0))
    task: Task | None = None
    connection: Connection | None = None
    resume: Replay = field(default_factory=Replay)
    generation: int = 1
    eval_rows: list[dict[str, str]] = field(default_factory=list)
    eval_sha256: str = ""
    # resources
    trainer_mgr: Any = None
    deploy_mgr: Any = None
    job_id: str = ""
    job_name: str = ""
    deployment_id: str = ""
    endpoint: Any = None
    session: Any = None
    syncer: Any = None
    sampler: Any = None
    tokenizer: Any = None
    # the served identity as verified (None: the deployment's base weights)
    served_identity: str | None = None
    snapshot: Any = None  # the SamplerSnapshot CHECKPOINTING wrote for SYNCING
    rollouts: RolloutBatch | None = None
    # live numbers for progress displays
    stats: dict[str, Any] = field(default_factory=dict)

    def require_run_dir(self) -> RunDir:
        assert self.run_dir is not None, "RunContext.run_dir is not set"
        return self.run_dir

    def require_task(self) -> Task:
        assert self.task is not None, "RunContext.task is not set"
        return self.task

    def require_connection(self) -> Connection:
        assert self.connection is not None, "RunContext.connection is not set"
        return self.connection

    async def aclose(self, *, delete_resources: bool = False) -> None:
        """Close clients; optionally delete the trainer job and deployment (best effort)."""
        for name in ("sampler", "session"):
            obj = getattr(self, name)
            if obj is not None:
                try:
                    await obj.close()
                except Exception as exc:
                    log.warning("close failed", resource=name, error=str(exc))
                setattr(self, name, None)
        if delete_resources:
            if self.deploy_mgr is not None and self.deployment_id:
                await _best_effort(self.deploy_mgr.delete(self.deployment_id), "delete deployment")
            if self.trainer_mgr is not None and self.job_id:
                await _best_effort(self.trainer_mgr.delete(self.job_id), "delete trainer job")
        for name in ("deploy_mgr", "trainer_mgr"):
            mgr = getattr(self, name)
            if mgr is not None:
                await _best_effort(mgr.aclose(), f"close {name}")
                setattr(self, name, None)


async def _best_effort(coro: Any, what: str) -> None:
    try:
        await coro
    except Exception as exc:
        log.warning("cleanup step failed", what=what, error=str(exc))
