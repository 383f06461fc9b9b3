"""AIMD on the server's prefill-queue duration: the adaptive controller's pure decision core.

Everything here is a function of (policy, state, observation, now) and returns a new state plus a
decision; nothing sleeps, locks or logs. The I/O shell (``AdaptiveConcurrencyController``) feeds it
one observation per released sampling attempt and applies the resulting window to its admission gate.

The rule is Fireworks' ``AdaptiveConcurrencyController`` (fireworks-ai 1.2.10 … 1.2.30):

* Every ``adjustment_interval`` observed attempts (and once more at ``complete_step``) the interval's
  mean prefill-queue duration updates an EMA. EMA above the target => multiplicative decrease; else a
  proportional additive increase ``additive_increase * min(target / max(ema, floor), max_increase)``.
* Attempts that carry no queue time (serverless, error responses) go to a status-code strategy: 429,
  503 and transport errors shrink the window at once, at most once per ``shrink_cooldown_s`` (a
  burst of victims of one overload shrinks once); a deep retry (attempt >= 3) shrinks twice as hard.
  An interval with 2xx and no congestion grows the window by ``additive_increase``.

Three documented changes; ``AimdPolicy.fireworks()`` turns all off and restores Fireworks' exact rule:

* ``proportional_decrease``: the decrease factor scales with how far the EMA is above the target,
  reaching ``multiplicative_decrease`` at twice the target. Halving when the queue is barely over the
  target drops the window far below the server's capacity and costs throughput for several intervals
  (Fireworks' own benchmark: 0.75 of the best fixed window); a proportional step holds the queue at the
  target instead. Big overshoots (capacity loss) still halve at once.
* ``app_limited_fraction``: the window grows only if the interval's peak in-flight count reached this
  fraction of the window (Netflix concurrency-limits' "app-limited" guard), so a caller that never fills
  the window does not drift it to ``max_window`` and later hit the server with that burst.
* ``decrease_hold``: after a queue-driven decrease, the queue times of attempts admitted under the old
  window are dropped and the EMA restarts at the target, so one overload is answered once instead of
  by a cascade of halvings driven by a stale EMA.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from engine.errors import ConfigError

CONGESTION_STATUSES: frozenset[int] = frozenset({429, 503})
"""HTTP statuses the status-code strategy treats as overload (plus transport errors)."""

Reason = Literal[
    "none", "pq_increase", "pq_decrease", "pq_hold", "congestion_shrink", "status_increase", "status_hold"
]


@dataclass(frozen=True, slots=True)
class AimdPolicy:
    """The controller's constants. Defaults are Fireworks 1.2.30's unless noted."""

    initial_window: float = 8.0
    """Window before the first adjustment (Fireworks 1.2.0 used 16)."""
    min_window: int = 1
    """Lowest admitted concurrency; the window never shrinks below it."""
    max_window: int = 256
    """Highest admitted concurrency."""
    prefill_queue_target: float = 0.5
    """Seconds of server prefill queue the controller aims at: EMA above it shrinks, below grows."""
    additive_increase: float = 1.0
    """Window units added per interval with the EMA exactly at the target (scaled by target / EMA)."""
    multiplicative_decrease: float = 0.5
    """Strongest shrink factor: on congestion statuses, and on a queue EMA at or above twice the target."""
    ema_alpha: float = 0.3
    """Weight of the newest interval mean in the prefill-queue EMA."""
    adjustment_interval: int = 32
    """Observed attempts between adjustments; 0 adjusts only at ``complete_step`` (Fireworks 1.2.0)."""
    shrink_cooldown_s: float = 1.0
    """Minimum seconds between two congestion shrinks, so one overload event shrinks once."""
    max_increase_factor: float = 4.0
    """Cap on target / EMA in the additive increase (+4 windows at most per interval by default)."""
    min_pq_floor_s: float = 0.001
    """Floor on the EMA in target / EMA, so an empty queue does not divide by zero."""
    deep_retry_attempt: int = 3
    """Attempt number from which a congestion shrink uses multiplicative_decrease squared."""
    proportional_decrease: bool = True
    """hotloop: scale the decrease by the EMA's excess over the target (False = Fireworks' fixed halving)."""
    app_limited_fraction: float = 0.5
    """hotloop: grow only if the interval's peak in-flight reached this fraction of the window (0 = off)."""
    decrease_hold: bool = True
    """hotloop: after a queue-driven decrease, drop the queue times of the attempts that were already in
    flight (they measure the old window) and restart the EMA at the target (TCP's "one decrease per
    round trip"). Without it the stale EMA keeps shrinking for several intervals after the queue is gone
    and the window collapses far below capacity (simulated: 0.45-0.85 of capacity instead of ~1.0)."""

    @classmethod
    def fireworks(cls, **overrides: float | int | bool) -> AimdPolicy:
        """Fireworks 1.2.30's rule exactly (fixed halving, no app-limited guard, no decrease hold)."""
        base: dict[str, float | int | bool] = {
            "proportional_decrease": False,
            "app_limited_fraction": 0.0,
            "decrease_hold": False,
        }
        return cls(**{**base, **overrides})  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        if self.min_window < 1:
            raise ConfigError(f"min_window must be >= 1, got {self.min_window}")
        if self.max_window < self.min_window:
            raise ConfigError(f"max_window ({self.max_window}) must be >= min_window ({self.min_window})")
        if not self.min_window <= self.initial_window <= self.max_window:
            raise ConfigError(
                f"initial_window ({self.initial_window}) must lie in [min_window, max_window]"
                f" = [{self.min_window}, {self.max_window}]"
            )
        if self.prefill_queue_target <= 0:
            raise ConfigError(f"prefill_queue_target must be > 0 seconds, got {self.prefill_queue_target}")
        if self.additive_increase < 0:
            raise ConfigError(f"additive_increase must be >= 0, got {self.additive_increase}")
        if not 0 < self.multiplicative_decrease < 1:
            raise ConfigError(
                f"multiplicative_decrease must be in (0, 1), got {self.multiplicative_decrease}"
            )
        if not 0 < self.ema_alpha <= 1:
            raise ConfigError(f"ema_alpha must be in (0, 1], got {self.ema_alpha}")
        if self.adjustment_interval < 0:
            raise ConfigError(f"adjustment_interval must be >= 0, got {self.adjustment_interval}")
        if self.shrink_cooldown_s < 0:
            raise ConfigError(f"shrink_cooldown_s must be >= 0, got {self.shrink_cooldown_s}")
        if self.max_increase_factor <= 0 or self.min_pq_floor_s <= 0:
            raise ConfigError("max_increase_factor and min_pq_floor_s must be > 0")
        if not 0 <= self.app_limited_fraction <= 1:
            raise ConfigError(f"app_limited_fraction must be in [0, 1], got {self.app_limited_fraction}")

    def clamp(self, window: float) -> float:
        return min(float(self.max_window), max(float(self.min_window), window))

    def effective(self, window: float) -> int:
        """The integer concurrency a float window admits."""
        return min(self.max_window, max(self.min_window, int(window)))


