"""The rollout machine's buffer and runner on a real journal: hand-over in any order, waits woken by
notification, failures and stalls named, every transition journaled (and committing nothing)."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.errors import FatalError, StuckError
from engine.journal import Journal, read_journal
from engine.lifecycle import (
    EventBus,
    LifecycleEvent,
    RolloutBuffer,
    RolloutFailed,
    RolloutProgress,
    RolloutRunner,
    RolloutSchedule,
    RolloutState,
    RolloutVisit,
    StateLimits,
)
from engine.run.replay import replay

R = RolloutState


@dataclass
class Learner:
    trained: int = 0
    synced: int = 0

    def __call__(self) -> tuple[int, int]:
        return self.trained, self.synced


async def turns(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_take_returns_the_batch_whatever_the_order_of_put_and_take() -> None:
    for order in itertools.permutations(["begin+put", "take", "note"]):
        learner = Learner()
        buffer: RolloutBuffer[str] = RolloutBuffer(RolloutSchedule(3, 1), learner)
        beats: list[str] = []
        taker: asyncio.Task[str] | None = None
        for op in order:
            if op == "begin+put":
                buffer.begin(1)
                buffer.put(1, "batch-1")
            elif op == "take":
                taker = asyncio.create_task(buffer.take(1, beats.append))
            else:
                buffer.note("group 1/2 sampled")
            await turns()
        assert taker is not None
        assert await taker == "batch-1", order
        view = buffer.view()
        assert view.claimed == 1 and view.held() == {1} and buffer.depth == 0
        learner.trained = 1
        assert buffer.view().held() == frozenset(), "a trained claim holds nothing"


async def test_a_waiting_take_beats_on_rollout_progress_and_raises_its_failure() -> None:
    buffer: RolloutBuffer[str] = RolloutBuffer(RolloutSchedule(3, 1), Learner())
    beats: list[str] = []
    taker = asyncio.create_task(buffer.take(1, beats.append))
    await turns()
    buffer.note("group 1/4 sampled")
    await turns()
    assert beats and "group 1/4 sampled" in beats[-1] and "step 1" in beats[-1]
    buffer.fail(FatalError("deployment went away"))
    with pytest.raises(FatalError, match="deployment went away"):
        await taker


async def test_the_buffer_refuses_what_the_schedule_does_not_admit() -> None:
    learner = Learner()
    buffer: RolloutBuffer[str] = RolloutBuffer(RolloutSchedule(3, 1), learner)
    with pytest.raises(FatalError, match="refuses the batch for step 1"):
        buffer.put(1, "never begun")
    buffer.begin(1)
    with pytest.raises(FatalError, match="already being sampled"):
        buffer.begin(1)
    learner.trained = 1  # the learner got there first (a bug elsewhere): the batch is refused
    with pytest.raises(FatalError, match="trained 1"):
        buffer.put(1, "too late")
    buffer.abandon(1)
    assert buffer.view().in_flight == frozenset()


async def test_a_discarded_batch_is_sampled_again() -> None:
    buffer: RolloutBuffer[str] = RolloutBuffer(RolloutSchedule(3, 1), Learner())
    buffer.begin(1)
    buffer.put(1, "stale")
    assert await buffer.take(1, lambda _: None) == "stale"
    assert buffer.schedule.target(buffer.view()) == 2
    buffer.discard(1)
    assert buffer.schedule.target(buffer.view()) == 1


def rollout_records(path: Path) -> list[dict]:
    return [r for r in read_journal(path) if r["event"] == "rollout"]


async def test_the_runner_samples_ahead_idles_and_journals_every_transition(tmp_path: Path) -> None:
    learner = Learner()
    buffer: RolloutBuffer[str] = RolloutBuffer(RolloutSchedule(3, 1), learner)
    seen: list[LifecycleEvent] = []
    bus = EventBus()
    bus.add_callback(seen.append)

    async def sample(visit: RolloutVisit) -> str:
        visit.beat(f"sampling {visit.target}")
        await asyncio.sleep(0)
        return f"batch-{visit.target}"

    with Journal(tmp_path / "j.jsonl") as journal:
        runner = RolloutRunner(sample, buffer, journal, events=bus, run_id="r")
        task = asyncio.create_task(runner.run())
        for step in (1, 2, 3):  # the learner takes, trains and syncs each step in turn
            assert await buffer.take(step, lambda _: None) == f"batch-{step}"
            async with asyncio.timeout(5):  # k = 1: the next step is sampled while this one trains
                while step < 3 and step + 1 not in buffer.view().held():
                    await buffer.changed()
            learner.trained = learner.synced = step
            buffer.wake()
        assert await asyncio.wait_for(task, 5) is R.DONE
    records = rollout_records(tmp_path / "j.jsonl")
    enters = [(r["state"], r["target"]) for r in records if r["phase"] == "enter"]
    assert enters[0] == ("idle", None)
    assert [t for s, t in enters if s == "sampling"] == [1, 2, 3]
    exits = [r for r in records if r["phase"] == "exit"]
    assert all(r["next"] in ("idle", "sampling", "done") for r in exits)
    assert records[-1] == {**records[-1], "phase": "done", "state": "done"}
    # k = 1: step 2 was sampled while step 1 trained (synced 0 allows steps 1 and 2)
    second = [r for r in records if r["phase"] == "enter" and r["state"] == "sampling"][1]
    assert second["trained"] == 0 and second["synced"] == 0
    # replay sees none of it: rollouts are volatile
    assert replay(read_journal(tmp_path / "j.jsonl")).rows == []
    progress = [e.record for e in seen if e.kind == "rollout"]
    assert all(isinstance(p, RolloutProgress) and p.capacity == 2 for p in progress)


async def test_a_failing_sample_is_journaled_and_raised_naming_state_and_step(tmp_path: Path) -> None:
    async def sample(visit: RolloutVisit) -> str:
        raise FatalError("reward raised on step's prompt")

    buffer: RolloutBuffer[str] = RolloutBuffer(RolloutSchedule(3, 2), Learner())
    failed = pytest.raises(RolloutFailed, match=r"SAMPLING for step 1: FatalError: reward raised")
    with Journal(tmp_path / "j.jsonl") as journal, failed:
        await RolloutRunner(sample, buffer, journal).run()
    last = rollout_records(tmp_path / "j.jsonl")[-1]
    assert last["phase"] == "failed" and last["next"] == "failed" and "reward raised" in last["error"]
    assert buffer.view().in_flight == frozenset(), "a failed batch is not left in flight"


async def test_a_stalled_sample_and_a_cancelled_runner(tmp_path: Path) -> None:
    async def hangs(visit: RolloutVisit) -> str:
        visit.beat("group 1/2 sampled")
        await asyncio.Event().wait()
        return ""

    limits = {R.SAMPLING: StateLimits(timeout_s=5, stall_s=0.05)}
    with Journal(tmp_path / "j.jsonl") as journal:
        buffer: RolloutBuffer[str] = RolloutBuffer(RolloutSchedule(3, 1), Learner())
        with pytest.raises(RolloutFailed) as info:
            await RolloutRunner(hangs, buffer, journal, limits=limits).run()
        assert isinstance(info.value.__cause__, StuckError)
        assert "rollout state SAMPLING is stuck" in str(info.value) and "group 1/2 sampled" in str(info.value)

        entered = asyncio.Event()
        bus = EventBus()
        bus.add_callback(lambda _: entered.set())
        idle_buffer: RolloutBuffer[str] = RolloutBuffer(RolloutSchedule(3, 1), Learner(synced=-1))
        task = asyncio.create_task(RolloutRunner(hangs, idle_buffer, journal, events=bus).run())
        await asyncio.wait_for(entered.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    last = rollout_records(tmp_path / "j.jsonl")[-1]
    assert last["phase"] == "cancelled" and last["state"] == "idle"  # a sync is owed: nothing sampled
