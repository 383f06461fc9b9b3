"""A resizable admission gate with shrink debt, usable from any number of event loops and threads.

Why not ``asyncio.Semaphore``: a semaphore binds to the loop that first waits on it (the trainer's
background loop and the sampler's loop are often different), and shrinking it can only take permits
that are free, so a shrink while every slot is busy is silently lost (Fireworks 1.2.0's bug).

Here a ``threading.Lock`` guards plain counters, each waiter parks on a future of *its own* running
loop, and grants are delivered with ``loop.call_soon_threadsafe``. A shrink first takes free permits and
records the rest as debt; each release pays one unit of debt instead of freeing a slot. Invariant
(checked by the property tests): ``in_flight + available - debt == window``, all three counters >= 0,
so once the debt is paid ``in_flight <= window``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque

from engine.errors import ConfigError


class _Waiter:
    __slots__ = ("fut", "granted", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.fut: asyncio.Future[None] = loop.create_future()
        self.granted = False


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class AdmissionGate:
    """FIFO counting gate: ``acquire`` admits while a permit is free, ``release`` returns or pays debt."""

    def __init__(self, window: int) -> None:
        if window < 1:
            raise ConfigError(f"window must be >= 1, got {window}")
        self._lock = threading.Lock()
        self._window = window
        self._available = window
        self._in_flight = 0
        self._debt = 0
        self._waiters: deque[_Waiter] = deque()

    @property
    def window(self) -> int:
        return self._window

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def debt(self) -> int:
        return self._debt

    @property
    def available(self) -> int:
        return self._available

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def try_acquire(self) -> bool:
        """Take a permit now if one is free and nobody queues ahead; never blocks."""
        with self._lock:
            if self._available > 0 and not self._waiters:
                self._available -= 1
                self._in_flight += 1
                return True
            return False

    async def acquire(self) -> None:
        """Wait (FIFO) for a permit. Cancellation while waiting leaves the gate as it was."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._available > 0 and not self._waiters:
                self._available -= 1
                self._in_flight += 1
                return
            waiter = _Waiter(loop)
            self._waiters.append(waiter)
        try:
            await waiter.fut
        except BaseException:
            with self._lock:
                granted = waiter.granted
                if not granted:
                    with contextlib.suppress(ValueError):
                        self._waiters.remove(waiter)
            if granted:
                # The permit arrived as we were cancelled: hand it on, nobody will use it here.
                self.release()
            raise

    def release(self) -> None:
        """End one admitted attempt: pay one unit of shrink debt, else free its permit."""
        with self._lock:
            if self._in_flight <= 0:
                raise RuntimeError("AdmissionGate.release() without a matching acquire()")
            self._in_flight -= 1
            if self._debt > 0:
                self._debt -= 1
            else:
                self._available += 1
            woken = self._grant_locked()
        self._notify(woken)

    def resize(self, window: int) -> None:
        """Set the window. Growth pays debt first; a shrink takes free permits, the rest becomes debt."""
        if window < 1:
            raise ConfigError(f"window must be >= 1, got {window}")
        with self._lock:
            delta = window - self._window
            self._window = window
            if delta > 0:
                paid = min(delta, self._debt)
                self._debt -= paid
                self._available += delta - paid
            elif delta < 0:
                taken = min(-delta, self._available)
                self._available -= taken
                self._debt += -delta - taken
            woken = self._grant_locked()
        self._notify(woken)

    def _grant_locked(self) -> list[_Waiter]:
        woken: list[_Waiter] = []
        while self._available > 0 and self._waiters:
            waiter = self._waiters.popleft()
            if waiter.fut.cancelled():
                continue
            self._available -= 1
            self._in_flight += 1
            waiter.granted = True
            woken.append(waiter)
        return woken

    def _notify(self, woken: list[_Waiter]) -> None:
        for waiter in woken:
            try:
                waiter.loop.call_soon_threadsafe(_resolve, waiter.fut)
            except RuntimeError:
                # Its loop is closed: the waiter can never run, so return the permit it was given.
                self.release()
