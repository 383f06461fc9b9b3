"""OrderedQueue units: what arrives while a sequenced op is still running on the worker thread."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from engine.local.trainer.config import TrainerBadRequest
from engine.local.trainer.futures import FutureStore, Outcome
from engine.local.trainer.ordering import OrderedQueue


async def test_ops_submitted_while_a_sequenced_op_runs() -> None:
    store = FutureStore(60.0, 60.0)
    executor = ThreadPoolExecutor(1)
    queue = OrderedQueue("m", store, executor, gap_timeout_s=30.0)
    started, release = threading.Event(), threading.Event()

    def slow() -> Outcome:
        started.set()
        release.wait(10)
        return Outcome(json={"op": 1})

    first = store.create("fwd")
    queue.submit(1, first, slow, "fwd")
    assert await asyncio.to_thread(started.wait, 10)
    # A retry of the running seq_id is refused, not queued a second time.
    with pytest.raises(TrainerBadRequest, match="already used"):
        queue.submit(1, store.create("fwd"), lambda: Outcome(json={}), "fwd")
    # An unsequenced op (hotloop's raw save_weights_for_sampler) runs after the running one.
    raw = store.create("save")
    queue.submit(None, raw, lambda: Outcome(json={"op": "raw"}), "save")
    release.set()
    try:
        assert await store.wait(first, 5) == Outcome(json={"op": 1})
        assert await store.wait(raw, 5) == Outcome(json={"op": "raw"})
        assert queue.next_seq_id == 2
    finally:
        await queue.close()
        executor.shutdown(wait=True)


async def test_close_resolves_the_op_that_was_running() -> None:
    store = FutureStore(60.0, 60.0)
    executor = ThreadPoolExecutor(1)
    queue = OrderedQueue("m", store, executor, gap_timeout_s=30.0)
    started, release = threading.Event(), threading.Event()

    def slow() -> Outcome:
        started.set()
        release.wait(10)
        return Outcome(json={})

    running, queued = store.create("fwd"), store.create("fwd")
    queue.submit(1, running, slow, "fwd")
    queue.submit(2, queued, lambda: Outcome(json={}), "fwd")
    assert await asyncio.to_thread(started.wait, 10)
    assert queue.busy
    await queue.close("session s is finished")
    release.set()
    executor.shutdown(wait=True)
    for rid in (running, queued):
        assert await store.wait(rid, 1) == Outcome.error("session s is finished", "server")