@dataclass(frozen=True, slots=True)
class Observation:
    """What one released attempt tells the controller (built from its ServerMetrics)."""

    prefill_queue_s: float | None = None
    status: int | None = None
    transport_error: bool = False
    retry_attempt: int = 1
    in_flight: int | None = None
    """Attempts in flight when this one finished (itself included); feeds the app-limited guard."""
    cached_prompt_tokens: int | None = None
    prompt_tokens: int | None = None

    @property
    def congestion(self) -> bool:
        return self.transport_error or self.status in CONGESTION_STATUSES


@dataclass(frozen=True, slots=True)
class StepStats:
    """Per-step accumulators for the ``complete_step`` summary."""

    requests: int = 0
    pq_sum: float = 0.0
    pq_count: int = 0
    status_responses: int = 0
    congestion_responses: int = 0
    congestion_events: int = 0
    retry_exhaustions: int = 0
    window_sum: float = 0.0
    max_in_flight: int = 0
    cached_tokens: int = 0
    prompt_tokens: int = 0


@dataclass(frozen=True, slots=True)
class AimdState:
    window: float
    ema_pq: float | None = None
    since_adjust: int = 0
    pq_sum: float = 0.0
    pq_count: int = 0
    ok_count: int = 0
    congestion_count: int = 0
    peak_in_flight: int | None = None
    stale_left: int = 0
    """Queue samples still to drop after a decrease (attempts admitted under the old window)."""
    last_shrink_at: float | None = None
    step: StepStats = field(default_factory=StepStats)


