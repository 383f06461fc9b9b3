"""The drain gate: a hot-load on a deployment that names no weights per completion runs only between
attempts. Against the scripted server (real HTTP) and, for the gate itself, every order of events."""

from __future__ import annotations

import asyncio

import pytest
from scripted_server import ScriptedServer
from test_sampling_sampler import PROMPT, make_sampler

from engine.errors import StuckError
from engine.sampling import FixedConcurrencyController
from engine.sampling.drain import DrainGate


async def turns(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_a_drain_waits_for_attempts_in_flight_and_holds_new_ones(
    scripted_server: ScriptedServer,
) -> None:
    scripted_server.script("hold", "hold")
    async with make_sampler(scripted_server, FixedConcurrencyController(8)) as sampler:
        first = asyncio.create_task(sampler.sample_with_prompt_tokens(PROMPT, n=2, max_tokens=16))
        while len(scripted_server.requests) < 2:
            await scripted_server.arrived.wait()
            scripted_server.arrived.clear()
        assert sampler.attempts_in_flight == 2
        events: list[str] = []

        async def hot_load() -> None:
            async with sampler.draining(30) as ending:
                events.append(f"load in epoch {ending}, {sampler.attempts_in_flight} in flight")
                late = asyncio.create_task(sampler.sample_with_prompt_tokens(PROMPT, n=1, max_tokens=16))
                await turns()
                events.append(f"{len(scripted_server.requests)} requests reached the server")
            events.append("reopened")
            (completion,) = await late
            events.append(f"late epoch {completion.epoch}")

        loading = asyncio.create_task(hot_load())
        await turns()
        assert not loading.done() and events == [], "the load waits for the attempts in flight"
        scripted_server.release.set()
        done = await first
        await loading
    assert [c.epoch for c in done] == [0, 0] and sampler.epoch == 1
    assert events == [
        "load in epoch 0, 0 in flight",
        "2 requests reached the server",  # the one started during the load was held back
        "reopened",
        "late epoch 1",
    ]


async def test_a_drain_that_cannot_finish_is_bounded_and_reopens(scripted_server: ScriptedServer) -> None:
    scripted_server.script("hold")
    async with make_sampler(scripted_server) as sampler:
        held = asyncio.create_task(sampler.sample_with_prompt_tokens(PROMPT, n=1, max_tokens=16))
        await scripted_server.arrived.wait()
        with pytest.raises(StuckError, match="1 sampling attempts were still in flight"):
            async with sampler.draining(0.05):
                raise AssertionError("the block must not run")
        scripted_server.release.set()
        (completion,) = await held
    assert completion.epoch == 0 and sampler.epoch == 1  # reopened in a new epoch all the same


async def test_the_gate_under_every_order_of_attempts_and_a_drain() -> None:
    """Random orders of three attempts (enter, leave) and one drain (close, block, reopen): the block
    runs with nothing in flight, nothing is admitted while closed, and an attempt's epoch is 0 if it
    got in before the drain closed, 1 after it reopened."""
    for seed in range(300):
        await one_order(seed)


async def one_order(seed: int) -> None:
    import random

    rng = random.Random(seed)
    gate = DrainGate()
    admitted: dict[str, int] = {}
    waiting: dict[str, asyncio.Task[int]] = {}
    left: set[str] = set()
    block_ends = asyncio.Event()
    log: list[str] = []

    async def drain() -> None:
        async with gate.draining(5) as ending:
            log.append(f"block {ending} with {gate.in_flight} in flight")
            await block_ends.wait()

    drainer: asyncio.Task[None] | None = None
    before_drain: dict[str, bool] = {}
    while len(left) < 3 or drainer is None or not drainer.done():
        options = [f"{a}-enter" for a in "abc" if a not in admitted and a not in waiting]
        options += [f"{a}-leave" for a in admitted if a not in left]
        options += ["drain"] if drainer is None else []
        options += ["block-ends"] if log and not block_ends.is_set() else []
        if not options:
            await turns()
            continue
        op = rng.choice(options)
        name, _, what = op.partition("-")
        if op == "drain":
            drainer = asyncio.create_task(drain())
        elif op == "block-ends":
            block_ends.set()
        elif what == "enter":
            before_drain[name] = drainer is None
            closed = gate.closed
            waiting[name] = asyncio.create_task(gate.enter(5))
            await turns()
            if closed:
                assert not waiting[name].done(), "nothing is admitted while the gate is closed"
        else:
            gate.leave()
            left.add(name)
        await turns()
        for a, task in list(waiting.items()):
            if task.done():
                admitted[a] = task.result()
                del waiting[a]
    assert log == ["block 0 with 0 in flight"], seed
    assert gate.epoch == 1 and gate.in_flight == 0
    assert admitted == {a: 0 if before_drain[a] else 1 for a in "abc"}, seed
