"""Strict seq_id ordering of one model's training requests, and their execution off the loop.

Policy for a skipped seq_id: a request ahead of the next expected seq_id is *held* (the client's
parallel fwd/bwd chunks legitimately arrive out of order). If the gap is not filled within
``gap_timeout_s``, every held request fails with a clear user error naming the missing seq_ids, and
ordering resumes after the highest failed one. At most ``SEQ_WINDOW`` seq_ids ahead are held (and
as many unsequenced requests queued): further ahead is a 429, retried once the window has moved.
A seq_id already used (or already queued) is rejected at once with a 400. A request without a
seq_id (hotloop's own raw calls, e.g. a save_weights_for_sampler carrying checkpoint_type) consumes
no seq_id: it runs after every
sequenced request submitted before it, so it never collides with the official client's numbering.
Each op runs on the model's single worker thread, so compute never runs on the event loop and two
ops of one model never overlap.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from engine.local.trainer.config import TrainerBadRequest
from engine.local.trainer.futures import FutureStore, Outcome
from engine.local.trainer.limits import SEQ_WINDOW, Backlogged
from engine.local.trainer.logs import LazyLogger

log = LazyLogger("trainer.ordering")


@dataclass
class _Op:
    seq_id: int | None
    request_id: str
    fn: Callable[[], Outcome]
    label: str


class OrderedQueue:
    def __init__(
        self,
        name: str,
        store: FutureStore,
        executor: ThreadPoolExecutor,
        gap_timeout_s: float,
        first_seq_id: int = 1,
    ) -> None:
        self.name = name
        self.next_seq_id = first_seq_id
        self._store = store
        self._executor = executor
        self._gap_timeout_s = gap_timeout_s
        self._pending: dict[int, _Op] = {}
        # Unsequenced ops, by the seq_id after which they run.
        self._after: dict[int, list[_Op]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._running: _Op | None = None

    @property
    def busy(self) -> bool:
        return self._running is not None

    def submit(self, seq_id: int | None, request_id: str, fn: Callable[[], Outcome], label: str) -> None:
        if seq_id is None:
            if sum(len(ops) for ops in self._after.values()) >= SEQ_WINDOW:
                raise Backlogged(f"model {self.name} already queues {SEQ_WINDOW} unsequenced requests")
            anchor = max([self.next_seq_id - 1, *self._pending])
            self._after.setdefault(anchor, []).append(_Op(None, request_id, fn, label))
        elif seq_id < self.next_seq_id or seq_id in self._pending:
            raise TrainerBadRequest(
                f"seq_id {seq_id} for model {self.name} was already used; the next expected seq_id is "
                f"{self.next_seq_id}"
            )
        elif seq_id >= self.next_seq_id + SEQ_WINDOW:
            # Held requests pin their payloads: the next expected seq_id always fits, so a client
            # retrying this later (429) cannot deadlock the order.
            raise Backlogged(
                f"seq_id {seq_id} for model {self.name} is more than {SEQ_WINDOW} ahead of the next "
                f"expected seq_id {self.next_seq_id}; retry once the earlier ones arrive"
            )
        else:
            self._pending[seq_id] = _Op(seq_id, request_id, fn, label)
        self._idle.clear()
        self._wake.set()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"model-queue:{self.name}")

    async def wait_idle(self) -> None:
        """Until nothing is queued or running."""
        await self._idle.wait()

    async def close(self, reason: str = "the trainer is shutting down") -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        # The op that was running when cancelled finishes on its thread, but nobody would resolve it.
        left = [self._running] if self._running is not None else []
        self._running = None
        left += [self._pending.pop(seq) for seq in sorted(self._pending)]
        left += [op for anchor in sorted(self._after) for op in self._after.pop(anchor)]
        for op in left:
            self._store.resolve(op.request_id, Outcome.error(reason, "server"))

    def _ready(self) -> _Op | None:
        after = self._after.get(self.next_seq_id - 1)
        if after:
            op = after.pop(0)
            if not after:
                del self._after[self.next_seq_id - 1]
            return op
        sequenced = self._pending.pop(self.next_seq_id, None)
        if sequenced is not None:
            # Advance now, not when it finishes: while it runs, a retry of its seq_id must be refused
            # and an unsequenced op must anchor after it (anchored before it, it would never run).
            self.next_seq_id += 1
        return sequenced

    async def _next(self) -> _Op | None:
        while (op := self._ready()) is None:
            self._wake.clear()
            if not self._pending:
                await self._wake.wait()
                continue
            try:
                async with asyncio.timeout(self._gap_timeout_s):
                    await self._wake.wait()
            except TimeoutError:
                self._fail_gap()
                return None
        return op

    def _fail_gap(self) -> None:
        held = sorted(self._pending)
        missing = describe_missing(self.next_seq_id, held)
        shown = str(held) if len(held) <= 10 else f"[{held[0]}, ... {held[-1]}] ({len(held)} requests)"
        message = (
            f"seq_id(s) {missing} of model {self.name} never arrived within {self._gap_timeout_s:g}s; "
            f"requests {shown} were held waiting for them and are rejected (seq_ids must be consecutive)"
        )
        log.warning("seq_gap", model_id=self.name, missing=missing, held=shown)
        for seq in held:
            self._store.resolve(self._pending.pop(seq).request_id, Outcome.error(message, "user"))
        self.next_seq_id = held[-1] + 1
        # Unsequenced ops waiting behind the failed ones now run.
        stranded = [
            op for anchor in sorted(self._after) if anchor < held[-1] for op in self._after.pop(anchor)
        ]
        self._after[held[-1]] = stranded + self._after.get(held[-1], [])
        if not self._after[held[-1]]:
            del self._after[held[-1]]
        if not self._after:
            self._idle.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            op = await self._next()
            if op is None:
                continue
            self._running = op
            start = time.perf_counter()
            outcome = await loop.run_in_executor(self._executor, _guarded, op)
            self._running = None
            log.debug(
                "op_done",
                model_id=self.name,
                op=op.label,
                seq_id=op.seq_id,
                seconds=round(time.perf_counter() - start, 4),
                error=outcome.is_error,
            )
            self._store.resolve(op.request_id, outcome)
            if not self._pending and not self._after:
                self._idle.set()


def describe_missing(first: int, held: list[int], most: int = 10) -> str:
    """The ids in [first, held[-1]) not in ``held`` (sorted): as a list when few, else as ranges.

    Walks the held ids only, never the gap, so its cost does not depend on how large the gap is."""
    ranges: list[tuple[int, int]] = []
    expected = first
    for s in held:
        if s > expected:
            ranges.append((expected, s - 1))
        expected = s + 1
    if sum(b - a + 1 for a, b in ranges) <= most:
        return str([i for a, b in ranges for i in range(a, b + 1)])
    parts = [str(a) if a == b else f"{a}..{b}" for a, b in ranges[:most]]
    if len(ranges) > most:
        parts.append(f"and {len(ranges) - most} more ranges")
    return f"[{', '.join(parts)}]"


def _guarded(op: _Op) -> Outcome:
    try:
        return op.fn()
    except TrainerBadRequest as exc:
        return Outcome.error(str(exc), "user")
    except Exception as exc:  # a server bug must fail this request, not the queue
        log.exception("op_failed", op=op.label, seq_id=op.seq_id)
        return Outcome.error(f"{op.label} failed: {type(exc).__name__}: {exc}", "server")


def run_guarded(fn: Callable[[], Any], label: str) -> Callable[[], Outcome]:
    """Wrap a blocking function returning an Outcome so errors become error outcomes."""

    def call() -> Outcome:
        return _guarded(_Op(0, "", fn, label))

    return call