@dataclass(frozen=True, slots=True)
class Decision:
    window_before: float
    window_after: float
    reason: Reason
    ema_pq: float | None

    def changed(self, policy: AimdPolicy) -> bool:
        """True when the admitted integer window moved."""
        return policy.effective(self.window_before) != policy.effective(self.window_after)


def initial_state(policy: AimdPolicy) -> AimdState:
    return AimdState(window=float(policy.initial_window))


def pq_next_window(policy: AimdPolicy, window: float, ema: float) -> tuple[float, Reason]:
    """The prefill-queue rule, given the updated EMA (growth gating is the caller's)."""
    target = policy.prefill_queue_target
    if ema > target:
        factor = policy.multiplicative_decrease
        if policy.proportional_decrease:
            excess = min(1.0, (ema - target) / target)
            factor = 1.0 - (1.0 - policy.multiplicative_decrease) * excess
        return policy.clamp(window * factor), "pq_decrease"
    step = policy.additive_increase * min(
        target / max(ema, policy.min_pq_floor_s), policy.max_increase_factor
    )
    return policy.clamp(window + step), "pq_increase"


def _may_grow(policy: AimdPolicy, state: AimdState) -> bool:
    if policy.app_limited_fraction <= 0 or state.peak_in_flight is None:
        return True
    return state.peak_in_flight >= policy.app_limited_fraction * policy.effective(state.window)


def adjust(policy: AimdPolicy, state: AimdState) -> tuple[AimdState, Decision]:
    """Apply one interval adjustment from the interval's observations, then reset the interval."""
    before = state.window
    window, ema = before, state.ema_pq
    reason: Reason = "none"
    stale_left = state.stale_left
    if state.pq_count > 0:
        mean = state.pq_sum / state.pq_count
        ema = mean if ema is None else policy.ema_alpha * mean + (1.0 - policy.ema_alpha) * ema
        window, reason = pq_next_window(policy, before, ema)
        if reason == "pq_increase" and not _may_grow(policy, state):
            window, reason = before, "pq_hold"
        elif reason == "pq_decrease" and policy.decrease_hold:
            # The attempts in flight now were admitted under the old window; skip their samples.
            stale_left = max(policy.effective(before), state.peak_in_flight or 0)
            ema = policy.prefill_queue_target  # the decrease answered the excess; fresh samples move it
    elif state.ok_count + state.congestion_count > 0:
        # Congestion was already answered by the immediate shrink; only a clean interval grows.
        if state.congestion_count == 0 and _may_grow(policy, state):
            window, reason = policy.clamp(before + policy.additive_increase), "status_increase"
        else:
            reason = "status_hold"
    new = replace(
        state,
        window=window,
        ema_pq=ema,
        since_adjust=0,
        pq_sum=0.0,
        pq_count=0,
        ok_count=0,
        congestion_count=0,
        peak_in_flight=None,
        stale_left=stale_left,
    )
    return new, Decision(before, window, reason, ema)


