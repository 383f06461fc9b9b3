"""The rollout machine's pure parts against every ordering: its table, its Schedule (which step to
sample next), buffer admission, and the learner's Schedule beside it, explored over every
interleaving of the two machines (and, at random, crashes and resumes). No I/O, no clock."""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, replace

import pytest

from engine.lifecycle import (
    ROLLOUT_TRANSITIONS,
    Counters,
    FaultPlan,
    IllegalTransition,
    RolloutSchedule,
    RolloutState,
    RolloutView,
    Schedule,
    State,
    check_rollout_transition,
    check_transition,
    staleness,
)

S, R = State, RolloutState


def apply(state: State, c: Counters, sched: Schedule) -> Counters:
    """The learner's counter effects (TRAINING's is applied when it commits, below)."""
    if state is S.CHECKPOINTING:
        saved_state, saved_snapshot = sched.saves_due(c)
        return c.checkpointed(state=saved_state, snapshot=saved_snapshot)
    if state is S.SYNCING:
        return c.synced()
    if state is S.EVALUATING:
        return c.evaluated()
    return c


@dataclass(frozen=True)
class World:
    """Both machines and the buffer. A batch is (step, the oldest policy version that generated it)."""

    learner: State
    c: Counters
    rollout: RolloutState
    sampling: tuple[int, int] | None = None  # in flight
    buffer: frozenset[tuple[int, int]] = frozenset()
    claimed: tuple[int, int] | None = None  # taken by TRAINING

    def view(self) -> RolloutView:
        return RolloutView(
            trained=self.c.step,
            synced=-1 if self.c.force_sync else self.c.synced_step,
            buffered=frozenset(t for t, _ in self.buffer),
            in_flight=frozenset({self.sampling[0]}) if self.sampling else frozenset(),
            claimed=self.claimed[0] if self.claimed else None,
        )


class Explorer:
    def __init__(self, sched: Schedule, rsched: RolloutSchedule) -> None:
        self.sched, self.rsched = sched, rsched
        self.edges: set[tuple[RolloutState, RolloutState]] = set()
        self.trained: list[tuple[int, int]] = []  # (step, staleness) in training order

    def enter_rollout(self, w: World, source: RolloutState) -> World:
        """The rollout machine's next state (checked against its table); SAMPLING begins its target."""
        nxt = check_rollout_transition(source, self.rsched.next(w.view()))
        self.edges.add((source, nxt))
        if nxt is R.SAMPLING:
            target = self.rsched.target(w.view())
            assert target is not None
            assert target not in w.view().held(), "a step is never sampled twice at once"
            return replace(w, rollout=nxt, sampling=(target, w.view().synced))
        return replace(w, rollout=nxt, sampling=None)

    def moves(self, w: World) -> list[World]:
        """Every event that can happen next."""
        out: list[World] = []
        # rollout machine
        if w.rollout is R.IDLE and self.rsched.next(w.view()) is not R.IDLE:
            out.append(self.enter_rollout(w, R.IDLE))
        elif w.rollout is R.SAMPLING and w.sampling is not None:
            step, _ = w.sampling
            assert self.rsched.admits(w.view(), step), ("buffer refused", w)
            done = replace(w, buffer=w.buffer | {w.sampling}, sampling=None)
            out.append(self.enter_rollout(done, R.SAMPLING))
        # learner
        if w.learner is S.TRAINING:
            want = w.c.step + 1
            if w.claimed is None or w.claimed[0] <= w.c.step:
                for batch in w.buffer:
                    if batch[0] == want:
                        out.append(replace(w, buffer=w.buffer - {batch}, claimed=batch))
            else:
                out.append(self.commit(w))
        elif w.learner not in (S.DONE, S.FAILED):
            c = apply(w.learner, w.c, self.sched)
            out.append(replace(w, learner=check_transition(w.learner, self.sched.after(w.learner, c)), c=c))
        return out

    def commit(self, w: World) -> World:
        assert w.claimed is not None
        step, version = w.claimed
        assert staleness(step, version) <= self.rsched.max_staleness, ("a stale batch trained", w)
        self.trained.append((step, staleness(step, version)))
        c = w.c.trained()
        return replace(w, learner=check_transition(S.TRAINING, self.sched.after(S.TRAINING, c)), c=c)

    def check(self, w: World) -> None:
        v = w.view()
        assert len(v.held()) <= self.rsched.capacity, w
        assert all(t > w.c.step for t, _ in w.buffer), "a trained step is never buffered"


