"""The fault-injection proxy (tests/support/chaos.py) does what it says to a real client, and the
control-plane REST client's retry owner heals every kind it injects."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from support.chaos import KINDS, Fault, FaultProxy, repeated_lines, seeded_faults

from engine.backends.fireworks.rest import RestClient, RestRetryPolicy


async def _json(request: web.Request) -> web.Response:
    return web.json_response({"ok": True, "path": request.path, "pad": "x" * 4000})


async def _sse(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for i in range(3):
        await resp.write(f'data: {{"i": {i}, "text": "{"y" * 40}"}}\n\n'.encode())
        await asyncio.sleep(0.01)
    await resp.write(b"data: [DONE]\n\n")
    return resp


@pytest_asyncio.fixture
async def upstream() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_route("*", "/v1/thing", _json)
    app.router.add_post("/stream", _sse)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    await runner.cleanup()


def test_a_seeded_schedule_has_one_fault_of_each_kind_and_reproduces() -> None:
    one = seeded_faults(7, first=3, last=60)
    assert sorted(f.kind for f in one) == sorted(KINDS)
    ats = [f.at for f in one]
    assert ats == sorted(ats) and all(b - a >= 3 for a, b in itertools.pairwise(ats))
    assert all(3 <= a <= 60 for a in ats)
    assert seeded_faults(7, first=3, last=60) == one and seeded_faults(8, first=3, last=60) != one


async def test_each_fault_kind_reaches_the_client_as_a_network_would_deliver_it(upstream: str) -> None:
    faults = [
        Fault("reset", 1),
        Fault("reset", 2, upstream_first=True),
        Fault("status_5xx", 3),
        Fault("status_429", 4),
        Fault("truncate", 5),
        Fault("stall", 6, stall_s=0.2),
    ]
    proxy = FaultProxy("rest", upstream, faults)
    url = await proxy.start()
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(2):  # POST: aiohttp's client retries a GET on a dropped connection once
                with pytest.raises(aiohttp.ClientError):
                    async with http.post(f"{url}/v1/thing") as resp:
                        await resp.read()
            for status in (503, 429):
                async with http.get(f"{url}/v1/thing") as resp:
                    assert resp.status == status and resp.headers["Retry-After"] == "1"
            with pytest.raises(aiohttp.ClientError):  # half the body, then a reset
                async with http.post(f"{url}/v1/thing") as resp:
                    await resp.read()
            async with http.get(f"{url}/v1/thing") as resp:  # stalled, then answered in full
                assert resp.status == 200 and (await resp.json())["ok"] is True
    finally:
        await proxy.close()
    assert [i.kind for i in proxy.injections] == [f.kind for f in faults]
    # one success came after all of them: each is recovered, at or after its injection
    assert all(i.seconds_to_recover is not None and i.seconds_to_recover >= 0 for i in proxy.injections)


async def test_an_sse_stream_is_cut_inside_an_event(upstream: str) -> None:
    proxy = FaultProxy("inference", upstream, [Fault("truncate", 1)])
    url = await proxy.start()
    got = b""
    try:
        async with aiohttp.ClientSession() as http, http.post(f"{url}/stream") as resp:
            with pytest.raises(aiohttp.ClientError):
                async for chunk in resp.content.iter_any():
                    got += chunk
    finally:
        await proxy.close()
    assert got.startswith(b"data: {") and b"\n\n" not in got  # mid-event: no complete event arrived


async def test_the_rest_clients_retry_owner_heals_every_kind(upstream: str) -> None:
    # 4 requests apart: a request's own retries (and aiohttp's one GET retry) use up the numbers after it
    faults = [Fault(kind, 1 + 4 * i, stall_s=0.1, upstream_first=i % 2 == 1) for i, kind in enumerate(KINDS)]
    proxy = FaultProxy("rest", upstream, faults, match=lambda method, path: path.startswith("/v1/"))
    url = await proxy.start()
    policy = RestRetryPolicy(max_attempts=4, initial_backoff_s=0.01, max_retry_after_s=0.05)
    client = RestClient("key", url, retry_policy=policy, account_id="a")
    bodies: list[Any] = []
    try:
        while proxy.pending and len(bodies) < 40:  # each call returns the real answer, faults or not
            bodies.append((await client.request("GET", "/v1/thing")).body)
    finally:
        await client.aclose()
        await proxy.close()
    assert all(b["ok"] for b in bodies) and [i.kind for i in proxy.injections] == list(KINDS)


def test_repeated_lines_compare_json_without_timestamps() -> None:
    out = "\n".join(
        ['{"event": "x", "timestamp": "1"}', '{"event": "x", "timestamp": "2"}', "plain", "plain", "once"]
    )
    assert sorted(repeated_lines(out)) == [(2, "plain"), (2, '{"event": "x"}')]
