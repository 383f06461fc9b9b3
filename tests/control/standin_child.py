"""A stand-in for `hotloop serve trainer|deployment` (no torch): same CLI flags, same URL line.

Used to test the control plane's supervision and gateway quickly. ``STANDIN_FAIL_START=1`` makes
it exit with an error before announcing its URL. Like the real servers it refuses requests without
the key named by ``--api-key-env`` (health excepted). A completion with ``max_tokens >= 1000`` hangs
until cancelled; ``GET /standin/cancelled`` counts the ones whose caller went away.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from typing import Any

from aiohttp import web


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["trainer", "deployment"])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--model", required=True)
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--state-dir", default=None)
    parser.add_argument("--alias", action="append", default=[])
    parser.add_argument("--api-key-env", default=None)
    args = parser.parse_args()
    if os.environ.get("STANDIN_FAIL_START"):
        print("stand-in: refusing to start (STANDIN_FAIL_START set)", file=sys.stderr, flush=True)
        return 3
    key = os.environ.pop(args.api_key_env, None) if args.api_key_env else None
    held: dict[str, str | None] = {"identity": None}
    counts = {"cancelled": 0}

    @web.middleware
    async def auth(request: web.Request, handler: Any) -> web.StreamResponse:
        given = request.headers.get("X-API-Key", "")
        if key and request.path not in ("/api/v1/healthz", "/health") and given != key:
            return web.json_response({"detail": "missing or wrong X-API-Key"}, status=401)
        response: web.StreamResponse = await handler(request)
        return response

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "kind": args.kind, "bucket": args.bucket})

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response(
            {
                "path": request.path,
                "query": request.query_string,
                "size": len(body),
                "x_api_key": request.headers.get("X-API-Key"),
                "authorization": request.headers.get("Authorization"),
            }
        )

    async def slow_stream(request: web.Request) -> web.StreamResponse:
        # A long-poll-like answer: headers late, then chunks with gaps.
        await asyncio.sleep(float(request.query.get("delay", "1")))
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await resp.prepare(request)
        for i in range(int(request.query.get("chunks", "3"))):
            await resp.write(f"chunk{i}\n".encode())
            await asyncio.sleep(0.05)
        await resp.write_eof()
        return resp

    async def completions(request: web.Request) -> web.Response:
        body = await request.json()
        if int(body.get("max_tokens", 1)) >= 1000:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                counts["cancelled"] += 1
                raise
        return web.json_response(
            {
                "model": body.get("model"),
                "choices": [{"text": "ok", "finish_reason": "length"}],
                "snapshot_identity": held["identity"],
            },
            headers={"x-hotloop-snapshot-identity": str(held["identity"])},
        )

    async def hot_load(request: web.Request) -> web.Response:
        if request.method == "POST":
            held["identity"] = (await request.json())["identity"]
        replica = {
            "current_snapshot_identity": held["identity"],
            "readiness": True,
            "loading_state": {"stage": "idle", "target_snapshot_identity": held["identity"]},
            "fireworks_deployment": request.headers.get("fireworks-deployment"),
        }
        return web.json_response({"replicas": [replica]})

    async def cancelled(request: web.Request) -> web.Response:
        return web.json_response(counts)

    app = web.Application(middlewares=[auth])
    app.router.add_get("/standin/cancelled", cancelled)
    app.router.add_get("/api/v1/healthz", healthz)
    app.router.add_get("/health", healthz)
    app.router.add_post("/api/v1/echo", echo)
    app.router.add_post("/api/v1/create_model", echo)
    app.router.add_get("/api/v1/slow", slow_stream)
    app.router.add_post("/inference/v1/completions", completions)
    app.router.add_route("*", "/hot_load/v1/models/hot_load", hot_load)
    runner = web.AppRunner(app, handle_signals=False, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", args.port)
    await site.start()
    port = runner.addresses[0][1]
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    print(f"HOTLOOP_{args.kind.upper()}_URL=http://127.0.0.1:{port}", flush=True)
    print(json.dumps({"stand-in": args.kind, "port": port}), file=sys.stderr, flush=True)
    await stop.wait()
    await runner.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
