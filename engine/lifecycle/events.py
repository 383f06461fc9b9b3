"""Lifecycle events, observable by a program that embeds the engine.

The Runner publishes one ``LifecycleEvent`` per state entry and exit, plus the facts a state
records (a committed step, a saved checkpoint, a sync, an evaluation) and the run's end. In
asynchronous RL the rollout machine publishes ``rollout`` events (its state, the target step, and a
``RolloutProgress`` with the buffer's contents) on the same bus; they are never terminal. A run that
recovers from a lost part publishes a ``recovery`` event (``record``: the policy's decision) and goes
on: the failure of a state it recovers from is not published as terminal. Observers
either register a callback (called synchronously, in order, on the event loop; it must be quick)
or iterate ``EventBus.subscribe()``, an async iterator with its own unbounded queue that ends after
the terminal event. A slow or failing observer never stalls or breaks the run: callback errors
are logged and dropped.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from engine.lifecycle.table import RolloutState, State
from engine.log import get_logger

log = get_logger("engine.lifecycle.events")

EventKind = Literal["enter", "exit", "record", "done", "failed", "cancelled", "rollout", "recovery"]


@dataclass(frozen=True)
class RolloutProgress:
    """What a ``rollout`` event reports: the rollout machine entered or left ``state``."""

    phase: Literal["enter", "exit", "failed"]
    target: int | None  # the step whose batch SAMPLING samples
    trained: int
    synced: int
    buffered: tuple[int, ...]
    in_flight: tuple[int, ...]
    capacity: int


@dataclass(frozen=True)
class LifecycleEvent:
    kind: EventKind
    state: State | RolloutState  # a RolloutState only on ``rollout`` events
    step: int
    run_id: str = ""
    next_state: State | RolloutState | None = None
    seconds: float | None = None  # time spent in the state (exit events)
    record: Any = None  # kind "record": the fact the state recorded (engine.run.records)
    error: str | None = None
    time: float = field(default_factory=time.time)

    @property
    def terminal(self) -> bool:
        return self.kind in ("done", "failed", "cancelled")


Callback = Callable[[LifecycleEvent], None]
_END = object()


class EventBus:
    def __init__(self) -> None:
        self._callbacks: list[Callback] = []
        self._queues: list[asyncio.Queue[object]] = []
        self._closed = False
        self.last: LifecycleEvent | None = None

    def add_callback(self, callback: Callback) -> None:
        self._callbacks.append(callback)

    def publish(self, event: LifecycleEvent) -> None:
        self.last = event
        for callback in self._callbacks:
            try:
                callback(event)
            except Exception:  # an observer's bug must not fail the run
                log.exception("event_callback_failed", kind=event.kind, state=event.state)
        for queue in self._queues:
            queue.put_nowait(event)
        if event.terminal:
            self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for queue in self._queues:
            queue.put_nowait(_END)

    async def subscribe(self) -> AsyncIterator[LifecycleEvent]:
        """Events from now until the run ends (immediately empty if it already has)."""
        queue: asyncio.Queue[object] = asyncio.Queue()
        if self._closed:
            return
        self._queues.append(queue)
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    return
                assert isinstance(item, LifecycleEvent)
                yield item
        finally:
            self._queues.remove(queue)
