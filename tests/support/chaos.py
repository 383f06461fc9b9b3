"""Fault injection for tests and benchmarks: a proxy that breaks HTTP in the ways networks do, on a
seeded schedule, and helpers to kill a run's processes at seeded moments and watch their resources.

``FaultProxy`` is a small aiohttp server between the engine and one plane (the control plane's REST,
the trainer gateway, inference, hot-load): it forwards every request to ``upstream`` and, at the
n-th request that matches its filter, injects one ``Fault``:

- ``reset``: the connection is reset (TCP RST), before the request reaches the upstream or after the
  upstream answered (``upstream_first``: its work is done, the answer lost -- the adversarial case);
- ``stall``: the request waits ``stall_s`` before it is forwarded;
- ``truncate``: the answer is cut mid-way -- for an SSE stream, inside its first ``data:`` event --
  and the connection reset;
- ``status_5xx`` / ``status_429``: a 503 or 429 with ``Retry-After: 1``, without forwarding.

Each injection is recorded with the time it happened and the time the plane next answered a request
successfully (2xx, body complete): the seconds the plane took to recover. ``seeded_faults`` draws a
schedule from a seed, so a failing chaos test reproduces.

Process helpers read /proc (Linux): ``pids_with`` finds processes by their command line,
``resources`` reads a process's RSS and open file descriptors.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp
from aiohttp import web

FaultKind = Literal["reset", "stall", "truncate", "status_5xx", "status_429"]
KINDS: tuple[FaultKind, ...] = ("reset", "stall", "truncate", "status_5xx", "status_429")
_HOP = {"connection", "keep-alive", "transfer-encoding", "upgrade", "trailer", "te", "content-length", "host"}


@dataclass(frozen=True)
class Fault:
    kind: FaultKind
    at: int  # the n-th matching request of the proxy (1-based)
    stall_s: float = 2.0
    upstream_first: bool = False


@dataclass
class Injection:
    plane: str
    kind: FaultKind
    at: int
    path: str
    injected_at: float
    recovered_at: float | None = None

    @property
    def seconds_to_recover(self) -> float | None:
        return None if self.recovered_at is None else self.recovered_at - self.injected_at


def seeded_faults(
    seed: int,
    kinds: Sequence[FaultKind] = KINDS,
    *,
    first: int,
    last: int,
    stall_s: float = 2.0,
    min_gap: int = 3,
) -> list[Fault]:
    """One fault of each kind at distinct request numbers in [first, last], at least ``min_gap``
    apart (so each has its own recovery), in a seeded order."""
    rng = random.Random(seed)
    span = last - first - min_gap * (len(kinds) - 1)
    if span < len(kinds):
        raise ValueError(f"[{first}, {last}] is too narrow for {len(kinds)} faults {min_gap} apart")
    offsets = sorted(rng.sample(range(span), len(kinds)))
    order = list(kinds)
    rng.shuffle(order)
    return [
        Fault(kind, first + off + i * min_gap, stall_s=stall_s, upstream_first=rng.random() < 0.5)
        for i, (kind, off) in enumerate(zip(order, offsets, strict=True))
    ]


def _reset(request: web.Request) -> None:
    """Drop the client's connection with a TCP RST (SO_LINGER 0), as a dying peer or middlebox does."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def _cut(chunk: bytes) -> bytes:
    """The part of a response chunk to let through: for SSE, up to the middle of its first event."""
    start = chunk.find(b"data:")
    if start < 0:
        return chunk[: max(1, len(chunk) // 2)]
    end = chunk.find(b"\n\n", start)
    end = len(chunk) if end < 0 else end
    return chunk[: start + max(6, (end - start) // 2)]


class FaultProxy:
    """``url = await proxy.start()``; requests to ``url`` go to ``upstream``, some of them broken."""

    def __init__(
        self,
        plane: str,
        upstream: str,
        faults: Sequence[Fault] = (),
        *,
        match: Callable[[str, str], bool] = lambda method, path: True,
    ) -> None:
        self.plane = plane
        self.upstream = upstream.rstrip("/")
        self.match = match
        self._due: dict[int, Fault] = {f.at: f for f in faults}
        self.matched = 0
        self.forwarded = 0
        self.injections: list[Injection] = []
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.url = ""

    def add(self, fault: Fault) -> None:
        self._due[fault.at] = fault

    @property
    def pending(self) -> int:
        """Faults not injected yet."""
        return len(self._due)

    async def start(self) -> str:
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10), auto_decompress=False
        )
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def _recovered(self, number: int) -> None:
        """Request ``number`` (0: unmatched) succeeded: the plane answers again for every injection
        made before that request arrived (a stalled request recovers when it is answered itself)."""
        now = time.monotonic()
        for inj in self.injections:
            if inj.recovered_at is None and (number > inj.at or (number == inj.at and inj.kind == "stall")):
                inj.recovered_at = now

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        fault, number = None, 0
        if self.match(request.method, request.path):
            self.matched += 1
            number = self.matched
            fault = self._due.pop(number, None)
        if fault is not None:
            self.injections.append(
                Injection(self.plane, fault.kind, self.matched, request.path, time.monotonic())
            )
            if fault.kind in ("status_5xx", "status_429"):
                status = 503 if fault.kind == "status_5xx" else 429
                message = {"error": {"code": status, "message": f"injected {fault.kind} by the chaos proxy"}}
                return web.json_response(message, status=status, headers={"Retry-After": "1"})
            if fault.kind == "stall":
                await asyncio.sleep(fault.stall_s)
            if fault.kind == "reset" and not fault.upstream_first:
                _reset(request)
                return web.Response(status=599)  # never sent: the connection is gone
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        url = self.upstream + request.rel_url.path_qs
        async with self._session.request(
            request.method, url, headers=headers, data=body or None, allow_redirects=False
        ) as upstream:
            if fault is not None and fault.kind == "reset":  # upstream_first: the answer is lost
                await upstream.read()
                _reset(request)
                return web.Response(status=599)
            out = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP}
            response = web.StreamResponse(status=upstream.status, headers=out)
            try:
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    if fault is not None and fault.kind == "truncate":
                        await response.write(_cut(chunk))
                        _reset(request)
                        return response
                    await response.write(chunk)
                if fault is not None and fault.kind == "truncate":  # an empty body: cut it at the end
                    _reset(request)
                    return response
                await response.write_eof()
            except (ConnectionError, aiohttp.ClientConnectionResetError):
                return response  # the client went away (it gave up on this attempt): not our fault
        self.forwarded += 1
        if 200 <= upstream.status < 300 and number:
            self._recovered(number)
        return response


# ---- processes ------------------------------------------------------------------------------------


def pids_with(*needles: str) -> list[int]:
    """Processes whose command line contains every needle (this user's, read from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if all(n in cmdline for n in needles):
            found.append(int(entry.name))
    return sorted(found)


@dataclass(frozen=True)
class Resources:
    rss_bytes: int
    open_fds: int


def resources(pid: int) -> Resources | None:
    """RSS and open file descriptors of a process (None once it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    rss = next((int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return Resources(rss, fds)


def step_rows(run_dir: Path) -> list[dict[str, Any]]:
    """The step rows of a run's metrics.jsonl so far (a torn last line is not a row)."""
    try:
        lines = (run_dir / "metrics.jsonl").read_text().split("\n")[:-1]
    except OSError:
        return []
    rows = []
    for line in lines:
        with contextlib.suppress(ValueError):
            row = json.loads(line)
            if row.get("kind") == "step":
                rows.append(row)
    return rows


async def wait_for_step(run_dir: Path, step: int, *, timeout_s: float, poll_s: float = 0.1) -> None:
    """Until the run committed ``step`` (bounded: a run that never gets there fails the caller)."""
    async with asyncio.timeout(timeout_s):
        while not any(r["step"] >= step for r in step_rows(run_dir)):  # noqa: ASYNC110  # a file, no event
            await asyncio.sleep(poll_s)


@dataclass
class SeededMoments:
    """Seeded moments to strike: a step to wait for, then a delay into the next one (so a kill lands
    inside a state, not at its boundary)."""

    seed: int
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def pick(self, lo: int, hi: int, *, max_delay_s: float = 1.2) -> tuple[int, float]:
        return self.rng.randint(lo, hi), round(self.rng.uniform(0.0, max_delay_s), 3)


def repeated_lines(output: str, *, ignore: Sequence[str] = ("timestamp",)) -> list[tuple[int, str]]:
    """Lines of a run's output that repeat, most repeated first: (count, line); JSON lines compare
    without their ``ignore`` fields."""
    counts: dict[str, int] = {}
    for raw in output.splitlines():
        line = raw.strip()
        if not line:
            continue
        try:
            data = json.loads(line)
        except ValueError:
            key = line
        else:
            key = (
                json.dumps({k: v for k, v in data.items() if k not in ignore}, sort_keys=True)
                if isinstance(data, dict)
                else line
            )
        counts[key] = counts.get(key, 0) + 1
    return sorted(((n, k) for k, n in counts.items() if n > 1), reverse=True)
