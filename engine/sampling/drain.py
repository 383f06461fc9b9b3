"""``DrainGate``: lets a hot-load happen between sampling attempts, never during one.

A deployment that does not name the weights of each completion (vLLM 0.32, Fireworks) can only be
hot-loaded while rollouts are being sampled if no attempt straddles the load. ``draining()`` closes
the gate (attempts not yet admitted wait), waits until the attempts in flight have finished
(bounded), runs the caller's block (the hot-load), then opens a new *epoch* and lets the waiting
attempts in. Every attempt is admitted in one epoch and finishes in it, so an attempt's epoch,
together with what the run verified the deployment served in that epoch, names the weights that
generated it.

One event loop; not thread-safe. Drains are serialized (one at a time).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from engine.errors import ConfigError, StuckError


class DrainGate:
    def __init__(self) -> None:
        self.epoch = 0
        self.in_flight = 0
        self.drains = 0
        self.waited = 0  # drains that found attempts in flight and waited for them
        self._open = asyncio.Event()
        self._open.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._lock = asyncio.Lock()

    @property
    def closed(self) -> bool:
        return not self._open.is_set()

    async def enter(self, timeout_s: float) -> int:
        """Admit one attempt (waiting, bounded, while a drain is under way); returns its epoch."""
        if self.closed:
            try:
                async with asyncio.timeout(timeout_s):
                    while self.closed:
                        await self._open.wait()
            except TimeoutError as exc:
                raise StuckError(
                    f"a sampling attempt waited {timeout_s:g}s for a hot-load drain to end"
                ) from exc
        self.in_flight += 1
        self._idle.clear()
        return self.epoch

    def leave(self) -> None:
        """One admitted attempt ended (success, error or cancellation)."""
        if self.in_flight <= 0:
            raise RuntimeError("DrainGate.leave() without a matching enter()")
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    @contextlib.asynccontextmanager
    async def draining(self, timeout_s: float) -> AsyncIterator[int]:
        """Close, wait until no attempt is in flight, yield the epoch that ends, open the next one.

        The next epoch opens however the block ends: if the block raised, what the deployment serves
        in it is for the caller to find out (a run fails on a failed hot-load anyway).
        """
        if timeout_s <= 0:
            raise ConfigError(f"timeout_s must be > 0, got {timeout_s}")
        async with self._lock:
            self._open.clear()
            self.waited += self.in_flight > 0
            try:
                try:
                    async with asyncio.timeout(timeout_s):
                        await self._idle.wait()
                except TimeoutError as exc:
                    raise StuckError(
                        f"{self.in_flight} sampling attempts were still in flight {timeout_s:g}s after "
                        "the sampler stopped admitting new ones for a hot-load (drain)"
                    ) from exc
                self.drains += 1
                yield self.epoch
            finally:
                self.epoch += 1
                self._open.set()
