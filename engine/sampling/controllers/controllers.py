"""Sampling concurrency controllers: how many attempts may be in flight against a deployment.

Both controllers implement ``ConcurrencyController``: the sampler calls ``await acquire()`` before each
attempt and ``release(metrics)`` exactly once after it (also on error and cancellation), and the training
loop calls ``step_completed()`` between RL steps for a summary. Both are usable from several event loops
and threads at once (see ``gate.py``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from engine.errors import ConfigError
from engine.log import get_logger
from engine.sampling.controllers.aimd import (
    AimdPolicy,
    AimdState,
    Decision,
    Observation,
    complete_step,
    initial_state,
    note_retry_exhausted,
    observe,
)
from engine.sampling.controllers.gate import AdmissionGate
from engine.sampling.metrics import ServerMetrics


def _log() -> Any:
    # Looked up per call: a logger bound at import would miss a later ``engine.log.configure``.
    return get_logger("sampling.concurrency")


@runtime_checkable
class ConcurrencyController(Protocol):
    @property
    def window_size(self) -> int: ...

    @property
    def in_flight(self) -> int: ...

    async def acquire(self) -> None: ...

    def release(self, metrics: ServerMetrics | None = None) -> None: ...

    def step_completed(self) -> dict[str, float]: ...


def observation_from_metrics(metrics: ServerMetrics, in_flight: int | None = None) -> Observation:
    return Observation(
        prefill_queue_s=metrics.prefill_queue_duration,
        status=metrics.http_status_code,
        transport_error=metrics.transport_error,
        retry_attempt=metrics.retry_attempt,
        in_flight=in_flight,
        cached_prompt_tokens=metrics.cached_prompt_tokens,
        prompt_tokens=metrics.prompt_tokens,
    )


class FixedConcurrencyController:
    """At most ``max_concurrency`` attempts in flight, whatever the server reports."""

    def __init__(self, max_concurrency: int) -> None:
        if max_concurrency < 1:
            raise ConfigError(f"max_concurrency must be >= 1, got {max_concurrency}")
        self._gate = AdmissionGate(max_concurrency)
        self._lock = threading.Lock()
        self._requests = 0
        self._max_in_flight = 0

    @property
    def window_size(self) -> int:
        return self._gate.window

    @property
    def in_flight(self) -> int:
        return self._gate.in_flight

    async def acquire(self) -> None:
        await self._gate.acquire()
        self._note_admitted()

    def try_acquire(self) -> bool:
        ok = self._gate.try_acquire()
        if ok:
            self._note_admitted()
        return ok

    def _note_admitted(self) -> None:
        # A statistic only: a lost update under a thread race is harmless, a lock per attempt is not free.
        in_flight = self._gate.in_flight
        if in_flight > self._max_in_flight:
            self._max_in_flight = in_flight

    def release(self, metrics: ServerMetrics | None = None) -> None:
        self._requests += 1  # statistic, see _note_admitted
        self._gate.release()

    def step_completed(self) -> dict[str, float]:
        with self._lock:
            summary = {
                "window": float(self._gate.window),
                "requests": float(self._requests),
                "max_in_flight": float(self._max_in_flight),
            }
            self._requests = 0
            self._max_in_flight = self._gate.in_flight
        return summary


class AdaptiveConcurrencyController:
    """AIMD on the prefill-queue duration with a status-code fallback (rules in ``aimd.py``)."""

    def __init__(
        self,
        initial_window: float = 8,
        min_window: int = 1,
        max_window: int = 256,
        prefill_queue_target: float = 0.5,
        additive_increase: float = 1.0,
        multiplicative_decrease: float = 0.5,
        ema_alpha: float = 0.3,
        adjustment_interval: int = 32,
        shrink_cooldown_s: float = 1.0,
        *,
        policy: AimdPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._policy = policy or AimdPolicy(
            initial_window=float(initial_window),
            min_window=min_window,
            max_window=max_window,
            prefill_queue_target=prefill_queue_target,
            additive_increase=additive_increase,
            multiplicative_decrease=multiplicative_decrease,
            ema_alpha=ema_alpha,
            adjustment_interval=adjustment_interval,
            shrink_cooldown_s=shrink_cooldown_s,
        )
        self._clock = clock
        self._lock = threading.Lock()
        self._state: AimdState = initial_state(self._policy)
        self._gate = AdmissionGate(self._policy.effective(self._state.window))
        self._warned_no_pq = False

    @property
    def policy(self) -> AimdPolicy:
        return self._policy

    @property
    def window_size(self) -> int:
        return self._gate.window

    @property
    def in_flight(self) -> int:
        return self._gate.in_flight

    @property
    def pending_decrease(self) -> int:
        return self._gate.debt

    @property
    def ema_prefill_queue(self) -> float | None:
        return self._state.ema_pq

    async def acquire(self) -> None:
        await self._gate.acquire()

    def try_acquire(self) -> bool:
        """Admit now if a slot is free (for synchronous drivers such as the simulator)."""
        return self._gate.try_acquire()

    def release(self, metrics: ServerMetrics | None = None) -> None:
        """End one attempt. ``None`` frees the slot without an observation (truncation, fatal errors)."""
        in_flight = self._gate.in_flight
        self._gate.release()
        if metrics is None:
            return
        if metrics.prefill_queue_duration is None and not self._warned_no_pq:
            self._warned_no_pq = True
            _log().info(
                "prefill_queue_duration unavailable; using the status-code strategy for such attempts"
            )
        obs = observation_from_metrics(metrics, in_flight=in_flight)
        with self._lock:
            self._state, decision = observe(self._policy, self._state, obs, self._clock())
            self._apply(decision)

    def note_retry_exhausted(self, metrics: ServerMetrics | None = None) -> None:
        with self._lock:
            self._state = note_retry_exhausted(self._state)

    def step_completed(self) -> dict[str, float]:
        with self._lock:
            self._state, decision, summary = complete_step(
                self._policy, self._state, pending_decrease=self._gate.debt
            )
            self._apply(decision)
        _log().info("adaptive concurrency step", **{k: round(v, 4) for k, v in summary.items()})
        return summary

    def _apply(self, decision: Decision) -> None:
        # Called under self._lock so resizes land in decision order.
        new = self._policy.effective(decision.window_after)
        if new != self._gate.window:
            old = self._gate.window
            self._gate.resize(new)
            _log().debug(
                "concurrency window",
                old=old,
                new=new,
                reason=decision.reason,
                ema_pq=decision.ema_pq,
                in_flight=self._gate.in_flight,
                debt=self._gate.debt,
            )
