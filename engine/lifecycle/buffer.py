"""``RolloutBuffer``: the bounded hand-over between the rollout machine and the learner (async RL).

It holds every step the two machines share: the steps being sampled (``begin``), the batches
sampled and waiting (``put``, admitted only if the rollout Schedule's ``admits`` says so), and the
step the learner took to train (``take``, held until it is trained, or given back with
``discard`` when the staleness filter emptied it, so it is sampled again). Its ``view`` is what the
rollout Schedule decides on.

Waiting is by notification, never by polling: every change (and every progress note of the
rollout machine) wakes the waiters. ``take`` waits for one step's batch and calls ``beat`` on each
wake, so the learner's stall bound measures the rollout machine's progress; a failure of the
rollout machine (``fail``) is raised in the learner's ``take``. Nothing here has a clock or does
I/O: the waits are bounded by the caller's state bound. One event loop; not thread-safe.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

from engine.errors import FatalError
from engine.lifecycle.rollout import RolloutSchedule, RolloutView

T = TypeVar("T")


class RolloutBuffer(Generic[T]):
    def __init__(self, schedule: RolloutSchedule, learner: Callable[[], tuple[int, int]]) -> None:
        """``learner()`` returns (steps trained, step the deployment verifiably serves; -1 unknown)."""
        self.schedule = schedule
        self._learner = learner
        self._items: dict[int, T] = {}
        self._in_flight: set[int] = set()
        self._claimed: int | None = None
        self._failed: BaseException | None = None
        self._changed = asyncio.Event()
        self.last_note = ""

    @property
    def capacity(self) -> int:
        return self.schedule.capacity

    @property
    def depth(self) -> int:
        """Batches sampled and waiting for the learner."""
        return len(self._items)

    @property
    def failed(self) -> BaseException | None:
        return self._failed

    def view(self) -> RolloutView:
        trained, synced = self._learner()
        return RolloutView(
            trained=trained,
            synced=synced,
            buffered=frozenset(self._items),
            in_flight=frozenset(self._in_flight),
            claimed=self._claimed,
        )

    # ---- notification --------------------------------------------------------------------------

    def wake(self) -> None:
        """Something the rollout Schedule reads changed (the learner moved, the buffer changed)."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def changed(self) -> None:
        """Until the next ``wake`` (unbounded here: the caller's state bound limits it)."""
        await self._changed.wait()

    def note(self, where: str) -> None:
        """The rollout machine made progress (wakes the learner's ``take`` so it can beat)."""
        self.last_note = where
        self.wake()

    # ---- the rollout machine's side ---------------------------------------------------------------

    def begin(self, step: int) -> None:
        if step in self._in_flight:
            raise FatalError(f"rollout batch for step {step} is already being sampled")
        self._in_flight.add(step)
        self.wake()

    def put(self, step: int, item: T) -> None:
        """A sampled batch for ``step``; refused (a bug in the Schedule) unless ``admits`` it."""
        view = self.view()
        if step not in self._in_flight or not self.schedule.admits(view, step):
            raise FatalError(
                f"rollout buffer refuses the batch for step {step}: trained {view.trained}, "
                f"buffered {sorted(view.buffered)}, in flight {sorted(view.in_flight)}, "
                f"claimed {view.claimed}, capacity {self.capacity}"
            )
        self._in_flight.discard(step)
        self._items[step] = item
        self.wake()

    def abandon(self, step: int) -> None:
        """Sampling ``step`` failed or was cancelled."""
        self._in_flight.discard(step)
        self.wake()

    def fail(self, error: BaseException) -> None:
        """The rollout machine failed: every ``take`` from now on raises ``error``."""
        self._failed = error
        self.wake()

    # ---- the learner's side ---------------------------------------------------------------------

    async def take(self, step: int, beat: Callable[[str], None]) -> T:
        """The batch for ``step`` (waiting for it); the step stays held until it is trained."""
        while True:
            if self._failed is not None:
                raise self._failed
            if step in self._items:
                self._claimed = step
                item = self._items.pop(step)
                self.wake()
                return item
            await self.changed()
            beat(f"waiting for the rollouts of step {step} ({self.last_note or 'rollout machine started'})")

    def discard(self, step: int) -> None:
        """The learner gives back ``step`` untrained (the staleness filter emptied it): sample it again."""
        if self._claimed == step:
            self._claimed = None
        self.wake()
