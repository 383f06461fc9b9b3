"""A scripted streaming completions server on 127.0.0.1 for the sampler tests.

It emits the contract's shapes (SSE chunks with choices[].text and logprobs.content[] entries, a final
chunk with finish_reason, raw_output, usage, perf_metrics and snapshot_identity, then [DONE]) and
deterministic tokens derived from the prompt, so a retried request must give the same result. Each
incoming request consumes the next fault from ``faults`` ("ok" once the script is empty); "hold"
stops mid-stream until ``release`` is set.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from engine.sampling import SamplingRetryPolicy

FAST_RETRY = SamplingRetryPolicy(
    backoff_initial_s=0.001, backoff_max_s=0.005, attempt_timeout_s=5.0, idle_timeout_s=5.0
)


def expected_tokens(prompt: list[int], max_tokens: int) -> tuple[list[int], str]:
    """The server's deterministic completion: length from the prompt, ids from its sum."""
    n = min(max_tokens, 3 + sum(prompt) % 5)
    ids = [4 + (sum(prompt) * 31 + 7 * i) % 1000 for i in range(n)]
    return ids, "length" if n == max_tokens else "stop"


@dataclass
class Recorded:
    headers: dict[str, str]
    body: dict[str, Any]
    fault: str


@dataclass
class ScriptedServer:
    url: str = ""
    faults: deque[str] = field(default_factory=deque)
    requests: list[Recorded] = field(default_factory=list)
    snapshot: str | None = "snap-000001"
    prefill_queue_s: float = 0.0125
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)  # ends the "hold" fault's wait

    def script(self, *faults: str) -> None:
        self.faults.extend(faults)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        fault = self.faults.popleft() if self.faults else "ok"
        self.requests.append(Recorded({k.lower(): v for k, v in request.headers.items()}, body, fault))
        self.arrived.set()
        name, _, arg = fault.partition(":")
        if name in ("500", "503", "400", "404", "425"):
            return web.json_response({"error": {"message": f"scripted {name}"}}, status=int(name))
        if name == "429":
            return web.json_response(
                {"error": {"message": "too many requests"}}, status=429, headers={"Retry-After": arg or "0"}
            )
        if name == "stall":
            await asyncio.sleep(float(arg or 30))
        prompt = [int(t) for t in body["prompt"]]
        ids, finish = expected_tokens(prompt, int(body["max_tokens"]))
        headers = {
            "Content-Type": "text/event-stream",
            "fireworks-prefill-queue-duration": "9.0",  # partial header; perf_metrics must win
            "Num-Concurrent-Requests": "3",
            "x-request-id": request.headers.get("x-request-id", ""),
        }
        if self.snapshot is not None:
            headers["x-hotloop-snapshot-identity"] = self.snapshot
        resp = web.StreamResponse(headers=headers)
        await resp.prepare(request)

        async def send(obj: Any, event: str | None = None) -> None:
            data = obj if isinstance(obj, str) else json.dumps(obj)
            await resp.write(((f"event: {event}\n" if event else "") + f"data: {data}\n\n").encode())

        await resp.write(b": keepalive\n\n")
        for i, tok in enumerate(ids):
            if name in ("drop", "truncate", "upstream_error") and i == 2:
                if name == "drop":
                    assert request.transport is not None
                    request.transport.abort()
                    return resp
                if name == "upstream_error":
                    await send({"error": {"message": "engine overloaded", "code": 503}}, event="error")
                await resp.write_eof()
                return resp
            entry = {
                "token": f"t{tok}",
                "token_id": tok,
                "logprob": -0.01 * (i + 1),
                "sampling_logprob": -0.02 * (i + 1),
                "top_logprobs": [],
            }
            chunk = {
                "id": "cmpl-1",
                "choices": [{"index": 0, "text": f"t{tok} ", "logprobs": {"content": [entry]}}],
            }
            await send(chunk)
            if i == 0:
                await send("{}", event="ping")
                if name == "stall_mid":
                    await asyncio.sleep(float(arg or 30))
                if name == "hold":  # mid-stream until the test releases it
                    await self.release.wait()
        final = {
            "id": "cmpl-1",
            "choices": [
                {
                    "index": 0,
                    "text": "",
                    "finish_reason": finish,
                    "raw_output": {"prompt_token_ids": prompt, "completion_token_ids": ids},
                }
            ],
            "usage": {"prompt_tokens": len(prompt), "completion_tokens": len(ids)},
            "perf_metrics": {"prefill-queue-duration": self.prefill_queue_s, "prompt-tokens": len(prompt)},
            "snapshot_identity": self.snapshot,
        }
        await send(final)
        await send("[DONE]")
        await resp.write_eof()
        return resp