def observe(policy: AimdPolicy, state: AimdState, obs: Observation, now: float) -> tuple[AimdState, Decision]:
    """Record one released attempt; shrink at once on congestion; adjust when the interval is full."""
    before = state.window
    step = state.step
    peak = state.peak_in_flight
    if obs.in_flight is not None:
        peak = obs.in_flight if peak is None else max(peak, obs.in_flight)
    step = replace(
        step,
        requests=step.requests + 1,
        window_sum=step.window_sum + policy.effective(before),
        max_in_flight=max(step.max_in_flight, obs.in_flight or 0),
        cached_tokens=step.cached_tokens + (obs.cached_prompt_tokens or 0),
        prompt_tokens=step.prompt_tokens + (obs.prompt_tokens or 0),
    )
    window = before
    reason: Reason = "none"
    changes: dict[str, object] = {"since_adjust": state.since_adjust + 1, "peak_in_flight": peak}
    if obs.prefill_queue_s is not None:
        pq = max(0.0, obs.prefill_queue_s)
        step = replace(step, pq_sum=step.pq_sum + pq, pq_count=step.pq_count + 1)
        if state.stale_left > 0:
            changes["stale_left"] = state.stale_left - 1
        else:
            changes.update(pq_sum=state.pq_sum + pq, pq_count=state.pq_count + 1)
    elif obs.congestion:
        changes["congestion_count"] = state.congestion_count + 1
        step = replace(
            step,
            status_responses=step.status_responses + 1,
            congestion_responses=step.congestion_responses + 1,
        )
        cooling = state.last_shrink_at is not None and now - state.last_shrink_at < policy.shrink_cooldown_s
        if not cooling:
            factor = policy.multiplicative_decrease
            if obs.retry_attempt >= policy.deep_retry_attempt:
                factor *= policy.multiplicative_decrease
            window, reason = policy.clamp(before * factor), "congestion_shrink"
            changes.update(window=window, last_shrink_at=now)
            step = replace(step, congestion_events=step.congestion_events + 1)
    elif obs.status is not None and 200 <= obs.status < 300:
        changes["ok_count"] = state.ok_count + 1
        step = replace(step, status_responses=step.status_responses + 1)
    changes["step"] = step
    state = replace(state, **changes)  # type: ignore[arg-type]
    if policy.adjustment_interval > 0 and state.since_adjust >= policy.adjustment_interval:
        state, adjusted = adjust(policy, state)
        if adjusted.reason != "none":
            return state, Decision(before, adjusted.window_after, adjusted.reason, adjusted.ema_pq)
    return state, Decision(before, window, reason, state.ema_pq)


def note_retry_exhausted(state: AimdState) -> AimdState:
    return replace(state, step=replace(state.step, retry_exhaustions=state.step.retry_exhaustions + 1))


def complete_step(
    policy: AimdPolicy, state: AimdState, *, pending_decrease: int = 0
) -> tuple[AimdState, Decision, dict[str, float]]:
    """Summarize the step, apply a final adjustment for leftover observations, reset step counters."""
    st = state.step
    summary: dict[str, float] = {
        "window": float(policy.effective(state.window)),
        "requests": float(st.requests),
        "pending_decrease": float(pending_decrease),
        "max_in_flight": float(st.max_in_flight),
    }
    if st.requests:
        summary["avg_window"] = st.window_sum / st.requests
    if st.pq_count:
        summary["avg_pq"] = st.pq_sum / st.pq_count
    if st.status_responses or st.retry_exhaustions:
        summary["status_responses"] = float(st.status_responses)
        summary["congestion_responses"] = float(st.congestion_responses)
        summary["congestion_rate"] = st.congestion_responses / max(1, st.status_responses)
        summary["congestion_events"] = float(st.congestion_events)
        summary["retry_exhaustions"] = float(st.retry_exhaustions)
    if st.prompt_tokens:
        summary["cache_hit_rate"] = st.cached_tokens / st.prompt_tokens
    decision = Decision(state.window, state.window, "none", state.ema_pq)
    if state.since_adjust > 0:
        state, decision = adjust(policy, state)
        if decision.reason != "none":
            summary["window_after"] = float(policy.effective(state.window))
    if state.ema_pq is not None:
        summary["ema_pq"] = state.ema_pq
    return replace(state, step=StepStats()), decision, summary
