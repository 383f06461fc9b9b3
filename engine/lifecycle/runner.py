"""The Runner: drives the lifecycle states on one event loop.

For each state it journals the entry, runs the state's coroutine under a bound, asks ``decide`` (the
Schedule, in a run) for the successor, checks it against the transition table, and journals the exit
together with the facts the state recorded (a committed step's metrics row, a saved checkpoint, a
sync...). States do their work and record facts; they never choose their successor, so the Schedule
is the one decision and the table its check. The exit record is the unit of commitment: a fact a state
recorded counts only once its exit record is on disk, so a process killed inside a state loses that
state's work and a resumed run redoes it.

Bounds: every state runs under ``asyncio.timeout``. The deadline starts at ``stall_s`` and moves
forward each time the state reports progress (``ctx.beat(where)``), never past ``timeout_s`` after
entry. A state that stops making progress fails with ``StuckError`` saying which state, for how
long, and the last thing it reported.

Liveness: a run may pass ``liveness(state)``, a coroutine that runs beside each state and raises when
a part the state depends on is lost (engine.run.liveness asks the backends' health). The state is
then cancelled and fails with that error -- the backend's own reason -- instead of running into its
stall limit.

Fault injection for crash tests: ``HOTLOOP_FAULT=kill:STATE[@STEP][:enter|:exit]`` makes the
process SIGKILL itself right after journaling the entry of STATE (``enter``), or once the state's
work is done but before its exit is journaled (``exit``, the default: the most adversarial point).
STEP is the committed step at entry; ``rollout.STATE@TARGET`` names a state of the rollout machine
(asynchronous RL) and the step whose batch it samples.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from engine.errors import FatalError, StuckError
from engine.journal import Record
from engine.lifecycle.events import EventBus, EventKind, LifecycleEvent
from engine.lifecycle.schedule import Counters
from engine.lifecycle.table import TERMINAL, RolloutState, State, check_transition
from engine.log import get_logger

log = get_logger("engine.lifecycle.runner")


class JournalLike(Protocol):
    async def append(self, record: Record) -> Record: ...


class Fact(Protocol):
    """Something a state learned that the journal commits with its exit (engine.run.records)."""

    kind: ClassVar[str]

    def to_json(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class StateLimits:
    timeout_s: float = 3600.0  # hard bound on one visit to the state
    stall_s: float = 600.0  # bound on the time between two progress reports


class StallWatch:
    """The bound of one visit to a state; ``beat`` pushes its stall deadline forward."""

    def __init__(self, state: State | RolloutState, limits: StateLimits) -> None:
        self.state = state
        self.limits = limits
        self.where = "entered"
        self.beats = 0
        self._loop = asyncio.get_running_loop()
        self._started = self._loop.time()
        self._hard = self._started + limits.timeout_s
        self._last = self._started
        self._cm: asyncio.Timeout | None = None

    def deadline(self) -> float:
        return min(self._hard, self._last + self.limits.stall_s)

    def bind(self, cm: asyncio.Timeout) -> None:
        self._cm = cm

    def beat(self, where: str) -> None:
        self.where = where
        self.beats += 1
        self._last = self._loop.time()
        if self._cm is not None and not self._cm.expired():
            self._cm.reschedule(self.deadline())

    def stuck_error(self) -> StuckError:
        now = self._loop.time()
        if now >= self._hard - 1e-3:
            why = f"still running after its {self.limits.timeout_s:g}s limit"
        else:
            why = f"no progress for {now - self._last:.1f}s (stall limit {self.limits.stall_s:g}s)"
        machine = "rollout" if isinstance(self.state, RolloutState) else "lifecycle"
        return StuckError(f"{machine} state {self.state.name} is stuck: {why}; last progress: {self.where}")


@dataclass
class LifecycleContext:
    """What the Runner needs from a run's context; a run subclasses it with its resources."""

    counters: Counters = field(default_factory=Counters)
    watch: StallWatch | None = None
    facts: list[Fact] = field(default_factory=list)

    def record(self, fact: Fact) -> None:
        """Note a fact to commit with this state's exit record (it is lost if the state fails)."""
        self.facts.append(fact)

    def beat(self, where: str) -> None:
        if self.watch is not None:
            self.watch.beat(where)


Ctx = TypeVar("Ctx", bound=LifecycleContext)
StateFn = Callable[[Ctx], Awaitable[None]]
Decide = Callable[[State, Ctx], State]
Liveness = Callable[[State], Coroutine[Any, Any, None]]


async def run_watched(work: Awaitable[None], watch: Coroutine[Any, Any, None] | None) -> None:
    """Await ``work``; if ``watch`` (which only ever raises) fails first, cancel ``work`` and raise the
    watch's error. Leaving early (cancelled, a deadline) cancels and awaits both."""
    if watch is None:
        await work
        return
    work_task = asyncio.ensure_future(work)
    watch_task = asyncio.ensure_future(watch)
    try:
        await asyncio.wait({work_task, watch_task}, return_when=asyncio.FIRST_COMPLETED)
        if not work_task.done():
            lost = watch_task.exception()  # the watch ended first: it raised (or found nothing)
            if lost is not None:
                work_task.cancel()
            await asyncio.wait({work_task})  # the state's own cleanup (finally blocks) runs first
            if lost is not None and work_task.cancelled():
                raise lost
    finally:
        for task in (work_task, watch_task):
            task.cancel()
        await asyncio.wait({work_task, watch_task})
    work_task.result()  # the state's own outcome (a success that raced the watch wins)


