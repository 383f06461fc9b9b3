"""The Runner: journals entries and exits, checks transitions, bounds states, publishes events."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from engine.errors import StuckError
from engine.journal import Journal, read_journal
from engine.lifecycle import (
    Counters,
    EventBus,
    FaultPlan,
    IllegalTransition,
    LifecycleContext,
    LifecycleEvent,
    RunFailed,
    Runner,
    Schedule,
    State,
    StateLimits,
)

S = State


@dataclass(frozen=True)
class Note:
    """A minimal fact for the generic Runner (a run's real facts are in engine.run.records)."""

    kind: str
    data: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.data}


def by_schedule(sched: Schedule) -> Any:
    return lambda state, ctx: sched.after(state, ctx.counters)


def by_table(table: dict[State, State]) -> Any:
    return lambda state, ctx: table[state]


NEXT = by_table({S.REQUESTING: S.WAITING, S.WAITING: S.DONE})


def schedule_handlers(sched: Schedule) -> dict[State, object]:
    """Handlers that apply each work state's counter effect (the same methods the real states call);
    the real states run against fake backends in tests/states."""

    async def nothing(ctx: LifecycleContext) -> None:
        return None

    async def sampling(ctx: LifecycleContext) -> None:
        await asyncio.sleep(0)
        ctx.beat("rollouts done")
        ctx.counters = ctx.counters.sampled()

    async def training(ctx: LifecycleContext) -> None:
        ctx.counters = ctx.counters.trained()
        ctx.record(Note("step", {"step": ctx.counters.step}))

    async def checkpointing(ctx: LifecycleContext) -> None:
        state, snapshot = sched.saves_due(ctx.counters)
        ctx.counters = ctx.counters.checkpointed(state=state, snapshot=snapshot)

    async def syncing(ctx: LifecycleContext) -> None:
        ctx.counters = ctx.counters.synced()

    async def evaluating(ctx: LifecycleContext) -> None:
        ctx.counters = ctx.counters.evaluated()
        ctx.record(Note("eval", {"step": ctx.counters.step, "score": 0.5}))

    return {
        S.REQUESTING: nothing, S.WAITING: nothing, S.SAMPLING: sampling, S.TRAINING: training,
        S.CHECKPOINTING: checkpointing, S.SYNCING: syncing, S.EVALUATING: evaluating,
    }  # fmt: skip


async def test_full_run_journaled_and_observed(tmp_path: Path) -> None:
    sched = Schedule(max_steps=3, sync_every=1, eval_every=2, checkpoint_every=1)
    seen: list[LifecycleEvent] = []
    bus = EventBus()
    bus.add_callback(seen.append)
    committed: list[dict] = []

    async def after_exit(state: State, facts: list[Any]) -> None:
        committed.extend(f.to_json() for f in facts)

    with Journal(tmp_path / "journal.jsonl") as journal:
        runner = Runner(
            schedule_handlers(sched),
            journal,
            decide=by_schedule(sched),
            events=bus,
            run_id="r1",
            after_exit=after_exit,
        )
        ctx = LifecycleContext()

        async def consume() -> list[LifecycleEvent]:
            return [e async for e in bus.subscribe()]

        consumer = asyncio.create_task(consume())
        await asyncio.sleep(0)
        assert await runner.run(ctx, S.REQUESTING) is S.DONE
        streamed = await consumer
    records = read_journal(tmp_path / "journal.jsonl")
    enters = [r["state"] for r in records if r["event"] == "enter"]
    exits = [r for r in records if r["event"] == "exit"]
    assert enters[:3] == ["requesting", "waiting", "evaluating"]
    assert len(enters) == len(exits)
    assert all(e["next"] != "failed" for e in exits)
    assert records[-1]["event"] == "done" and records[-1]["step"] == 3
    training_exits = [e for e in exits if e["state"] == "training"]
    assert [e["records"] for e in training_exits] == [[{"kind": "step", "step": n}] for n in (1, 2, 3)]
    assert training_exits[0]["changes"] == {"step": 1}
    assert [r["step"] for r in committed if r["kind"] == "eval"] == [0, 2, 3]
    assert streamed == seen and seen[-1].kind == "done"
    assert [e.state for e in seen if e.kind == "enter"] == [State(s) for s in enters]
    assert ctx.counters == Counters(3, 3, 3, 3, 3, 3)


async def test_illegal_transition_fails_the_run_after_journaling(tmp_path: Path) -> None:
    async def works(ctx: LifecycleContext) -> None:
        return None

    with Journal(tmp_path / "j.jsonl") as journal:
        # A decision REQUESTING -> EVALUATING is not in the table.
        runner: Runner[LifecycleContext] = Runner(
            {S.REQUESTING: works}, journal, decide=by_table({S.REQUESTING: S.EVALUATING})
        )
        with pytest.raises(RunFailed) as info:
            await runner.run(LifecycleContext(), S.REQUESTING)
    assert isinstance(info.value.__cause__, IllegalTransition)
    assert "REQUESTING -> EVALUATING" in str(info.value)
    last = read_journal(tmp_path / "j.jsonl")[-1]
    assert last["event"] == "exit" and last["next"] == "failed" and "IllegalTransition" in last["error"]


