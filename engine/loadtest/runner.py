"""The load generator: one cell (one load level) at a time, on one asyncio loop.

Open loop: a dispatcher sleeps until each precomputed intended start and spawns the request as a
task; it never waits for a slot, so a slow server cannot slow the schedule down, and each
request's latency counts from its intended start. The gap between intended and actual send is the
dispatch lag: the client's own backlog, reported so a client bottleneck cannot pass for a server one.

Closed loop (fixed concurrency, adaptive): a dispatcher acquires a slot from the concurrency
controller (engine.sampling's controllers), spawns the request, and releases the slot with the
server's metrics when it ends; latency counts from the send, which is what a closed loop measures.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp

from engine.errors import HotloopError
from engine.loadtest.client import PreparedRequest, Target, is_fatal, prepare, stream_one
from engine.loadtest.metrics import RequestRecord
from engine.loadtest.prompts import Prompt
from engine.loadtest.schedules import AdaptiveLoad, ClosedLoop, LoadSpec, OpenLoop, intended_offsets
from engine.log import get_logger


class RunAborted(HotloopError):
    """The run stopped early because the target cannot serve it (the message says why)."""


class Controller(Protocol):
    @property
    def window_size(self) -> int: ...

    async def acquire(self) -> None: ...

    def release(self, metrics: Any = None) -> None: ...


def make_controller(load: ClosedLoop | AdaptiveLoad) -> Controller:
    from engine.sampling import AdaptiveConcurrencyController, FixedConcurrencyController

    if isinstance(load, ClosedLoop):
        return FixedConcurrencyController(load.concurrency)
    return AdaptiveConcurrencyController(
        initial_window=load.initial_window,
        min_window=load.min_window,
        max_window=load.max_window,
        prefill_queue_target=load.prefill_queue_target,
        adjustment_interval=load.adjustment_interval,
    )


@dataclass
class AbortPolicy:
    """Stop a run that cannot succeed: the first ``first_failures`` requests all failed fatally,
    or ``consecutive`` fatal failures in a row later on (the server went away)."""

    first_failures: int = 5
    consecutive: int = 50
    _ok: int = 0
    _streak: int = 0
    reason: str | None = None

    def observe(self, rec: RequestRecord) -> str | None:
        if rec.ok:
            self._ok += 1
            self._streak = 0
            return None
        if not is_fatal(rec):
            self._streak = 0
            return None
        self._streak += 1
        limit = self.first_failures if self._ok == 0 else self.consecutive
        if self.reason is None and self._streak >= limit:
            self.reason = f"{self._streak} requests in a row failed ({rec.error_kind}): {rec.error}"
            hint = _hint(rec)
            if hint:
                self.reason += f" — {hint}"
        return self.reason


def _hint(rec: RequestRecord) -> str | None:
    """What the user most likely got wrong, by failure kind."""
    if rec.error_kind == "connection":
        return "is the server running and is --url right?"
    if rec.http_status in (401, 403):
        return "check --api-key-env (the key is missing, wrong or lacks access)"
    if rec.http_status == 404:
        return "check --model and --endpoint (vLLM/SGLang serve /v1/completions)"
    if rec.http_status in (400, 422):
        return "the server rejected the request body: check --model, --extra-body and the prompts"
    return None


@dataclass
class CellResult:
    label: str
    load: LoadSpec
    records: list[RequestRecord] = field(default_factory=list)
    window_series: list[tuple[float, int, int]] = field(default_factory=list)
    aborted: str | None = None
    started_wall: float = 0.0
    planned: int | None = None


@dataclass
class CellRunner:
    """Runs one cell. ``on_record`` sees every finished request (progress display, JSONL writer)."""

    session: aiohttp.ClientSession
    target: Target
    prompts: Sequence[Prompt]
    max_requests: int | None
    duration_s: float | None
    drain_timeout_s: float = 60.0
    on_record: Callable[[RequestRecord], None] | None = None
    abort_policy: Callable[[], AbortPolicy] = AbortPolicy
    clock: Callable[[], float] = time.perf_counter
    _prepared: list[PreparedRequest] | None = field(default=None, init=False, repr=False)

    async def run(
        self, load: LoadSpec, label: str | None = None, index_base: int = 0, result: CellResult | None = None
    ) -> CellResult:
        """Run one cell. Pass ``result`` to keep what was measured if the run is cancelled."""
        if result is None:
            result = CellResult(label=label or load.label, load=load)
        result.started_wall = time.time()
        policy = self.abort_policy()
        stop = asyncio.Event()
        tasks: set[asyncio.Task[None]] = set()
        in_flight = 0
        t0 = self.clock()
        controller: Controller | None = None

        if self._prepared is None:
            self._prepared = prepare(self.target, self.prompts)
        prepared = self._prepared

        async def one(rec: RequestRecord, prompt: PreparedRequest) -> None:
            nonlocal in_flight
            metrics: Any = None
            in_flight += 1
            rec.in_flight = in_flight
            try:
                metrics = await stream_one(self.session, self.target, prompt, rec, t0, self.clock)
            except asyncio.CancelledError:
                rec.error_kind, rec.error = "cancelled", "still running when the run ended"
                rec.end_s = self.clock() - t0
                raise
            finally:
                in_flight -= 1
                if controller is not None:
                    controller.release(metrics)
                    result.window_series.append((self.clock() - t0, controller.window_size, in_flight))
                result.records.append(rec)
                if policy.observe(rec) and not stop.is_set():
                    result.aborted = policy.reason
                    stop.set()
                if self.on_record is not None:
                    self.on_record(rec)

        def spawn(i: int, intended: float | None) -> None:
            prompt = prepared[(index_base + i) % len(prepared)]
            rec = RequestRecord(index=index_base + i, cell=result.label, sent_s=0.0, intended_s=intended)
            if controller is not None:
                rec.window = controller.window_size
            task = asyncio.create_task(one(rec, prompt))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        try:
            if isinstance(load, OpenLoop):
                offsets = intended_offsets(load, max_requests=self.max_requests, duration_s=self.duration_s)
                result.planned = len(offsets)
                for i, off in enumerate(offsets):
                    delay = t0 + off - self.clock()
                    if 0 < delay <= 0.25:
                        await asyncio.sleep(delay)  # the common case: one timer, no extra future
                    elif delay > 0:  # a long gap: wake at once on abort
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), delay)
                    if stop.is_set():
                        break
                    spawn(i, off)
            else:
                controller = make_controller(load)
                result.planned = self.max_requests
                result.window_series.append((0.0, controller.window_size, 0))
                deadline = None if self.duration_s is None else t0 + self.duration_s
                i = 0
                while not stop.is_set() and (self.max_requests is None or i < self.max_requests):
                    remaining = None if deadline is None else deadline - self.clock()
                    if remaining is not None and remaining <= 0:
                        break
                    # fast path without a timer when a slot is free (one timer per request adds up)
                    if not (hasattr(controller, "try_acquire") and controller.try_acquire()):
                        try:
                            async with asyncio.timeout(remaining):
                                await controller.acquire()
                        except TimeoutError:
                            break
                    if stop.is_set():
                        controller.release(None)
                        break
                    spawn(i, None)
                    i += 1
            await self._drain(tasks)
        finally:
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
        result.records.sort(key=lambda r: r.index)
        if result.aborted:
            # looked up at use: a bound logger keeps the stderr of the moment it was made
            get_logger("loadtest.runner").warning(
                "loadtest.cell_aborted", cell=result.label, reason=result.aborted
            )
        return result

    async def _drain(self, tasks: set[asyncio.Task[None]]) -> None:
        """Wait for in-flight requests; those still running after the drain timeout get cancelled."""
        if not tasks:
            return
        _done, pending = await asyncio.wait(set(tasks), timeout=self.drain_timeout_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)


def new_session(limit: int = 0) -> aiohttp.ClientSession:
    """A session for load generation: no connection cap by default (an aiohttp cap of 100 would
    silently become the load's ceiling, gpustack#2324) and a large read buffer (vllm#39963)."""
    connector = aiohttp.TCPConnector(limit=limit, ttl_dns_cache=300)
    return aiohttp.ClientSession(
        connector=connector, read_bufsize=2**20, timeout=aiohttp.ClientTimeout(total=None)
    )
