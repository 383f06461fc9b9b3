"""The base/delta chain decision: explicit scenarios plus every event sequence up to length 6."""

from __future__ import annotations

import itertools

import pytest

from engine.weights import chain
from engine.weights.chain import (
    ChainError,
    ChainState,
    HotloadFailed,
    HotloadSucceeded,
    Observed,
    Reset,
    Saved,
    apply,
    load_parent,
    needs_readback,
    plan_save,
)


def _save_and_load(state: ChainState, ident: str) -> ChainState:
    plan = plan_save(state)
    state = apply(state, Saved(ident, plan.checkpoint_type, plan.parent))
    return apply(state, HotloadSucceeded(ident))


def test_first_snapshot_is_base_and_needs_readback() -> None:
    s = ChainState()
    assert needs_readback(s)
    assert plan_save(s) == chain.SavePlan("base", None)
    s = apply(s, Observed(None))
    assert not needs_readback(s)
    assert plan_save(s) == chain.SavePlan("base", None)


def test_deltas_chain_on_the_held_identity_and_full_every_n() -> None:
    s = apply(ChainState(full_every=2), Observed(None))
    kinds = []
    for i in range(7):
        plan = plan_save(s)
        kinds.append(plan.checkpoint_type)
        if plan.checkpoint_type == "delta":
            assert plan.parent == s.held  # always against what the deployment holds
            assert load_parent(apply(s, Saved(f"s{i}", "delta", plan.parent)), f"s{i}", "delta") == s.held
        s = _save_and_load(s, f"s{i}")
    assert kinds == ["base", "delta", "delta", "base", "delta", "delta", "base"]


def test_full_every_zero_means_always_base() -> None:
    s = apply(ChainState(full_every=0), Observed(None))
    for i in range(3):
        assert plan_save(s).checkpoint_type == "base"
        s = _save_and_load(s, f"s{i}")


def test_lora_is_always_base_without_metadata() -> None:
    s = apply(ChainState(lora=True), Observed(None))
    for i in range(3):
        assert plan_save(s) == chain.SavePlan("base", None)
        assert plan_save(s, "delta") == chain.SavePlan("base", None)
        s = _save_and_load(s, f"s{i}")
    assert load_parent(s, "s2", "delta") is None


def test_foreign_identity_forces_base() -> None:
    s = apply(ChainState(), Observed("other-session-snap"))
    assert plan_save(s) == chain.SavePlan("base", None)
    with pytest.raises(ChainError, match="delta"):
        plan_save(s, "delta")


def test_failed_hotload_forces_base_until_a_base_is_served() -> None:
    s = apply(ChainState(), Observed(None))
    s = _save_and_load(s, "a")
    s = _save_and_load(s, "b")  # delta on a
    assert s.depth == {"a": 0, "b": 1}
    plan = plan_save(s)
    assert plan == chain.SavePlan("delta", "b")
    s = apply(s, Saved("c", "delta", "b"))
    s = apply(s, HotloadFailed("c"))
    assert needs_readback(s)
    s = apply(s, Observed("b"))  # the deployment kept b
    assert plan_save(s) == chain.SavePlan("base", None)
    # A delta hot-load succeeding does not clear the fallback; a base does.
    s = apply(s, HotloadSucceeded("c"))
    assert plan_save(s).checkpoint_type == "base"
    s = _save_and_load(s, "d")
    assert s.held == "d" and not s.force_base
    assert plan_save(s) == chain.SavePlan("delta", "d")


def test_reset_forgets_the_chain() -> None:
    s = _save_and_load(apply(ChainState(full_every=5), Observed(None)), "a")
    s = apply(s, Reset())
    assert needs_readback(s) and dict(s.depth) == {} and s.full_every == 5
    s = apply(s, Observed("a"))  # a is now foreign: the new trainer's bucket does not have it
    assert plan_save(s).checkpoint_type == "base"


