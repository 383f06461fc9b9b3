"""The aiohttp edge shared by the three embedded servers: limits, body reading, auth, head checks.

Each server builds its app with :func:`new_app` and runs it with :func:`make_runner` and
:func:`start_site`, so the same limits hold everywhere:

* a new connection must finish its request head within ``header_timeout_s`` (slowloris guard), an
  idle keep-alive connection is closed after ``idle_timeout_s``;
* at most ``max_connections`` connections are open, kept below the process's descriptor limit: at
  the cap the oldest connection with no request in progress is closed, else the new one, so
  ``accept()`` does not run out of descriptors (and is not allowed to flood the log if it does);
* a body must arrive within ``body_timeout_s`` and decode (gzip, deflate, zstd) to at most
  ``max_body_bytes``, whatever its headers or frame say;
* a client that disconnects cancels its handler (upstream work stops with it);
* header bytes that are not UTF-8 are a 400 naming the header, and keys compare in constant time on
  bytes, so no header can make a handler fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import resource
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from engine.local.inputs import BadInput, decompress, parse_json_object
from engine.log import get_logger

log = get_logger("local.http")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Bodies above this are decompressed and parsed on a worker thread, not on the event loop.
OFF_LOOP_BYTES = 256 * 1024
# Descriptors kept free for everything that is not a connection (model files, logs, pipes, threads).
FD_RESERVE = 64


@dataclass(frozen=True)
class ServerLimits:
    max_body_bytes: int
    max_connections: int = 512
    header_timeout_s: float = 10.0
    idle_timeout_s: float = 30.0
    body_timeout_s: float = 120.0
    max_header_bytes: int = 8190  # per request line and per header field (aiohttp's own limit)
    max_headers: int = 100
    # Listen queue, and how many connections the loop accepts per wake-up: excess connections are
    # closed a loop turn after they are accepted, so up to two batches sit above the cap. (Below
    # aiohttp's 128, sequential connects stall for a SYN retry every backlog-odd connections.)
    backlog: int = 128


LIMITS: web.AppKey[ServerLimits] = web.AppKey("hotloop_limits", ServerLimits)


def new_app(limits: ServerLimits, middlewares: Iterable[Any] = ()) -> web.Application:
    app = web.Application(client_max_size=limits.max_body_bytes, middlewares=list(middlewares))
    app[LIMITS] = limits
    return app


def make_runner(app: web.Application, **overrides: Any) -> web.AppRunner:
    """An AppRunner with the app's limits; ``overrides`` for the few per-server settings."""
    limits = app[LIMITS]
    settings: dict[str, Any] = {
        "access_log": None,
        "handle_signals": False,
        "handler_cancellation": True,
        # Bodies are decoded by read_body, with a bound on the output (aiohttp's depends on version).
        "auto_decompress": False,
        "keepalive_timeout": limits.idle_timeout_s,
        "max_line_size": limits.max_header_bytes,
        "max_field_size": limits.max_header_bytes,
        "max_headers": limits.max_headers,
    }
    return web.AppRunner(app, **{**settings, **overrides})


async def start_site(runner: web.AppRunner, host: str, port: int) -> int:
    """Guard the runner's connections and listen; returns the bound port. ``runner`` is set up."""
    server = runner.server
    assert server is not None, "runner.setup() first"
    limits = runner.app[LIMITS]
    cap = effective_max_connections(limits.max_connections, limits.backlog)
    ConnectionGuard(server, cap, limits.header_timeout_s)
    _quiet_accept_errors()
    site = web.TCPSite(runner, host, port, backlog=limits.backlog)
    await site.start()
    bound = int(runner.addresses[-1][1])
    log.debug("listening", port=bound, max_connections=cap, max_body_bytes=limits.max_body_bytes)
    return bound


