"""The liveness watch: while a state runs, ask the backends every few seconds whether their parts are
still there, and fail the state at once, with the backend's own reason, when one is lost.

Without it a lost part shows up only as a request that never succeeds: a training call retried by
tinker's client until the state's stall limit ("CHECKPOINTING is stuck"), a hot-load retried on 503
for minutes. With it, the state fails within ``every_s`` as "trainer job 'x' is FAILED: trainer
process killed by SIGKILL", and the recovery policy (engine.run.recovery) knows what to do.

Each check is one cheap, unretried read per part (``health(ref)`` on the seam), bounded by
``probe_timeout_s``. A read that fails is not a loss: only a part whose health reads ``unreachable``
for ``unreachable_after_s`` in a row is reported (as unreachable), so a reset connection or a 503
burst on the control plane does not end a state. A control plane the run started itself is watched
through its process, which costs nothing and is checked in every state (REQUESTING and WAITING
included); the trainer and the deployment are asked only once WAITING made them ready.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from engine.backends.base import DeploymentRef, Health, Part, PartLost, Planes, TrainerRef
from engine.lifecycle.table import State

_SETUP = frozenset({State.REQUESTING, State.WAITING})


@dataclass(frozen=True)
class LivenessLimits:
    every_s: float = 5.0
    probe_timeout_s: float = 10.0
    unreachable_after_s: float = 30.0


def verdict(
    part: Part, health: Health, unreachable_since: float | None, now: float, limits: LivenessLimits
) -> tuple[PartLost | None, float | None]:
    """(the loss to raise or None, the updated start of the unreachable streak); pure."""
    if health.lost:
        return PartLost(part, health.status, health.detail or f"the {part} is {health.status}"), None
    if health.status != "unreachable":
        return None, None
    since = now if unreachable_since is None else unreachable_since
    if now - since >= limits.unreachable_after_s:
        what = health.detail or f"the {part}'s health could not be read"
        return PartLost(part, "unreachable", f"{what} (for {now - since:.0f}s)"), since
    return None, since


class LivenessWatch:
    """One per attempt; ``watch(state)`` runs beside each state (the Runner's ``liveness``)."""

    def __init__(
        self,
        planes: Planes,
        refs: Callable[[], tuple[TrainerRef | None, DeploymentRef | None]],
        limits: LivenessLimits = LivenessLimits(),
    ) -> None:
        self.planes = planes
        self.refs = refs
        self.limits = limits
        self._unreachable: dict[Part, float | None] = {"trainer": None, "deployment": None}

    def control_plane_lost(self) -> PartLost | None:
        supervised = self.planes.control_plane
        reason = supervised.exit_reason() if supervised is not None else None
        if reason is None:
            return None
        return PartLost("control_plane", "failed", f"the embedded control plane {reason}")

    async def _health(self, probe: Awaitable[Health]) -> Health:
        try:
            async with asyncio.timeout(self.limits.probe_timeout_s):
                return await probe
        except TimeoutError:
            return Health("unreachable", f"no health answer within {self.limits.probe_timeout_s:g}s")

    async def check(self, state: State) -> None:
        """One round of checks; raises PartLost for a lost part."""
        lost = self.control_plane_lost()
        if lost is not None:
            raise lost
        trainer_ref, deployment_ref = self.refs()
        if state in _SETUP or trainer_ref is None or deployment_ref is None:
            return
        trainer_health, deployment_health = await asyncio.gather(
            self._health(self.planes.trainer.health(trainer_ref)),
            self._health(self.planes.deployment.health(deployment_ref)),
        )
        now = asyncio.get_running_loop().time()
        answers: tuple[tuple[Part, Health], ...] = (
            ("trainer", trainer_health),
            ("deployment", deployment_health),
        )
        for part, health in answers:
            found, self._unreachable[part] = verdict(part, health, self._unreachable[part], now, self.limits)
            if found is not None:
                raise found

    async def watch(self, state: State) -> None:
        """Until cancelled (the state ended), or raise the first lost part."""
        while True:
            await asyncio.sleep(self.limits.every_s)
            await self.check(state)