def test_overrides_and_bad_input() -> None:
    s = _save_and_load(apply(ChainState(), Observed(None)), "a")
    assert plan_save(s, "base") == chain.SavePlan("base", None)
    assert plan_save(s, "delta") == chain.SavePlan("delta", "a")
    with pytest.raises(ChainError, match="checkpoint_type"):
        plan_save(s, "merged")  # type: ignore[arg-type]
    with pytest.raises(ChainError, match="full_every"):
        ChainState(full_every=-1)
    with pytest.raises(ChainError, match="unknown parent"):
        apply(s, Saved("x", "delta", "nope"))
    with pytest.raises(ChainError, match="parent snapshot is unknown"):
        load_parent(apply(ChainState(), Observed(None)), "zz", "delta")
    # A delta the chain did not save is assumed to sit on what the deployment holds.
    assert load_parent(s, "foreign-delta", "delta") == "a"
    assert load_parent(s, "a", "base") is None


def _events_for(state: ChainState, step: int) -> list[chain.Event]:
    """The events that can happen next from ``state`` (a save follows the plan, as the syncer does)."""
    ident = f"s{step}"
    plan = plan_save(state)
    events: list[chain.Event] = [Saved(ident, plan.checkpoint_type, plan.parent), Observed(None), Reset()]
    events += [Observed(k) for k in list(state.depth)[-1:]] + [Observed("foreign")]
    events += [HotloadSucceeded(k) for k in list(state.depth)[-2:]]
    events += [HotloadFailed(k) for k in list(state.depth)[-1:]]
    return events


@pytest.mark.parametrize("lora", [False, True])
@pytest.mark.parametrize("full_every", [0, 1, 2])
def test_invariants_over_every_event_sequence(lora: bool, full_every: int) -> None:
    count = 0
    frontier = [(ChainState(lora=lora, full_every=full_every), False)]  # (state, failed since base served)
    for step in range(6):
        nxt = []
        for state, failed in frontier:
            for ev in _events_for(state, step):
                s2 = apply(state, ev)
                f2 = failed
                if isinstance(ev, HotloadFailed):
                    f2 = True
                if isinstance(ev, HotloadSucceeded) and state.depth.get(ev.identity) == 0:
                    f2 = False
                if isinstance(ev, Reset):
                    f2 = True  # a reset also demands a base first
                plan = plan_save(s2)
                if plan.checkpoint_type == "delta":
                    assert not lora
                    assert not f2 and not s2.force_base
                    assert s2.held_known and plan.parent == s2.held and plan.parent in s2.depth
                    assert s2.depth[plan.parent] + 1 <= full_every
                if lora:
                    assert plan.checkpoint_type == "base"
                if needs_readback(s2):
                    assert plan.checkpoint_type == "base"
                for ident, d in s2.depth.items():
                    parent = s2.parents[ident]
                    assert (d == 0) == (parent is None)
                    if parent is not None:
                        assert s2.depth[parent] == d - 1
                nxt.append((s2, f2))
                count += 1
        # Keep the search finite but broad: dedupe on the observable part of the state.
        seen: dict[tuple[object, ...], tuple[ChainState, bool]] = {}
        for s2, f2 in nxt:
            key = (s2.held, s2.held_known, s2.force_base, tuple(s2.depth.items()), f2)
            seen.setdefault(key, (s2, f2))
        frontier = list(seen.values())
    assert count > 100


def test_every_success_failure_pattern() -> None:
    """Save+hotload loops with every success/failure pattern of length 8: deltas only after a served base."""
    for outcome in itertools.product([True, False], repeat=8):
        s = apply(ChainState(full_every=3), Observed(None))
        served_base = False
        run = 0
        for i, ok in enumerate(outcome):
            plan = plan_save(s)
            if plan.checkpoint_type == "delta":
                assert served_base and plan.parent == s.held
                run += 1
                assert run <= 3
            else:
                run = 0
            s = apply(s, Saved(f"s{i}", plan.checkpoint_type, plan.parent))
            if ok:
                s = apply(s, HotloadSucceeded(f"s{i}"))
                served_base = served_base or plan.checkpoint_type == "base"
            else:
                s = apply(apply(s, HotloadFailed(f"s{i}")), Observed(s.held))
                served_base = False
                run = 0