def start(sched: Schedule, c: Counters) -> World:
    return World(check_transition(S.WAITING, sched.after(S.WAITING, c)), c, R.IDLE)


def explore(sched: Schedule, rsched: RolloutSchedule) -> tuple[Explorer, set[Counters]]:
    """Depth-first over every interleaving; fails on a deadlock or a broken invariant."""
    ex = Explorer(sched, rsched)
    seen: set[World] = set()
    stack = [start(sched, Counters.restored(0, -1, serves_restored_step=True))]
    finals: set[Counters] = set()
    while stack:
        w = stack.pop()
        if w in seen:
            continue
        seen.add(w)
        ex.check(w)
        nxt = ex.moves(w)
        if not nxt:
            assert w.learner is S.DONE and w.rollout is R.DONE, ("deadlock", w)
            assert w.c.step == sched.max_steps and w.c.synced_step == sched.max_steps
            assert not w.buffer and w.sampling is None, "nothing sampled that was not trained"
            finals.add(w.c)
        stack.extend(nxt)
    return ex, finals


def configs() -> list[tuple[Schedule, RolloutSchedule]]:
    out = []
    for m, k, e, p in itertools.product([0, 1, 2, 4], [1, 2, 3], [0, 2], [1, 3]):
        for sync_every in range(1, k + 2):
            out.append(
                (
                    Schedule(
                        m, sync_every=sync_every, eval_every=e, checkpoint_every=p, needs_rollouts=False
                    ),
                    RolloutSchedule(m, k),
                )
            )
    return out


def test_every_interleaving_ends_done_with_nothing_staler_than_k() -> None:
    edges: set[tuple[RolloutState, RolloutState]] = set()
    for sched, rsched in configs():
        ex, finals = explore(sched, rsched)
        assert len(finals) == 1, "every interleaving ends in the same place"
        assert {s for s, _ in ex.trained} == set(range(1, sched.max_steps + 1))
        edges |= ex.edges
    declared = {(a, b) for a, targets in ROLLOUT_TRANSITIONS.items() for b in targets if b is not R.FAILED}
    assert edges == declared, "the rollout table has no dead entries and the Schedule stays inside it"


def test_random_orderings_with_crashes_and_resumes() -> None:
    rng = random.Random(7)
    for sched, rsched in configs():
        for _ in range(3):
            ex = Explorer(sched, rsched)
            w = start(sched, Counters.restored(0, -1, serves_restored_step=True))
            trained: list[int] = []
            for _ in range(5000):
                ex.check(w)
                options = ex.moves(w)
                if not options:
                    break
                if rng.random() < 0.03:  # crash: back to the last full state; the buffer is volatile
                    c = Counters.restored(w.c.state_step, w.c.evaluated_step, rng.random() < 0.5)
                    trained = [t for t in trained if t <= c.step]
                    w = start(sched, c)
                    continue
                nxt = rng.choice(options)
                if nxt.c.step > w.c.step:
                    assert w.claimed is not None
                    step, version = w.claimed
                    assert step == nxt.c.step and staleness(step, version) <= rsched.max_staleness
                    trained.append(step)
                w = nxt
            assert w.learner is S.DONE and w.rollout is R.DONE, w
            assert trained == list(range(1, sched.max_steps + 1)), "each step trained once, in order"


