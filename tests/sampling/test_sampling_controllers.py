"""The AIMD decision core (fake clock, property tests), the admission gate and both controllers."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from engine.errors import ConfigError
from engine.sampling import AdaptiveConcurrencyController, FixedConcurrencyController, ServerMetrics
from engine.sampling.controllers import (
    AdmissionGate,
    AimdPolicy,
    Observation,
    complete_step,
    initial_state,
    observe,
)
from engine.sampling.controllers.aimd import AimdState


def feed(policy: AimdPolicy, state: AimdState, obs: Observation, n: int, now: float = 0.0) -> AimdState:
    for _ in range(n):
        state, _ = observe(policy, state, obs, now)
    return state


def busy(pq: float, window: int = 8) -> Observation:
    return Observation(prefill_queue_s=pq, in_flight=window)


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


# --------------------------------------------------------------------------- pure rule


def test_prefill_queue_rule() -> None:
    p = AimdPolicy(decrease_hold=False)  # target 0.5, interval 32, window 8
    s = initial_state(p)
    s = feed(p, s, busy(0.0), 31)
    assert s.window == 8.0  # no adjustment before the interval is full
    s = feed(p, s, busy(0.0), 1)
    assert s.window == 12.0 and s.ema_pq == 0.0  # +4 (increase capped at 4x)
    s = feed(p, s, busy(0.5 / 0.3, 12), 32)  # EMA = 0.3 * 1.667 = 0.5 == target: +1
    assert s.ema_pq == pytest.approx(0.5) and s.window == pytest.approx(13.0)
    s = feed(p, s, busy(1.5, 13), 32)  # EMA 0.8: proportional decrease 1 - 0.5 * 0.6 = 0.7
    assert s.ema_pq == pytest.approx(0.8) and s.window == pytest.approx(13 * 0.7)
    s = feed(p, s, busy(5.0, 9), 32)  # EMA >= 2 x target: full halving
    assert s.window == pytest.approx(13 * 0.7 * 0.5)


def test_fireworks_exact_halves_just_above_target() -> None:
    p = AimdPolicy.fireworks()
    s = feed(p, initial_state(p), busy(0.51), 32)
    assert s.window == 4.0
    s = feed(p, s, busy(0.51, 4), 32)  # the EMA still says "queue": Fireworks halves again
    assert s.window == 2.0


def test_decrease_hold_drops_stale_samples_and_restarts_the_ema() -> None:
    p = AimdPolicy()
    s = feed(p, initial_state(p), busy(3.0), 32)
    assert s.window == 4.0 and s.ema_pq == 0.5 and s.stale_left == 8  # EMA restarts at the target
    s = feed(p, s, busy(3.0, 8), 8)  # admitted under the old window: ignored
    s = feed(p, s, busy(0.0, 4), 24)
    assert s.ema_pq == pytest.approx(0.35)  # judged on fresh samples only
    assert s.window == pytest.approx(4.0 + 0.5 / 0.35)


def test_app_limited_guard_blocks_growth_only() -> None:
    p = AimdPolicy()
    s = feed(p, initial_state(p), Observation(prefill_queue_s=0.0, in_flight=2), 32)
    assert s.window == 8.0  # peak in flight 2 < 0.5 x 8: the caller, not the server, limits
    s = feed(p, s, Observation(prefill_queue_s=3.0, in_flight=2), 32)
    assert s.window < 8.0  # shrinking is never gated
    off = replace(p, app_limited_fraction=0.0)
    assert feed(off, initial_state(off), Observation(prefill_queue_s=0.0, in_flight=1), 32).window == 12.0


def test_status_code_fallback_with_cooldown_and_deep_retry() -> None:
    p = AimdPolicy(initial_window=64)
    s = initial_state(p)
    s, d = observe(p, s, Observation(status=429), now=10.0)
    assert (d.reason, s.window) == ("congestion_shrink", 32.0)
    s, d = observe(p, s, Observation(transport_error=True), now=10.5)  # same burst: cooldown
    assert s.window == 32.0 and d.reason == "none"
    s, d = observe(p, s, Observation(status=503, retry_attempt=3), now=11.2)  # deep retry: x0.25
    assert s.window == 8.0
    s, _ = observe(p, s, Observation(status=425), now=20.0)  # not congestion
    assert s.window == 8.0
    # A clean interval (2xx only) grows by additive_increase; one with congestion does not.
    p2 = AimdPolicy(adjustment_interval=4, initial_window=8)
    s2 = feed(p2, initial_state(p2), Observation(status=200, in_flight=8), 4)
    assert s2.window == 9.0
    s2 = feed(p2, s2, Observation(status=200, in_flight=8), 3, now=50.0)
    s2, _ = observe(p2, s2, Observation(status=429, in_flight=8), now=50.0)
    assert s2.window == 4.5


def test_complete_step_summary_and_interval_zero() -> None:
    p = AimdPolicy(adjustment_interval=0)
    s = feed(
        p,
        initial_state(p),
        Observation(prefill_queue_s=0.1, in_flight=8, prompt_tokens=10, cached_prompt_tokens=5),
        100,
    )
    assert s.window == 8.0  # interval 0: only the step boundary adjusts
    s, d, summary = complete_step(p, s)
    assert d.reason == "pq_increase" and s.window == 12.0
    assert summary["window"] == 8.0 and summary["window_after"] == 12.0
    assert summary["requests"] == 100 and summary["avg_pq"] == pytest.approx(0.1)
    assert summary["cache_hit_rate"] == 0.5 and summary["ema_pq"] == pytest.approx(0.1)
    assert s.step.requests == 0


def test_policy_validation_names_the_field() -> None:
    with pytest.raises(ConfigError, match="max_window"):
        AimdPolicy(min_window=4, max_window=2)
    with pytest.raises(ConfigError, match="multiplicative_decrease"):
        AimdPolicy(multiplicative_decrease=1.0)
    with pytest.raises(ConfigError, match="initial_window"):
        AimdPolicy(initial_window=1000)


# --------------------------------------------------------------------------- properties

policies = st.builds(
    AimdPolicy,
    initial_window=st.just(4.0),
    min_window=st.integers(1, 4),
    max_window=st.integers(4, 300),
    prefill_queue_target=st.floats(0.01, 5.0),
    additive_increase=st.floats(0.05, 8.0),
    multiplicative_decrease=st.floats(0.05, 0.95),
    ema_alpha=st.floats(0.01, 1.0),
    adjustment_interval=st.integers(0, 40),
    shrink_cooldown_s=st.floats(0.0, 5.0),
    proportional_decrease=st.booleans(),
    decrease_hold=st.booleans(),
)
observations = st.builds(
    Observation,
    prefill_queue_s=st.none() | st.floats(0.0, 100.0),
    status=st.none() | st.sampled_from([200, 404, 425, 429, 500, 503]),
    transport_error=st.booleans(),
    retry_attempt=st.integers(1, 7),
    in_flight=st.none() | st.integers(0, 300),
)


@settings(max_examples=150, deadline=None)
@given(policies, st.lists(st.tuples(observations, st.floats(0.0, 1.0)), max_size=200))
def test_window_always_within_bounds(policy: AimdPolicy, steps: list[tuple[Observation, float]]) -> None:
    state, now = initial_state(policy), 0.0
    for i, (obs, dt) in enumerate(steps):
        now += dt
        state, decision = observe(policy, state, obs, now)
        assert policy.min_window <= decision.window_after <= policy.max_window
        if i % 37 == 0:
            state, _, _ = complete_step(policy, state)
        assert policy.min_window <= state.window <= policy.max_window
        assert policy.min_window <= policy.effective(state.window) <= policy.max_window


@settings(max_examples=150, deadline=None)
@given(policies, st.floats(1.0, 300.0), st.floats(0.0, 0.99), st.integers(1, 40))
def test_grows_under_low_queue(policy: AimdPolicy, window: float, frac: float, n: int) -> None:
    window = policy.clamp(window)
    state = AimdState(window=window)
    obs = Observation(prefill_queue_s=frac * policy.prefill_queue_target, in_flight=policy.effective(window))
    state = feed(policy, state, obs, n)
    state, _, _ = complete_step(policy, state)
    if window < policy.max_window and policy.additive_increase > 0:
        assert state.window > window
    else:
        assert state.window == window


@settings(max_examples=150, deadline=None)
@given(policies, st.floats(1.0, 300.0), st.floats(1.01, 50.0), st.integers(1, 40))
def test_shrinks_under_high_queue(policy: AimdPolicy, window: float, factor: float, n: int) -> None:
    window = policy.clamp(window)
    state = AimdState(window=window)
    obs = Observation(
        prefill_queue_s=factor * policy.prefill_queue_target, in_flight=policy.effective(window)
    )
    state = feed(policy, state, obs, n)
    state, _, _ = complete_step(policy, state)
    assert state.window < window or window == policy.min_window


class GateMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.gate = AdmissionGate(4)
        self.peak_after_paid = 0

    @rule()
    def acquire(self) -> None:
        before = self.gate.in_flight
        admitted = self.gate.try_acquire()
        assert admitted == (before < self.gate.window and self.gate.debt == 0 and self.gate.available >= 0)

    @precondition(lambda self: self.gate.in_flight > 0)
    @rule()
    def release(self) -> None:
        self.gate.release()

    @rule(window=st.integers(1, 12))
    def resize(self, window: int) -> None:
        self.gate.resize(window)

    @invariant()
    def counters_balance(self) -> None:
        g = self.gate
        assert g.in_flight >= 0 and g.available >= 0 and g.debt >= 0
        assert g.in_flight + g.available - g.debt == g.window
        if g.debt == 0:
            assert g.in_flight <= g.window  # never over the window once the debt is paid
        if g.available > 0:
            assert g.debt == 0


GateMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)
TestGateMachine = GateMachine.TestCase


# --------------------------------------------------------------------------- controllers


async def test_shrink_debt_takes_effect_while_every_slot_is_busy() -> None:
    clock = FakeClock()
    ctl = AdaptiveConcurrencyController(initial_window=8, clock=clock)
    for _ in range(8):
        await ctl.acquire()
    ctl.release(ServerMetrics(http_status_code=429))  # one victim: shrink 8 -> 4 at once
    assert ctl.window_size == 4 and ctl.in_flight == 7 and ctl.pending_decrease == 3
    waiter = asyncio.create_task(ctl.acquire())
    for expected_debt in (2, 1, 0):
        await asyncio.sleep(0)
        assert not waiter.done()
        ctl.release(ServerMetrics(prefill_queue_duration=0.0))  # pays debt instead of freeing a slot
        assert ctl.pending_decrease == expected_debt
    assert ctl.in_flight == 4 and not waiter.done()
    ctl.release(ServerMetrics(prefill_queue_duration=0.0))
    await asyncio.wait_for(waiter, 1)
    assert ctl.in_flight == 4 == ctl.window_size
    summary = ctl.step_completed()
    assert summary["congestion_events"] == 1 and summary["requests"] == 5


async def test_cancelled_waiter_leaves_no_trace() -> None:
    ctl = FixedConcurrencyController(1)
    await ctl.acquire()
    waiter = asyncio.create_task(ctl.acquire())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    ctl.release()
    assert ctl.in_flight == 0
    await asyncio.wait_for(ctl.acquire(), 1)
    assert ctl.step_completed()["window"] == 1.0


def test_one_controller_shared_by_several_event_loops() -> None:
    ctl = AdaptiveConcurrencyController(initial_window=3, max_window=3)
    lock = threading.Lock()
    active, peak, done = [0], [0], [0]

    async def worker() -> None:
        for _ in range(30):
            await ctl.acquire()
            try:
                with lock:
                    active[0] += 1
                    peak[0] = max(peak[0], active[0])
                await asyncio.sleep(0.0005)
                with lock:
                    active[0] -= 1
                    done[0] += 1
            finally:
                ctl.release(ServerMetrics(prefill_queue_duration=0.0))

    async def loop_main() -> None:
        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(4))), 30)

    threads = [threading.Thread(target=asyncio.run, args=(loop_main(),)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert done[0] == 3 * 4 * 30
    assert peak[0] <= 3 and ctl.in_flight == 0


def test_fixed_controller_validates() -> None:
    with pytest.raises(ConfigError, match="max_concurrency"):
        FixedConcurrencyController(0)