def effective_max_connections(wanted: int, backlog: int) -> int:
    """``wanted``, but low enough that connections never exhaust the descriptor limit (raised to
    the hard limit first): room is kept for other files and for two accept batches in flight."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return max(8, min(wanted, soft - FD_RESERVE - 2 * backlog))


@dataclass
class _Conn:
    transport: asyncio.Transport
    active: int = 0
    requests: int = 0
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)


class ConnectionGuard:
    """Connection cap and head timeout for one aiohttp ``web.Server``.

    It wraps the server's ``connection_made``/``connection_lost`` hooks (called by every protocol
    instance with its transport) and its request handler (to know which connections are busy).
    """

    def __init__(self, server: web.Server, max_connections: int, header_timeout_s: float) -> None:
        self.max_connections = max_connections
        self.header_timeout_s = header_timeout_s
        self.conns: dict[Any, _Conn] = {}
        self.evicted = 0
        self._made = server.connection_made
        self._lost = server.connection_lost
        self._handle = server.request_handler
        server.connection_made = self._connection_made  # type: ignore[method-assign]
        server.connection_lost = self._connection_lost  # type: ignore[method-assign]
        server.request_handler = self._request

    def _connection_made(self, handler: Any, transport: asyncio.Transport) -> None:
        self._made(handler, transport)
        loop = asyncio.get_running_loop()
        conn = _Conn(transport)
        conn.timer = loop.call_later(self.header_timeout_s, self._head_timeout, handler)
        self.conns[handler] = conn
        if len(self.conns) > self.max_connections:
            # Dicts keep insertion order: the first idle entry is the oldest idle connection.
            victim = next((h for h, c in self.conns.items() if c.active == 0 and h is not handler), handler)
            gone = self.conns.pop(victim)  # now, not at connection_lost: the close lands a turn later
            if gone.timer is not None:
                gone.timer.cancel()
            self.evicted += 1
            gone.transport.abort()

    def _connection_lost(self, handler: Any, exc: BaseException | None = None) -> None:
        conn = self.conns.pop(handler, None)
        if conn is not None and conn.timer is not None:
            conn.timer.cancel()
        self._lost(handler, exc)

    def _head_timeout(self, handler: Any) -> None:
        conn = self.conns.get(handler)
        if conn is not None and conn.requests == 0:
            conn.transport.abort()  # no complete request head in time: a stalled or idle opener

    async def _request(self, request: web.BaseRequest) -> web.StreamResponse:
        conn = self.conns.get(request.protocol)
        if conn is None:
            return await self._handle(request)
        if conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None
        conn.active += 1
        conn.requests += 1
        try:
            return await self._handle(request)
        finally:
            conn.active -= 1


class _RateLimited(logging.Filter):
    """Lets one 'accept() out of system resource' record through per minute."""

    def __init__(self) -> None:
        super().__init__()
        self._last = 0.0

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("socket.accept() out of system resource"):
            return True
        now = time.monotonic()
        if now - self._last < 60:
            return False
        self._last = now
        return True


def _quiet_accept_errors() -> None:
    logger = logging.getLogger("asyncio")
    if not any(isinstance(f, _RateLimited) for f in logger.filters):
        logger.addFilter(_RateLimited())


# ------------------------------------------------------------------------------ request edge


def check_head(request: web.BaseRequest) -> None:
    """Header values must be UTF-8 (aiohttp keeps other bytes as surrogates, which fail later)."""
    for name, value in request.headers.items():
        try:
            name.encode("utf-8")
            value.encode("utf-8")
        except UnicodeEncodeError:
            shown = name.encode("utf-8", "surrogateescape").decode("ascii", "replace")[:60]
            raise BadInput(400, f"header {shown}", "is not valid UTF-8") from None


def key_matches(presented: str, expected: str) -> bool:
    """Constant-time comparison that cannot fail on odd bytes."""
    return hmac.compare_digest(
        presented.encode("utf-8", "surrogateescape"), expected.encode("utf-8", "surrogateescape")
    )


async def read_body(request: web.Request) -> bytes:
    """The decoded body: bounded in time (408), in size before and after decoding (413)."""
    limits = request.app[LIMITS]
    encoding = request.headers.get("Content-Encoding", "identity")
    if request.content_length is not None and request.content_length > limits.max_body_bytes:
        raise BadInput(
            413, "body", f"{request.content_length} bytes exceed the limit of {limits.max_body_bytes} bytes"
        )
    try:
        async with asyncio.timeout(limits.body_timeout_s):
            raw = await request.read()
    except TimeoutError:
        raise BadInput(408, "body", f"did not arrive within {limits.body_timeout_s:g}s") from None
    except web.HTTPRequestEntityTooLarge:
        raise BadInput(413, "body", f"exceeds the limit of {limits.max_body_bytes} bytes") from None
    if encoding.strip().lower() in ("", "identity"):
        return raw
    # Off the loop whatever the input size: a few kilobytes of frame can expand to the limit.
    return await asyncio.to_thread(decompress, raw, encoding, limits.max_body_bytes)


async def read_json(request: web.Request, max_bytes: int | None = None) -> dict[str, Any]:
    """The body as a strict JSON object (see ``inputs.parse_json``); large ones parse off the loop."""
    raw = await read_body(request)
    if max_bytes is not None and len(raw) > max_bytes:
        raise BadInput(413, "body", f"JSON body of {len(raw)} bytes exceeds the limit of {max_bytes} bytes")
    if len(raw) > OFF_LOOP_BYTES:
        return await asyncio.to_thread(parse_json_object, raw)
    return parse_json_object(raw)
