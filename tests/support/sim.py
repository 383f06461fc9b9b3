"""A simulated deployment with known capacity, and a closed-loop driver for concurrency controllers.

The queueing model: ``slots`` requests are served in parallel, each for a service time drawn from
U[(1 - jitter) S, (1 + jitter) S]; requests beyond the free slots wait in a FIFO prefill queue, and the
time a request waited there is its ``prefill-queue-duration``. Capacity is therefore ``slots / S``
completions per second, and any window above ``slots`` only adds queueing. ``max_waiting`` optionally
rejects arrivals with 429 when the queue is that long (the embedded deployment's ``--max-waiting``).

Everything runs on a virtual clock, so a run of thousands of seconds takes well under a second and is
deterministic for a seed. ``run_closed_loop`` keeps the controller's window full (a client with an
unbounded backlog, as in RL rollouts) and records per-interval throughput, queue time and window. The
load tester and the controller benchmark both use it.
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from engine.sampling.metrics import ServerMetrics


class ManualClock:
    """A settable clock for controllers driven by the simulator."""

    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@dataclass(frozen=True, slots=True)
class SimCompletion:
    arrival: float
    start: float
    finish: float

    @property
    def prefill_queue_s(self) -> float:
        return self.start - self.arrival


@dataclass
class SimulatedDeployment:
    slots: int
    service_time_s: float = 1.0
    jitter: float = 0.5
    max_waiting: int | None = None
    seed: int = 0
    _rng: random.Random = field(init=False, repr=False)
    _queue: deque[float] = field(init=False, default_factory=deque, repr=False)
    _running: list[tuple[float, int, float, float]] = field(init=False, default_factory=list, repr=False)
    _seq: int = field(init=False, default=0, repr=False)

    def __post_init__(self) -> None:
        if self.slots < 1 or self.service_time_s <= 0 or not 0 <= self.jitter < 1:
            raise ValueError("slots must be >= 1, service_time_s > 0 and jitter in [0, 1)")
        self._rng = random.Random(self.seed)

    @property
    def capacity_per_s(self) -> float:
        return self.slots / self.service_time_s

    @property
    def in_system(self) -> int:
        return len(self._queue) + len(self._running)

    def set_slots(self, slots: int, now: float) -> None:
        """Change capacity; requests already in service finish, new starts follow the new limit."""
        self.slots = slots
        self._start_waiting(now)

    def submit(self, now: float) -> bool:
        """A request arrives; False if rejected (429) because the queue is full."""
        if self.max_waiting is not None and len(self._queue) >= self.max_waiting:
            return False
        self._queue.append(now)
        self._start_waiting(now)
        return True

    def next_finish(self) -> float | None:
        return self._running[0][0] if self._running else None

    def pop_finished(self, now: float) -> list[SimCompletion]:
        done: list[SimCompletion] = []
        while self._running and self._running[0][0] <= now:
            finish, _, arrival, start = heapq.heappop(self._running)
            done.append(SimCompletion(arrival, start, finish))
        self._start_waiting(now)
        return done

    def _start_waiting(self, now: float) -> None:
        while self._queue and len(self._running) < self.slots:
            arrival = self._queue.popleft()
            span = self.service_time_s * self._rng.uniform(1 - self.jitter, 1 + self.jitter)
            self._seq += 1
            heapq.heappush(self._running, (now + span, self._seq, arrival, now))


class SyncController(Protocol):
    """What the driver needs: a non-blocking admission and the usual release."""

    @property
    def window_size(self) -> int: ...

    def try_acquire(self) -> bool: ...

    def release(self, metrics: ServerMetrics | None = None) -> None: ...


@dataclass(frozen=True, slots=True)
class IntervalStats:
    start_s: float
    end_s: float
    throughput: float
    mean_pq_s: float
    window: int
    capacity_per_s: float


@dataclass(frozen=True, slots=True)
class SimResult:
    completed: int
    measured_s: float
    throughput: float
    """Completions per virtual second after the warmup."""
    mean_pq_s: float
    rejected: int
    intervals: list[IntervalStats]


def run_closed_loop(
    controller: SyncController,
    deployment: SimulatedDeployment,
    clock: ManualClock,
    *,
    duration_s: float,
    warmup_s: float = 0.0,
    interval: int = 32,
    capacity_changes: Sequence[tuple[float, int]] = (),
    retry_backoff_s: float = 0.05,
) -> SimResult:
    """Keep the window full for ``duration_s`` virtual seconds; one stats row per ``interval`` completions."""
    changes = sorted(capacity_changes)
    clock.t = now = 0.0
    wake_at = 0.0  # after a 429 the client backs off before sending again
    completed = rejected = 0
    pq_sum = 0.0
    rows: list[IntervalStats] = []
    bucket_n, bucket_pq, bucket_start = 0, 0.0, 0.0

    def fill() -> None:
        nonlocal wake_at, rejected
        while now >= wake_at and controller.try_acquire():
            if not deployment.submit(now):
                rejected += 1
                controller.release(ServerMetrics(http_status_code=429))
                wake_at = now + retry_backoff_s

    fill()
    while now < duration_s:
        candidates = [
            t for t in (deployment.next_finish(), wake_at if wake_at > now else None) if t is not None
        ]
        if changes:
            candidates.append(changes[0][0])
        if not candidates:
            break
        now = clock.t = min(min(candidates), duration_s)
        while changes and changes[0][0] <= now:
            deployment.set_slots(changes.pop(0)[1], now)
        for done in deployment.pop_finished(now):
            pq = done.prefill_queue_s
            controller.release(ServerMetrics(prefill_queue_duration=pq, http_status_code=200))
            if now >= warmup_s:
                completed += 1
                pq_sum += pq
            bucket_n += 1
            bucket_pq += pq
            if bucket_n == interval:
                span = max(now - bucket_start, 1e-9)
                window, capacity = controller.window_size, deployment.capacity_per_s
                rows.append(
                    IntervalStats(bucket_start, now, bucket_n / span, bucket_pq / bucket_n, window, capacity)
                )
                bucket_n, bucket_pq, bucket_start = 0, 0.0, now
        fill()
    measured = max(duration_s - warmup_s, 1e-9)
    return SimResult(completed, measured, completed / measured, pq_sum / max(completed, 1), rejected, rows)


def intervals_until_steady(
    rows: Sequence[IntervalStats],
    *,
    start_s: float,
    pq_limit_s: float,
    min_utilization: float = 0.95,
    hold: int = 5,
) -> int | None:
    """Intervals after ``start_s`` until ``hold`` consecutive ones run at ``min_utilization`` of capacity
    with mean queue time at most ``pq_limit_s``; None if that never happens."""
    after = [r for r in rows if r.end_s > start_s]
    for i in range(len(after) - hold + 1):
        group = after[i : i + hold]
        # Pool the group: one interval of 32 completions is too noisy to judge on its own.
        span = group[-1].end_s - group[0].start_s
        rate = sum(r.throughput * (r.end_s - r.start_s) for r in group) / span if span > 0 else 0.0
        cap = min(r.capacity_per_s for r in group)
        if rate >= min_utilization * cap and all(r.mean_pq_s <= pq_limit_s for r in group):
            return i + 1
    return None
