"""The transition table and the Schedule: every legal edge is reachable, every other one rejected."""

from __future__ import annotations

import itertools
import random

import pytest

from engine.lifecycle import (
    INITIAL,
    TERMINAL,
    TRANSITIONS,
    Counters,
    IllegalTransition,
    Schedule,
    State,
    check_transition,
)

S = State


def apply(state: State, c: Counters, sched: Schedule) -> Counters:
    """A state's counter effect once its work succeeded: the same methods the states in states/ call
    (their I/O is exercised against fake backends in tests/states)."""
    if state is S.SAMPLING:
        return c.sampled()
    if state is S.TRAINING:
        return c.trained()
    if state is S.CHECKPOINTING:
        saved_state, saved_snapshot = sched.saves_due(c)
        return c.checkpointed(state=saved_state, snapshot=saved_snapshot)
    if state is S.SYNCING:
        return c.synced()
    if state is S.EVALUATING:
        return c.evaluated()
    return c


def crash(c: Counters, serves_restored_step: bool) -> Counters:
    """What resume restores: the last full state, the evaluations up to it, a fresh session."""
    return Counters.restored(c.state_step, c.evaluated_step, serves_restored_step)


def simulate(sched: Schedule, rng: random.Random | None = None, start: Counters | None = None):
    """Drive a whole run; optionally crash and resume at random points. Returns edges and counters."""
    edges: list[tuple[State, State]] = []
    state, c = INITIAL, start or Counters()
    for _ in range(10_000):
        if state in TERMINAL:
            return edges, c
        c = apply(state, c, sched)
        nxt = sched.after(state, c)
        edges.append((state, check_transition(state, nxt)))
        state = nxt
        if rng is not None and state not in TERMINAL and rng.random() < 0.05:
            c = crash(c, serves_restored_step=rng.random() < 0.5)
            edges.append((state, S.FAILED))  # the crashed process never left the state
            state = S.REQUESTING
    raise AssertionError("simulation did not terminate")


CONFIGS = [
    Schedule(max_steps=m, sync_every=k, eval_every=e, checkpoint_every=p, needs_rollouts=r)
    for m, k, e, p, r in itertools.product([0, 1, 3, 7], [1, 2, 3], [0, 1, 2, 5], [1, 2, 4], [True, False])
]


def test_every_legal_edge_is_taken_and_nothing_else() -> None:
    taken: set[tuple[State, State]] = set()
    rng = random.Random(0)
    for sched in CONFIGS:
        taken.update(simulate(sched)[0])
        for _ in range(5):
            taken.update(simulate(sched, rng)[0])
    declared = {(a, b) for a, targets in TRANSITIONS.items() for b in targets}
    # FAILED is reachable from anywhere (errors); every other declared edge must be produced by the
    # Schedule in some run, so the table has no dead entries.
    assert {(a, b) for a, b in declared if b is not S.FAILED} <= taken
    assert taken <= declared


def test_runs_end_done_synced_saved_and_evaluated() -> None:
    for sched, seed in itertools.product(CONFIGS, range(3)):
        edges, c = simulate(sched, random.Random(seed) if seed else None)
        assert edges[-1][1] is S.DONE, sched
        assert c.step == sched.max_steps
        assert c.state_step == sched.max_steps, "the final training state is always saved"
        if sched.max_steps:
            assert c.synced_step == sched.max_steps, "the deployment ends on the final snapshot"
        if sched.eval_every:
            assert c.evaluated_step == sched.max_steps


def test_illegal_transitions_rejected_naming_both_states() -> None:
    for a, b in itertools.product(State, State):
        if b in TRANSITIONS[a]:
            assert check_transition(a, b) is b
            continue
        with pytest.raises(IllegalTransition) as info:
            check_transition(a, b)
        assert a.name in str(info.value) and b.name in str(info.value)
        assert info.value.source is a and info.value.target is b


def test_terminal_states_have_no_exit_and_failed_reachable_everywhere() -> None:
    assert TRANSITIONS[S.DONE] == frozenset() and TRANSITIONS[S.FAILED] == frozenset()
    for state in State:
        if state not in TERMINAL:
            assert S.FAILED in TRANSITIONS[state]


def test_schedule_decisions() -> None:
    rl = Schedule(max_steps=4, sync_every=2, eval_every=2, checkpoint_every=1, needs_rollouts=True)
    assert rl.next(Counters()) is S.EVALUATING  # baseline evaluation of the untouched policy
    assert rl.next(Counters(evaluated_step=0)) is S.SAMPLING
    assert rl.next(Counters(evaluated_step=0, rollout_step=1)) is S.TRAINING
    after1 = Counters(step=1, evaluated_step=0, rollout_step=1)
    assert rl.next(after1) is S.CHECKPOINTING  # checkpoint_every=1
    saved1 = after1.replace(state_step=1)
    assert not rl.sync_due(saved1)  # staleness 1 < sync_every 2
    assert rl.next(saved1) is S.SAMPLING  # samples from policy 0 (bounded staleness)
    at2 = saved1.replace(step=2, rollout_step=2)
    assert rl.sync_due(at2) and rl.eval_due(at2)
    assert rl.next(at2.replace(state_step=2, snapshot_step=2)) is S.SYNCING
    assert rl.next(at2.replace(state_step=2, snapshot_step=2, synced_step=2)) is S.EVALUATING
    end = Counters(step=4, state_step=4, snapshot_step=4, synced_step=4, evaluated_step=4, rollout_step=4)
    assert rl.next(end) is S.DONE
    # A resumed run whose deployment serves some other snapshot must re-sync first.
    assert rl.next(Counters(step=2, state_step=2, evaluated_step=2, force_sync=True)) is S.CHECKPOINTING
    sft = Schedule(max_steps=3, sync_every=5, eval_every=0, checkpoint_every=5, needs_rollouts=False)
    assert sft.next(Counters()) is S.TRAINING
    assert sft.next(Counters(step=1)) is S.TRAINING
    assert sft.next(Counters(step=3)) is S.CHECKPOINTING  # the last step always saves and syncs


def test_schedule_rejects_bad_intervals() -> None:
    with pytest.raises(ValueError, match="sync_every"):
        Schedule(max_steps=1, sync_every=0)
    with pytest.raises(ValueError, match="checkpoint_every"):
        Schedule(max_steps=1, checkpoint_every=0)
    with pytest.raises(ValueError, match="eval_every"):
        Schedule(max_steps=1, eval_every=-1)
