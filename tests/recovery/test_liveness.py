"""The Runner's liveness hook (engine.lifecycle.runner.run_watched): a watch that raises fails the
state with the watch's error, cancelling the state's work; a state that ends first wins."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from engine.backends.base import PartLost
from engine.journal import Journal, read_journal
from engine.lifecycle import LifecycleContext, RunFailed, Runner, State, StateLimits
from engine.lifecycle.runner import run_watched

NEXT = {State.REQUESTING: State.WAITING, State.WAITING: State.DONE}


async def test_a_lost_part_fails_the_state_with_its_own_reason(tmp_path: Path) -> None:
    cleaned: list[str] = []

    async def requesting(ctx: LifecycleContext) -> None:
        return None

    async def waiting(ctx: LifecycleContext) -> None:
        try:
            await asyncio.Event().wait()  # a request a retry loop would repeat forever
        finally:
            cleaned.append("waiting")

    async def liveness(state: State) -> None:
        if state is State.WAITING:
            await asyncio.sleep(0.01)
            raise PartLost("trainer", "failed", "trainer job 'x' is FAILED: killed")
        await asyncio.Event().wait()

    journal = Journal(tmp_path / "journal.jsonl")
    runner: Runner[LifecycleContext] = Runner(
        {State.REQUESTING: requesting, State.WAITING: waiting},
        journal,
        decide=lambda state, ctx: NEXT[state],
        default_limits=StateLimits(timeout_s=3000, stall_s=3000),  # far beyond the test: not a stall
        liveness=liveness,
    )
    with pytest.raises(RunFailed, match=r"WAITING at step 0: PartLost: trainer job 'x' is FAILED: killed"):
        await runner.run(LifecycleContext(), State.REQUESTING)
    journal.close()
    assert cleaned == ["waiting"], "the state's own cleanup ran"
    last = read_journal(tmp_path / "journal.jsonl")[-1]
    assert last["event"] == "exit" and last["next"] == "failed" and "is FAILED: killed" in last["error"]


async def test_the_state_wins_a_race_with_the_watch() -> None:
    async def work() -> None:
        await asyncio.sleep(0)

    async def watch() -> None:
        await asyncio.sleep(0)
        raise PartLost("deployment", "failed", "late")

    await run_watched(work(), watch())  # the work finished: nothing raised

    async def failing() -> None:
        raise ValueError("the state's own error")

    with pytest.raises(ValueError, match="own error"):
        await run_watched(failing(), watch())


async def test_leaving_early_cancels_both() -> None:
    started = asyncio.Event()
    done: list[str] = []

    async def work() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            done.append("work")

    async def watch() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            done.append("watch")

    task = asyncio.ensure_future(run_watched(work(), watch()))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sorted(done) == ["watch", "work"]
