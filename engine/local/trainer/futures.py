"""Request-id futures: what ``retrieve_future`` long-polls.

Lives on the event loop (no locks): work is submitted, a result or an error is stored when the
compute finishes, and the client polls for it. A result is kept until it is delivered (plus a grace
period for a client whose response got lost) or until it expires; a dropped id answers 410, which
the tinker client treats as "promise expired" (samples are resubmitted), never 404 (fatal).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Literal

from engine.local.trainer.config import Gone, NotFound

ErrorCategory = Literal["user", "server", "unknown"]


@dataclass
class Outcome:
    """A finished request: JSON, or protobuf bytes (for types the client wants as proto)."""

    json: dict[str, Any] | None = None
    proto: bytes | None = None

    @classmethod
    def error(cls, message: str, category: ErrorCategory) -> Outcome:
        return cls(json={"error": message, "category": category})

    @property
    def is_error(self) -> bool:
        return self.json is not None and "error" in self.json


@dataclass
class _Entry:
    kind: str
    created: float
    done: asyncio.Event = field(default_factory=asyncio.Event)
    outcome: Outcome | None = None
    delivered_at: float | None = None


class FutureStore:
    def __init__(self, ttl_s: float, delivered_grace_s: float, max_remembered: int = 200_000) -> None:
        self._ttl_s = ttl_s
        self._grace_s = delivered_grace_s
        self._entries: dict[str, _Entry] = {}
        self._dropped: OrderedDict[str, None] = OrderedDict()
        self._max_remembered = max_remembered

    def __len__(self) -> int:
        return len(self._entries)

    def create(self, kind: str) -> str:
        request_id = f"{kind}-{uuid.uuid4().hex}"
        self._entries[request_id] = _Entry(kind=kind, created=time.monotonic())
        return request_id

    def resolve(self, request_id: str, outcome: Outcome) -> None:
        entry = self._entries.get(request_id)
        if entry is None or entry.outcome is not None:
            return
        entry.outcome = outcome
        entry.done.set()

    def is_done(self, request_id: str) -> bool:
        entry = self._entries.get(request_id)
        return entry is not None and entry.outcome is not None

    async def wait(self, request_id: str, timeout_s: float) -> Outcome | None:
        """The outcome, or None if still pending after ``timeout_s`` (the caller says try_again)."""
        entry = self._entries.get(request_id)
        if entry is None:
            if request_id in self._dropped:
                raise Gone(f"request {request_id} expired or was already delivered and dropped")
            raise NotFound(f"unknown request_id {request_id!r}")
        if entry.outcome is None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await entry.done.wait()
        if entry.outcome is None:
            return None
        if entry.delivered_at is None:
            entry.delivered_at = time.monotonic()
        return entry.outcome

    def sweep(self, now: float | None = None) -> int:
        """Drop expired and long-delivered entries; returns how many were dropped."""
        now = time.monotonic() if now is None else now
        dead = [
            rid
            for rid, e in self._entries.items()
            if (e.delivered_at is not None and now - e.delivered_at > self._grace_s)
            or (e.outcome is not None and e.delivered_at is None and now - e.created > self._ttl_s)
        ]
        for rid in dead:
            del self._entries[rid]
            self._dropped[rid] = None
        while len(self._dropped) > self._max_remembered:
            self._dropped.popitem(last=False)
        return len(dead)
