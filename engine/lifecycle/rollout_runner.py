"""``RolloutRunner``: drives the rollout machine (asynchronous RL) on the learner's event loop.

The rollout machine's states are IDLE, SAMPLING and DONE (engine.lifecycle.table). For every
transition the runner asks the rollout Schedule (engine.lifecycle.rollout) and checks the answer
against ``ROLLOUT_TRANSITIONS``, as the learner's Runner does; the state coroutines never choose.

- IDLE is the runner's own wait: until the Schedule's answer is no longer IDLE, woken by every
  change of the buffer or the learner (no polling), bounded like any state.
- SAMPLING runs the ``sample`` coroutine for the Schedule's target step under a bound that each
  ``beat`` pushes forward (a ``StallWatch``, as in the learner), then puts the batch in the buffer.
  Every beat is also a note to the buffer, so a learner waiting for that batch sees the progress.

Journaling: every entry and exit is a ``{"event": "rollout", ...}`` record (the state, the target
step, what the buffer held, the notes the state recorded), so a report can draw the overlap. These
records commit nothing: replay ignores them, the buffer is volatile, and a resumed run samples
again whatever was buffered or in flight (the prompts of step ``t`` are a function of the seed and
``t``). A failure is journaled, published, and raised as ``RolloutFailed``; the caller hands it to
the buffer so the learner fails with it at its next ``take``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

from engine.errors import FatalError
from engine.lifecycle.buffer import RolloutBuffer
from engine.lifecycle.events import EventBus, LifecycleEvent, RolloutProgress
from engine.lifecycle.runner import Fact, FaultPlan, JournalLike, StallWatch, StateLimits
from engine.lifecycle.table import ROLLOUT_INITIAL, ROLLOUT_TERMINAL, RolloutState, check_rollout_transition
from engine.log import get_logger

log = get_logger("engine.lifecycle.rollout")

T = TypeVar("T")
R = RolloutState


class RolloutFailed(FatalError):
    """The rollout machine stopped in FAILED; the message names the state, the step and the cause."""

    def __init__(self, state: RolloutState, target: int | None, error: BaseException) -> None:
        where = f" for step {target}" if target is not None else ""
        super().__init__(f"rollout machine failed in {state.name}{where}: {type(error).__name__}: {error}")
        self.state = state
        self.target = target


@dataclass
class RolloutVisit:
    """What a SAMPLING coroutine gets: its target step, a beat, and a place for notes to journal."""

    target: int
    watch: StallWatch | None = None
    notes: list[Fact] = field(default_factory=list)
    on_beat: Callable[[str], None] | None = None

    def beat(self, where: str) -> None:
        if self.watch is not None:
            self.watch.beat(where)
        if self.on_beat is not None:
            self.on_beat(where)

    def record(self, fact: Fact) -> None:
        self.notes.append(fact)


class RolloutRunner(Generic[T]):
    def __init__(
        self,
        sample: Callable[[RolloutVisit], Awaitable[T]],
        buffer: RolloutBuffer[T],
        journal: JournalLike,
        *,
        events: EventBus | None = None,
        limits: Mapping[RolloutState, StateLimits] | None = None,
        default_limits: StateLimits = StateLimits(),
        run_id: str = "",
        fault: FaultPlan | None = None,
    ) -> None:
        self.sample = sample
        self.buffer = buffer
        self.schedule = buffer.schedule
        self.journal = journal
        self.events = events or EventBus()
        self.limits = dict(limits or {})
        self.default_limits = default_limits
        self.run_id = run_id
        self.fault = fault
        self.state: RolloutState = ROLLOUT_INITIAL
        self.target: int | None = None

    def _progress(self, phase: Literal["enter", "exit", "failed"]) -> tuple[dict[str, Any], RolloutProgress]:
        v = self.buffer.view()
        progress = RolloutProgress(
            phase, self.target, v.trained, v.synced, tuple(sorted(v.buffered)), tuple(sorted(v.in_flight)),
            self.schedule.capacity,
        )  # fmt: skip
        record = {"event": "rollout", "phase": phase, "state": self.state.value, "target": self.target,
                  "trained": v.trained, "synced": v.synced, "buffered": list(progress.buffered)}  # fmt: skip
        return record, progress

    def _emit(self, progress: RolloutProgress, **kw: Any) -> None:
        step = self.target if self.target is not None else progress.trained
        self.events.publish(LifecycleEvent("rollout", self.state, step, self.run_id, record=progress, **kw))

    async def _idle(self, watch: StallWatch) -> None:
        while self.schedule.next(self.buffer.view()) is R.IDLE:
            await self.buffer.changed()
            watch.beat("the learner or the buffer moved")

    async def _sampling(self, watch: StallWatch, visit: RolloutVisit) -> None:
        target = visit.target
        self.buffer.begin(target)
        try:
            item = await self.sample(visit)
        except BaseException:
            self.buffer.abandon(target)
            raise
        self.buffer.put(target, item)

    async def _visit(self, visit: RolloutVisit) -> None:
        watch = StallWatch(self.state, self.limits.get(self.state, self.default_limits))
        visit.watch = watch
        try:
            async with asyncio.timeout_at(watch.deadline()) as cm:
                watch.bind(cm)
                if self.state is R.IDLE:
                    await self._idle(watch)
                else:
                    await self._sampling(watch, visit)
        except TimeoutError as exc:
            if cm.expired():
                raise watch.stuck_error() from exc
            raise

    async def run(self) -> RolloutState:
        """Drive the rollout machine from IDLE to DONE; raise RolloutFailed (after journaling)."""
        loop = asyncio.get_running_loop()
        while self.state not in ROLLOUT_TERMINAL:
            if self.state is R.SAMPLING:
                self.target = self.schedule.target(self.buffer.view())
                if self.target is None:  # the Schedule said SAMPLING for this very view
                    raise FatalError("rollout Schedule chose SAMPLING without a target step")
            else:
                self.target = None
            record, progress = self._progress("enter")
            await self.journal.append(record)
            self._emit(progress)
            step = self.target if self.target is not None else progress.trained
            if self.fault:
                self.fault.check(self.state, step, "enter")
            visit = RolloutVisit(self.target or 0, on_beat=self.buffer.note)
            started = loop.time()
            try:
                await self._visit(visit)
            except asyncio.CancelledError:
                record, _ = self._progress("exit")
                await self.journal.append({**record, "phase": "cancelled"})
                raise
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                record, progress = self._progress("failed")
                await self.journal.append({**record, "next": R.FAILED.value, "error": error})
                log.error("rollout_state_failed", state=self.state.name, target=self.target, error=error)
                self._emit(progress, next_state=R.FAILED, error=error)
                failed = RolloutFailed(self.state, self.target, exc)
                self.state = R.FAILED
                raise failed from exc
            if self.fault:
                self.fault.check(self.state, step, "exit")
            nxt = check_rollout_transition(self.state, self.schedule.next(self.buffer.view()))
            seconds = loop.time() - started
            record, progress = self._progress("exit")
            await self.journal.append(
                {**record, "next": nxt.value, "seconds": round(seconds, 6),
                 "records": [n.to_json() for n in visit.notes]}
            )  # fmt: skip
            self._emit(progress, next_state=nxt, seconds=seconds)
            self.state = nxt
        self.target = None
        await self.journal.append({"event": "rollout", "phase": "done", "state": self.state.value})
        return self.state
