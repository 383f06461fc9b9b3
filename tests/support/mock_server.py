"""A minimal streaming completions server with a known delay and capacity.

It speaks the contract's SSE shape (Fireworks completions chunks, ``perf_metrics`` in the final
chunk, ``[DONE]``) with no model behind it, so the load generator can be tested against a server
whose behaviour is known exactly and benchmarked against one that costs almost nothing:
``capacity`` requests are served at once (the rest wait, reported as prefill-queue time), each
waits ``ttft_s`` before its first token and ``token_delay_s`` between tokens.

Run standalone: ``python -m engine.loadtest.mock_server --port 0`` prints
``HOTLOOP_MOCK_URL=http://127.0.0.1:PORT``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

STATE = web.AppKey("state", dict)


@dataclass
class MockConfig:
    model: str = "mock"
    capacity: int = 0  # 0 = unlimited
    ttft_s: float = 0.0
    token_delay_s: float = 0.0
    default_max_tokens: int = 16
    api_key: str | None = None  # when set, requests need "Authorization: Bearer <key>"
    # "fireworks": timings in headers and the final chunk; "vllm": no timings, usage only in a
    # separate choices-less chunk when asked for with stream_options.include_usage
    style: str = "fireworks"


def _chunk(model: str, text: str, finish: str | None, **extra: object) -> bytes:
    body = {
        "id": "cmpl-mock",
        "object": "text_completion",
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
        **extra,
    }
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


def make_app(cfg: MockConfig) -> web.Application:
    sem = asyncio.Semaphore(cfg.capacity) if cfg.capacity > 0 else None
    state = {"in_flight": 0, "served": 0}

    async def completions(request: web.Request) -> web.StreamResponse:
        t_arrive = time.perf_counter()
        if cfg.api_key is not None and request.headers.get("Authorization") != f"Bearer {cfg.api_key}":
            return web.json_response({"error": {"message": "invalid API key", "code": 401}}, status=401)
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": {"message": "body is not JSON", "code": 400}}, status=400)
        if body.get("model") != cfg.model:
            return web.json_response(
                {"error": {"message": f"Model not found: {body.get('model')!r}", "code": 404}}, status=404
            )
        prompt = body.get("prompt")
        n_prompt = len(prompt) if isinstance(prompt, list) else len(str(prompt).split())
        max_tokens = int(body.get("max_tokens") or cfg.default_max_tokens)
        if sem is not None:
            await sem.acquire()
        try:
            state["in_flight"] += 1
            queued = time.perf_counter() - t_arrive
            headers = {"Content-Type": "text/event-stream"}
            if cfg.style == "fireworks":
                headers["prefill-queue-duration"] = f"{queued:.6f}"
            resp = web.StreamResponse(headers=headers)
            await resp.prepare(request)
            if cfg.ttft_s:
                await asyncio.sleep(cfg.ttft_s)
            ttft = time.perf_counter() - t_arrive
            for i in range(max_tokens):
                if i and cfg.token_delay_s:
                    await asyncio.sleep(cfg.token_delay_s)
                await resp.write(_chunk(cfg.model, f" t{i}", None))
            perf = {
                "prefill-queue-duration": queued,
                "generation-queue-duration": 0.0,
                "server-time-to-first-token": ttft,
                "prompt-tokens": n_prompt,
                "cached-prompt-tokens": 0,
                "num-concurrent-requests": state["in_flight"],
            }
            usage = {
                "prompt_tokens": n_prompt,
                "completion_tokens": max_tokens,
                "total_tokens": n_prompt + max_tokens,
            }
            if cfg.style == "vllm":
                await resp.write(_chunk(cfg.model, "", "length", usage=None))
                if (body.get("stream_options") or {}).get("include_usage"):
                    tail = {"id": "cmpl-mock", "object": "text_completion", "choices": [], "usage": usage}
                    await resp.write(b"data: " + json.dumps(tail).encode() + b"\n\n")
            else:
                await resp.write(
                    _chunk(cfg.model, "", "length", usage=usage, perf_metrics=perf, snapshot_identity=None)
                )
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
            state["served"] += 1
            return resp
        finally:
            state["in_flight"] -= 1
            if sem is not None:
                sem.release()

    async def models(_request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": cfg.model, "object": "model"}]})

    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/inference/v1/completions", completions)
    app.router.add_get("/v1/models", models)
    app[STATE] = state
    return app


async def start(cfg: MockConfig, host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, str]:
    """Start the server on this loop; returns (runner to clean up, base URL)."""
    runner = web.AppRunner(make_app(cfg), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server: Any = site._server
    bound = server.sockets[0].getsockname()[1]
    return runner, f"http://{host}:{bound}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--model", default="mock")
    p.add_argument("--capacity", type=int, default=0)
    p.add_argument("--ttft-ms", type=float, default=0.0)
    p.add_argument("--token-delay-ms", type=float, default=0.0)
    a = p.parse_args(argv)
    cfg = MockConfig(a.model, a.capacity, a.ttft_ms / 1000, a.token_delay_ms / 1000)

    async def serve() -> None:
        runner, url = await start(cfg, port=a.port)
        print(f"HOTLOOP_MOCK_URL={url}", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
