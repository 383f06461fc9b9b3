"""The queueing model and the adaptive controller on it (virtual clock: deterministic, not timed)."""

from __future__ import annotations

from support.sim import ManualClock, SimulatedDeployment, intervals_until_steady, run_closed_loop

from engine.sampling import AdaptiveConcurrencyController, FixedConcurrencyController
from engine.sampling.controllers import AimdPolicy


def test_queueing_model_matches_little() -> None:
    # 8 slots, 1 s service, window 16: full throughput and ~1 s of queue (8 waiting / 8 per s).
    result = run_closed_loop(
        FixedConcurrencyController(16), SimulatedDeployment(8, 1.0, jitter=0.0), ManualClock(), duration_s=100
    )
    assert abs(result.throughput - 8.0) < 0.2
    assert abs(result.mean_pq_s - 1.0) < 0.05
    under = run_closed_loop(
        FixedConcurrencyController(4), SimulatedDeployment(8, 1.0, jitter=0.0), ManualClock(), duration_s=100
    )
    assert abs(under.throughput - 4.0) < 0.1 and under.mean_pq_s == 0.0


def test_max_waiting_rejects_and_the_controller_backs_off() -> None:
    clock = ManualClock()
    ctl = AdaptiveConcurrencyController(initial_window=64, clock=clock)
    dep = SimulatedDeployment(8, 1.0, max_waiting=4)
    result = run_closed_loop(ctl, dep, clock, duration_s=60)
    assert result.rejected > 0
    assert ctl.window_size < 64


def _adaptive(policy: AimdPolicy, changes: list[tuple[float, int]]) -> tuple[float, int | None]:
    clock = ManualClock()
    ctl = AdaptiveConcurrencyController(policy=policy, clock=clock)
    result = run_closed_loop(
        ctl,
        SimulatedDeployment(16, 1.0, seed=3),
        clock,
        duration_s=300,
        warmup_s=20,
        capacity_changes=changes,
    )
    start = changes[0][0] if changes else 0.0
    return result.throughput, intervals_until_steady(result.intervals, start_s=start, pq_limit_s=0.625)


def test_adaptive_reaches_capacity_and_recovers_after_halving() -> None:
    throughput, converge = _adaptive(AimdPolicy(), [])
    assert throughput >= 0.95 * 16 and converge is not None
    halved_tp, recover = _adaptive(AimdPolicy(), [(150.0, 8)])
    assert recover is not None and recover <= 20
    assert halved_tp >= 0.9 * (16 * 130 + 8 * 150) / 280
    # The stale-EMA cascade of the exact Fireworks rule costs throughput on the same model.
    fireworks_tp, _ = _adaptive(AimdPolicy.fireworks(), [])
    assert fireworks_tp < throughput
