"""``RunContext``: what every state coroutine gets -- the run's config, its two backends, the
resources they provisioned, and the counters.

States replace ``ctx.counters`` (immutable) through its effect methods and note facts with
``ctx.record`` (committed with the state's exit record). The live resources (training session,
syncer, sampler) are created by WAITING and closed by ``RunContext.aclose``; everything is typed
against engine.backends.base, never a concrete backend.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from engine.backends.base import (
    DeploymentBackend,
    DeploymentRef,
    HotLoader,
    Planes,
    SamplerSnapshot,
    TrainerBackend,
    TrainerRef,
    TrainerSession,
)
from engine.config import RunConfig
from engine.lifecycle.runner import LifecycleContext
from engine.lifecycle.schedule import Schedule
from engine.log import get_logger
from engine.recipes.tasks import Task
from engine.run.offload import UserCode
from engine.run.replay import Replay
from engine.run.rundir import RunDir
from engine.run.versions import PolicyVersions
from engine.sampling.sampler import DeploymentSampler
from engine.weights.syncer import WeightSyncer

if TYPE_CHECKING:
    from engine.recipes.rl import RolloutBatch
    from engine.run.rollouts import AsyncRollouts

log = get_logger("engine.run")


@dataclass(kw_only=True)
class RunContext(LifecycleContext):
    config: RunConfig
    run_dir: RunDir
    run_id: str
    schedule: Schedule
    task: Task
    planes: Planes
    user_code: UserCode
    resume: Replay = field(default_factory=Replay)
    generation: int = 1
    eval_rows: list[dict[str, str]] = field(default_factory=list)
    eval_sha256: str = ""
    # provisioned by REQUESTING, ready after WAITING
    trainer_ref: TrainerRef | None = None
    deployment_ref: DeploymentRef | None = None
    # live resources, made by WAITING
    session: TrainerSession | None = None
    hot_loader: HotLoader | None = None
    syncer: WeightSyncer | None = None
    sampler: DeploymentSampler | None = None
    # the served identity as verified (None: the deployment's base weights)
    served_identity: str | None = None
    snapshot: SamplerSnapshot | None = None  # the snapshot CHECKPOINTING wrote for SYNCING
    rollouts: RolloutBatch | None = None  # synchronous RL: SAMPLING's batch for TRAINING
    versions: PolicyVersions = field(default_factory=PolicyVersions)  # snapshot identity -> step
    async_rollouts: AsyncRollouts | None = None  # asynchronous RL: the rollout machine and its buffer

    @property
    def trainer(self) -> TrainerBackend:
        return self.planes.trainer

    @property
    def deployment(self) -> DeploymentBackend:
        return self.planes.deployment

    @property
    def tokenizer(self) -> Any:
        return self.live_session().tokenizer

    # Typed access to what WAITING made; a state that runs before it is a bug in the table.
    def live_session(self) -> TrainerSession:
        assert self.session is not None, "no training session (WAITING must run first)"
        return self.session

    def live_syncer(self) -> WeightSyncer:
        assert self.syncer is not None, "no weight syncer (WAITING must run first)"
        return self.syncer

    def live_sampler(self) -> DeploymentSampler:
        assert self.sampler is not None, "no sampler (WAITING must run first)"
        return self.sampler

    def live_async_rollouts(self) -> AsyncRollouts:
        assert self.async_rollouts is not None, "no rollout machine (rl.async_rollouts is off)"
        return self.async_rollouts

    def live_hot_loader(self) -> HotLoader:
        assert self.hot_loader is not None, "no hot loader (WAITING must run first)"
        return self.hot_loader

    async def close_clients(self, *, timeout_s: float = 30.0) -> None:
        """Close the live clients (sampler, training session), each within ``timeout_s`` (a session
        whose trainer is gone cannot say goodbye); the trainer and deployment stay."""
        if self.sampler is not None:
            await _best_effort(self.sampler.close(), "close sampler", timeout_s)
            self.sampler = None
        if self.session is not None:
            await _best_effort(self.session.close(), "close training session", timeout_s)
            self.session = None

    async def aclose(self, *, delete_resources: bool = False, timeout_s: float = 30.0) -> None:
        """Close clients; optionally delete the trainer and deployment (best effort)."""
        await self.close_clients(timeout_s=timeout_s)
        if self.deployment_ref is not None:
            await _best_effort(
                self.deployment.release(self.deployment_ref, delete=delete_resources),
                "release deployment",
                timeout_s,
            )
        if self.trainer_ref is not None:
            await _best_effort(
                self.trainer.release(self.trainer_ref, delete=delete_resources), "release trainer", timeout_s
            )


async def _best_effort(coro: Any, what: str, timeout_s: float) -> None:
    try:
        async with asyncio.timeout(timeout_s):
            await coro
    except TimeoutError:
        log.warning("cleanup step timed out", what=what, timeout_s=timeout_s)
    except Exception as exc:
        log.warning("cleanup step failed", what=what, error=str(exc))