def test_overlap_samples_ahead_exactly_as_far_as_k_allows() -> None:
    for k in (1, 2, 3):
        rs = RolloutSchedule(max_steps=10, max_staleness=k)
        # learner at step 3, deployment on step 3's weights: steps 4 .. 3 + k + 1 may be sampled
        v = RolloutView(trained=3, synced=3)
        assert rs.target(v) == 4 and rs.horizon(v) == 3 + k + 1
        held = frozenset(range(4, 4 + k + 1))
        assert rs.target(replace(v, buffered=held)) is None  # full: k + 1 held
        assert rs.next(replace(v, buffered=held)) is R.IDLE
        # the deployment lags one step: one fewer step ahead
        lag = RolloutView(trained=3, synced=2, buffered=frozenset(range(4, 3 + k + 1)))
        assert rs.target(lag) is None and rs.next(lag) is R.IDLE
    rs = RolloutSchedule(max_steps=5, max_staleness=2)
    assert rs.target(RolloutView(trained=2, synced=2, in_flight=frozenset({3}))) == 4
    assert rs.target(RolloutView(trained=2, synced=2, claimed=3, buffered=frozenset({4}))) == 5
    assert rs.target(RolloutView(trained=4, synced=4)) == 5  # never past max_steps
    assert rs.target(RolloutView(trained=2, synced=-1)) is None  # a sync is owed: weights unknown
    assert rs.next(RolloutView(trained=5, synced=5)) is R.DONE
    assert rs.target(RolloutView(trained=3, synced=3, claimed=3)) == 4  # a trained claim holds nothing


def test_buffer_admission() -> None:
    rs = RolloutSchedule(max_steps=6, max_staleness=1)
    v = RolloutView(trained=2, synced=2, in_flight=frozenset({3}))
    assert rs.admits(v, 3)
    assert not rs.admits(replace(v, trained=3), 3)  # already trained
    assert not rs.admits(replace(v, buffered=frozenset({3})), 3)  # already buffered
    assert not rs.admits(replace(v, claimed=3), 3)  # being trained
    assert not rs.admits(replace(v, buffered=frozenset({4, 5})), 3)  # no room
    assert not rs.admits(RolloutView(trained=6, synced=6, in_flight=frozenset({7})), 7)  # past the end
    assert RolloutSchedule(3, 2).capacity == 3 and RolloutSchedule(3, 2, capacity=1).capacity == 1
    with pytest.raises(ValueError, match="max_staleness"):
        RolloutSchedule(3, 0)


def test_staleness_is_versions_behind_the_learner() -> None:
    assert staleness(1, 0) == 0  # step 1 trains on the base model's rollouts: on-policy
    assert staleness(5, 3) == 1 and staleness(5, 4) == 0


def test_rollout_table_rejects_everything_else_naming_both_states() -> None:
    for a, b in itertools.product(RolloutState, RolloutState):
        if b in ROLLOUT_TRANSITIONS[a]:
            assert check_rollout_transition(a, b) is b
            continue
        with pytest.raises(IllegalTransition, match=f"rollout transition {a.name} -> {b.name}"):
            check_rollout_transition(a, b)


def test_fault_plans_name_rollout_states() -> None:
    assert FaultPlan.from_env("kill:rollout.sampling@3:enter") == FaultPlan(R.SAMPLING, 3, "enter")
    assert FaultPlan.from_env("kill:ROLLOUT.idle") == FaultPlan(R.IDLE, None, "exit")
    with pytest.raises(ValueError, match="HOTLOOP_FAULT"):
        FaultPlan.from_env("kill:rollout.nowhere")


def test_a_sync_interval_longer_than_k_plus_one_would_deadlock() -> None:
    """Why the config refuses ``sync_every > max_staleness + 1``: the learner would wait for a batch
    the rollout Schedule may not sample before the next sync, which comes only after that batch."""
    with pytest.raises(AssertionError, match="deadlock"):
        explore(Schedule(4, sync_every=3, checkpoint_every=1, needs_rollouts=False), RolloutSchedule(4, 1))