class RunFailed(FatalError):
    """The run stopped in FAILED; the message names the state and step, ``__cause__`` the error."""

    def __init__(self, state: State, step: int, error: BaseException) -> None:
        super().__init__(f"run failed in state {state.name} at step {step}: {type(error).__name__}: {error}")
        self.state = state
        self.step = step


@dataclass(frozen=True)
class FaultPlan:
    """Where a crash test wants this process to die (parsed from HOTLOOP_FAULT)."""

    state: State | RolloutState
    step: int | None = None
    phase: str = "exit"

    @classmethod
    def from_env(cls, value: str | None = None) -> FaultPlan | None:
        spec = os.environ.get("HOTLOOP_FAULT", "") if value is None else value
        if not spec:
            return None
        try:
            action, _, rest = spec.partition(":")
            target, _, phase = rest.partition(":")
            name, _, step = target.partition("@")
            if action != "kill" or phase not in ("", "enter", "exit"):
                raise ValueError(spec)
            machine, dot, rollout_name = name.partition(".")
            state: State | RolloutState = (
                RolloutState[rollout_name.upper()]
                if dot and machine.lower() == "rollout"
                else State[name.upper()]
            )
            return cls(state, int(step) if step else None, phase or "exit")
        except (KeyError, ValueError) as exc:
            raise ValueError(
                f"HOTLOOP_FAULT must look like kill:[rollout.]STATE[@STEP][:enter|:exit], got {spec!r}"
            ) from exc

    def check(self, state: State | RolloutState, step: int, phase: str) -> None:
        if state is self.state and phase == self.phase and (self.step is None or self.step == step):
            log.warning("fault_injection_kill", state=state.name, step=step, phase=phase)
            os.kill(os.getpid(), signal.SIGKILL)


def _changes(before: Counters, after: Counters) -> dict[str, Any]:
    a, b = dataclasses.asdict(before), dataclasses.asdict(after)
    return {k: v for k, v in b.items() if a[k] != v}


class Runner(Generic[Ctx]):
    def __init__(
        self,
        handlers: Mapping[State, StateFn[Ctx]],
        journal: JournalLike,
        *,
        decide: Decide[Ctx],
        events: EventBus | None = None,
        limits: Mapping[State, StateLimits] | None = None,
        default_limits: StateLimits = StateLimits(),
        run_id: str = "",
        after_exit: Callable[[State, list[Fact]], Awaitable[None]] | None = None,
        fault: FaultPlan | None = None,
        liveness: Liveness | None = None,
    ) -> None:
        self.handlers = handlers
        self.decide = decide
        self.journal = journal
        self.events = events or EventBus()
        self.limits = dict(limits or {})
        self.default_limits = default_limits
        self.run_id = run_id
        self.after_exit = after_exit
        self.fault = fault
        self.liveness = liveness
        self.state: State | None = None

    def _emit(self, kind: EventKind, state: State, ctx: Ctx, **kw: Any) -> None:
        self.events.publish(LifecycleEvent(kind, state, ctx.counters.step, self.run_id, **kw))

    async def _visit(self, state: State, ctx: Ctx) -> State:
        handler = self.handlers.get(state)
        if handler is None:
            raise FatalError(f"no coroutine registered for lifecycle state {state.name}")
        watch = StallWatch(state, self.limits.get(state, self.default_limits))
        ctx.watch = watch
        try:
            # deadline() is an absolute loop time: timeout_at, not timeout (which takes a delay).
            async with asyncio.timeout_at(watch.deadline()) as cm:
                watch.bind(cm)
                await run_watched(handler(ctx), self.liveness(state) if self.liveness else None)
        except TimeoutError as exc:
            if cm.expired():
                raise watch.stuck_error() from exc
            raise
        finally:
            ctx.watch = None
        return check_transition(state, self.decide(state, ctx))

    async def run(self, ctx: Ctx, start: State) -> State:
        """Drive states from ``start`` until DONE; raise RunFailed (after journaling) on failure."""
        state = start
        loop = asyncio.get_running_loop()
        while state not in TERMINAL:
            self.state = state
            before = ctx.counters
            ctx.facts = []
            await self.journal.append({"event": "enter", "state": state.value, "step": before.step})
            self._emit("enter", state, ctx)
            if self.fault:
                self.fault.check(state, before.step, "enter")
            started = loop.time()
            try:
                nxt = await self._visit(state, ctx)
            except asyncio.CancelledError:
                await self.journal.append({"event": "cancelled", "state": state.value, "step": before.step})
                self._emit("cancelled", state, ctx)
                raise
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                await self.journal.append(
                    {"event": "exit", "state": state.value, "next": State.FAILED.value,
                     "step": before.step, "error": error}
                )  # fmt: skip
                log.error("state_failed", state=state.name, step=before.step, error=error)
                self._emit("failed", state, ctx, next_state=State.FAILED, error=error)
                self.state = State.FAILED
                raise RunFailed(state, before.step, exc) from exc
            if self.fault:
                self.fault.check(state, before.step, "exit")
            seconds = loop.time() - started
            facts = ctx.facts
            await self.journal.append(
                {"event": "exit", "state": state.value, "next": nxt.value, "step": before.step,
                 "seconds": round(seconds, 6), "changes": _changes(before, ctx.counters),
                 "records": [f.to_json() for f in facts]}
            )  # fmt: skip
            if self.after_exit is not None:
                await self.after_exit(state, facts)
            for fact in facts:
                self._emit("record", state, ctx, record=fact)
            self._emit("exit", state, ctx, next_state=nxt, seconds=seconds)
            state = nxt
        self.state = state
        await self.journal.append({"event": "done", "step": ctx.counters.step})
        self._emit("done", state, ctx)
        return state
