"""``AsyncRollouts``: one run's rollout machine (asynchronous RL), beside the learner on its loop.

The learner is the usual lifecycle without SAMPLING; this object owns what the two share: the
bounded ``RolloutBuffer`` (the hand-over), the rollout machine's ``RolloutRunner`` task (started
once WAITING committed, when there is a sampler and a verified deployment), and the way both see
the learner (its committed step, and the step the deployment verifiably serves; -1 while a sync is
owed). The orchestrator wakes the rollout machine after every learner exit; a rollout failure is
handed to the buffer, so the learner's next TRAINING fails with it (the learner's journal names it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from engine.errors import StuckError
from engine.lifecycle.buffer import RolloutBuffer
from engine.lifecycle.events import EventBus
from engine.lifecycle.rollout import RolloutSchedule
from engine.lifecycle.rollout_runner import RolloutRunner, RolloutVisit
from engine.lifecycle.runner import FaultPlan, JournalLike, StateLimits
from engine.lifecycle.table import RolloutState
from engine.log import get_logger

if TYPE_CHECKING:
    from engine.recipes.rl import RolloutBatch
    from engine.run.context import RunContext

log = get_logger("engine.run")

STOP_TIMEOUT_S = 30.0
SampleFn = Callable[["RunContext", RolloutVisit], Awaitable["RolloutBatch"]]


def rollout_limits(default: StateLimits) -> dict[RolloutState, StateLimits]:
    """SAMPLING is bounded like a learner state. IDLE waits for the learner, whose every visit is
    bounded by ``default`` and wakes it: its stall bound is one learner visit, its hard bound a few."""
    idle = StateLimits(timeout_s=8 * default.timeout_s, stall_s=default.timeout_s + default.stall_s)
    return {RolloutState.SAMPLING: default, RolloutState.IDLE: idle}


class AsyncRollouts:
    def __init__(
        self,
        ctx: RunContext,
        max_staleness: int,
        journal: JournalLike,
        *,
        events: EventBus,
        limits: StateLimits,
        fault: FaultPlan | None,
    ) -> None:
        self.max_staleness = max_staleness
        self.schedule = RolloutSchedule(ctx.config.max_steps, max_staleness)
        self.buffer: RolloutBuffer[RolloutBatch] = RolloutBuffer(self.schedule, lambda: self._learner(ctx))
        self._ctx = ctx
        self._journal = journal
        self._events = events
        self._limits = limits
        self._fault = fault
        self.runner: RolloutRunner[RolloutBatch] | None = None
        self._task: asyncio.Task[None] | None = None

    @staticmethod
    def _learner(ctx: RunContext) -> tuple[int, int]:
        c = ctx.counters
        return c.step, -1 if c.force_sync else c.synced_step

    @property
    def state(self) -> RolloutState | None:
        return self.runner.state if self.runner is not None else None

    def start(self, sample: SampleFn) -> None:
        """Start the rollout machine (idempotent: a second call does nothing)."""
        if self._task is not None:
            return
        ctx = self._ctx

        async def sample_one(visit: RolloutVisit) -> RolloutBatch:
            return await sample(ctx, visit)

        self.runner = RolloutRunner(
            sample_one,
            self.buffer,
            self._journal,
            events=self._events,
            limits=rollout_limits(self._limits),
            default_limits=self._limits,
            run_id=ctx.run_id,
            fault=self._fault,
        )
        self._task = asyncio.get_running_loop().create_task(self._main(self.runner), name="hotloop-rollouts")

    async def _main(self, runner: RolloutRunner[RolloutBatch]) -> None:
        try:
            await runner.run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # journaled by the runner; the learner fails with it at its next take
            self.buffer.fail(exc)

    def learner_moved(self) -> None:
        self.buffer.wake()

    async def finish(self, timeout_s: float) -> None:
        """After the learner's DONE: the rollout machine ends too (it has nothing left to sample)."""
        if self._task is None:
            return
        self.buffer.wake()
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.shield(self._task)
        except TimeoutError as exc:
            raise StuckError(
                f"the rollout machine did not reach DONE within {timeout_s:g}s of the learner's DONE "
                f"(state {self.state})"
            ) from exc
        if self.buffer.failed is not None:
            raise self.buffer.failed

    async def stop(self) -> None:
        """Cancel the rollout machine (the learner failed, was cancelled, or finished) and wait for it."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        # wait, not await: the task's CancelledError must not be mistaken for our own cancellation
        _, pending = await asyncio.wait({task}, timeout=STOP_TIMEOUT_S)
        if pending:
            log.warning("rollout machine did not stop after cancellation", seconds=STOP_TIMEOUT_S)