async def test_stuck_state_fails_saying_where(tmp_path: Path) -> None:
    async def hangs(ctx: LifecycleContext) -> None:
        ctx.beat("waiting for the trainer job")
        await asyncio.Event().wait()

    bus = EventBus()
    with Journal(tmp_path / "j.jsonl") as journal:
        runner: Runner[LifecycleContext] = Runner(
            {S.REQUESTING: hangs},
            journal,
            decide=NEXT,
            events=bus,
            default_limits=StateLimits(timeout_s=5, stall_s=0.05),
        )
        with pytest.raises(RunFailed) as info:
            await runner.run(LifecycleContext(), S.REQUESTING)
    cause = info.value.__cause__
    assert isinstance(cause, StuckError)
    assert "REQUESTING" in str(cause) and "waiting for the trainer job" in str(cause)
    assert bus.last is not None and bus.last.kind == "failed"


async def test_a_state_that_never_reports_progress_is_bounded_too(tmp_path: Path) -> None:
    async def silent(ctx: LifecycleContext) -> None:
        await asyncio.Event().wait()  # no beat at all: only the initial stall deadline applies

    with Journal(tmp_path / "j.jsonl") as journal:
        runner: Runner[LifecycleContext] = Runner(
            {S.REQUESTING: silent},
            journal,
            decide=NEXT,
            default_limits=StateLimits(timeout_s=5, stall_s=0.05),
        )
        with pytest.raises(RunFailed) as info:
            async with asyncio.timeout(5):
                await runner.run(LifecycleContext(), S.REQUESTING)
    assert isinstance(info.value.__cause__, StuckError)
    assert "no progress" in str(info.value.__cause__) and "entered" in str(info.value.__cause__)


async def test_progress_extends_the_deadline_but_not_past_the_hard_limit(tmp_path: Path) -> None:
    async def slow_but_alive(ctx: LifecycleContext) -> None:
        for i in range(8):
            await asyncio.sleep(0.02)
            ctx.beat(f"chunk {i}")

    async def forever_alive(ctx: LifecycleContext) -> None:
        while True:
            await asyncio.sleep(0.01)
            ctx.beat("still beating")

    async def nothing(ctx: LifecycleContext) -> None:
        return None

    limits = StateLimits(timeout_s=0.3, stall_s=0.05)
    with Journal(tmp_path / "j.jsonl") as journal:
        ok: Runner[LifecycleContext] = Runner(
            {S.REQUESTING: slow_but_alive, S.WAITING: nothing}, journal, decide=NEXT, default_limits=limits
        )
        assert await ok.run(LifecycleContext(), S.REQUESTING) is S.DONE
        capped: Runner[LifecycleContext] = Runner(
            {S.REQUESTING: forever_alive}, journal, decide=NEXT, default_limits=limits
        )
        with pytest.raises(RunFailed, match="limit"):
            await capped.run(LifecycleContext(), S.REQUESTING)


async def test_an_error_inside_a_state_is_not_mistaken_for_a_stall(tmp_path: Path) -> None:
    async def raises_timeout(ctx: LifecycleContext) -> None:
        raise TimeoutError("upstream read timed out")

    with Journal(tmp_path / "j.jsonl") as journal:
        runner: Runner[LifecycleContext] = Runner({S.REQUESTING: raises_timeout}, journal, decide=NEXT)
        with pytest.raises(RunFailed) as info:
            await runner.run(LifecycleContext(), S.REQUESTING)
    assert isinstance(info.value.__cause__, TimeoutError)
    assert not isinstance(info.value.__cause__, StuckError)


async def test_cancellation_is_journaled(tmp_path: Path) -> None:
    entered = asyncio.Event()

    async def blocks(ctx: LifecycleContext) -> None:
        entered.set()
        await asyncio.sleep(3600)

    with Journal(tmp_path / "j.jsonl") as journal:
        runner: Runner[LifecycleContext] = Runner({S.REQUESTING: blocks}, journal, decide=NEXT)
        task = asyncio.create_task(runner.run(LifecycleContext(), S.REQUESTING))
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert [r["event"] for r in read_journal(tmp_path / "j.jsonl")] == ["enter", "cancelled"]


def test_fault_plan_parsing() -> None:
    assert FaultPlan.from_env("") is None
    assert FaultPlan.from_env("kill:training@2") == FaultPlan(S.TRAINING, 2, "exit")
    assert FaultPlan.from_env("kill:SYNCING:enter") == FaultPlan(S.SYNCING, None, "enter")
    with pytest.raises(ValueError, match="HOTLOOP_FAULT"):
        FaultPlan.from_env("kill:nowhere")


async def test_event_subscription_ends_when_a_run_fails_before_any_state(tmp_path: Path) -> None:
    from engine.errors import ConfigError
    from engine.run.orchestrator import start

    handle = start(None, run_dir=tmp_path / "not-a-run")  # fails in _prepare_dir, before the Runner

    async def drain() -> list[object]:
        return [e async for e in handle.events()]

    events = asyncio.create_task(drain())
    with pytest.raises(ConfigError, match="not a run directory"):
        await handle.wait()
    async with asyncio.timeout(5):
        assert await events == []
