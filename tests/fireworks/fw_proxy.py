"""A recording reverse proxy (aiohttp) for the contract tests: every request that passes through is
recorded (method, path, query, header names, JSON body) and forwarded unchanged to the upstream."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

# Hop-by-hop headers are the proxy's own business, not the client's request.
_HOP = {"connection", "keep-alive", "transfer-encoding", "upgrade", "host", "content-length"}


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any  # decoded JSON, or {"<bytes>": n} for a non-JSON body, or None
    status: int = 0
    tag: str = ""

    @property
    def header_names(self) -> set[str]:
        return {k.lower() for k in self.headers}


@dataclass
class RecordingProxy:
    upstream: str
    records: list[Recorded] = field(default_factory=list)
    tag: str = ""
    _runner: web.AppRunner | None = None
    _session: aiohttp.ClientSession | None = None
    url: str = ""

    async def start(self) -> RecordingProxy:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10), auto_decompress=False
        )
        app = web.Application(client_max_size=1 << 28)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                body = {"<bytes>": len(raw), "<content-type>": request.headers.get("Content-Type", "")}
        rec = Recorded(
            request.method,
            request.path,
            dict(request.query),
            {k: v for k, v in request.headers.items()},
            body,
            tag=self.tag,
        )
        self.records.append(rec)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        assert self._session is not None
        async with self._session.request(
            request.method,
            self.upstream + request.path_qs,
            data=raw if raw else None,
            headers=headers,
            allow_redirects=False,
        ) as upstream:
            rec.status = upstream.status
            payload = await upstream.read()
            out = web.Response(status=upstream.status, body=payload)
            for k, v in upstream.headers.items():
                if k.lower() not in _HOP and k.lower() != "content-encoding":
                    out.headers[k] = v
            if "Content-Encoding" in upstream.headers:
                out.headers["Content-Encoding"] = upstream.headers["Content-Encoding"]
            return out
