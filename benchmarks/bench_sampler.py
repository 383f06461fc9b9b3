"""Sampler client overhead: DeploymentSampler vs a bare aiohttp loop against the same streaming server.

    .venv/bin/python benchmarks/bench_sampler.py [--requests 1500] [--concurrency 16] [--tokens 16]

A minimal aiohttp server (its own process) streams each completion as the contract's SSE chunks: one
chunk per token with logprobs.content, a final chunk with finish_reason/raw_output/usage/perf_metrics,
then [DONE]. The bare client posts and reads each stream to EOF (no parsing at all); bare+parse also
splits the SSE lines and decodes each chunk's JSON (the least a client that wants tokens does); the
sampler does everything it does in production: admission by a FixedConcurrencyController, retry owner,
SSE parsing, ServerMetrics, SampledCompletion. Runs alternate (bare, sampler, bare, sampler, ...) so
background load hits both alike; the best round of each is compared. Target: sampler / bare >= 0.8.
Client CPU time per completion (process time of this process; the server runs in another) is printed
too: on a shared machine it is the steadier measure of the client's own cost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp
import orjson
from aiohttp import web

from engine.log import configure
from engine.sampling import DeploymentSampler, FixedConcurrencyController

PROMPT = list(range(10, 42))


def _events(tokens: int, prompt: list[int]) -> bytes:
    out = []
    ids = [100 + i for i in range(tokens)]
    for i, tok in enumerate(ids):
        entry = {
            "token": f"t{tok}",
            "token_id": tok,
            "logprob": -0.5,
            "sampling_logprob": -0.6,
            "top_logprobs": [],
        }
        out.append(
            {"id": "c", "choices": [{"index": 0, "text": f"t{tok}", "logprobs": {"content": [entry]}}]}
        )
        del i
    out.append(
        {
            "id": "c",
            "choices": [
                {
                    "index": 0,
                    "text": "",
                    "finish_reason": "length",
                    "raw_output": {"prompt_token_ids": prompt, "completion_token_ids": ids},
                }
            ],
            "usage": {"prompt_tokens": len(prompt), "completion_tokens": tokens},
            "perf_metrics": {"prefill-queue-duration": 0.001, "prompt-tokens": len(prompt)},
            "snapshot_identity": "bench",
        }
    )
    return b"".join(f"data: {json.dumps(o)}\n\n".encode() for o in out) + b"data: [DONE]\n\n"


def serve(tokens: int) -> None:
    chunks = [line + b"\n\n" for line in _events(tokens, PROMPT).split(b"\n\n") if line]

    async def handle(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "prefill-queue-duration": "0.001"}
        )
        await resp.prepare(request)
        for chunk in chunks:  # one write per event, as a real token-by-token server does
            await resp.write(chunk)
        await resp.write_eof()
        return resp

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/inference/v1/completions", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        print(f"URL=http://127.0.0.1:{port}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


async def _timed(
    worker: Callable[[], Awaitable[None]], requests: int, concurrency: int
) -> tuple[float, float]:
    """(completions per wall second, client CPU microseconds per completion)."""
    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return requests / wall, cpu / requests * 1e6


async def bare(url: str, requests: int, concurrency: int) -> tuple[float, float]:
    payload = {"model": "m", "prompt": PROMPT, "max_tokens": 16, "stream": True}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        counter = iter(range(requests))

        async def worker() -> None:
            for _ in counter:
                async with session.post(url + "/inference/v1/completions", json=payload) as resp:
                    async for _chunk in resp.content.iter_any():
                        pass

        return await _timed(worker, requests, concurrency)


async def bare_parse(url: str, requests: int, concurrency: int) -> tuple[float, float]:
    """The least a useful client does: split the SSE lines and decode each data line's JSON."""
    payload = {"model": "m", "prompt": PROMPT, "max_tokens": 16, "stream": True}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        counter = iter(range(requests))

        async def worker() -> None:
            for _ in counter:
                async with session.post(url + "/inference/v1/completions", json=payload) as resp:
                    tail = b""
                    async for chunk in resp.content.iter_any():
                        *lines, tail = (tail + chunk).split(b"\n")
                        for line in lines:
                            if line.startswith(b"data: ") and line != b"data: [DONE]":
                                orjson.loads(line[6:])

        return await _timed(worker, requests, concurrency)


async def sampled(url: str, requests: int, concurrency: int, tokens: int) -> tuple[float, float]:
    sampler = DeploymentSampler(
        url,
        "accounts/local/deployments/bench",
        "hl-bench",
        concurrency_controller=FixedConcurrencyController(concurrency),
    )
    async with sampler:
        counter = iter(range(requests))

        async def worker() -> None:
            for _ in counter:
                [c] = await sampler.sample_with_prompt_tokens(PROMPT, max_tokens=tokens)
                assert c.completion_len == tokens

        return await _timed(worker, requests, concurrency)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if args.serve:
        serve(args.tokens)
        return 0
    configure(level="WARNING")
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", "--tokens", str(args.tokens)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip().removeprefix("URL=")
        asyncio.run(bare(url, 200, args.concurrency))  # warm up both sides
        asyncio.run(sampled(url, 200, args.concurrency, args.tokens))
        runs: dict[str, list[tuple[float, float]]] = {"bare": [], "bare+parse": [], "sampler": []}
        for _ in range(args.rounds):
            runs["bare"].append(asyncio.run(bare(url, args.requests, args.concurrency)))
            runs["bare+parse"].append(asyncio.run(bare_parse(url, args.requests, args.concurrency)))
            runs["sampler"].append(asyncio.run(sampled(url, args.requests, args.concurrency, args.tokens)))
        print(
            f"{args.requests} streamed completions x {args.rounds} alternating rounds, concurrency"
            f" {args.concurrency}, {args.tokens} tokens each"
        )
        best: dict[str, float] = {}
        median: dict[str, float] = {}
        cpu: dict[str, float] = {}
        for name, values in runs.items():
            rates = [r for r, _ in values]
            best[name] = max(rates)
            median[name] = statistics.median(rates)
            cpu[name] = statistics.median(c for _, c in values)
            print(
                f"{name:>10}: best {max(rates):7.1f}/s  median {statistics.median(rates):7.1f}/s"
                f"  client CPU {cpu[name]:6.0f} us/completion  rounds {[round(r) for r in rates]}"
            )
        for base in ("bare", "bare+parse"):
            print(
                f"sampler / {base}: throughput best {best['sampler'] / best[base]:.3f},"
                f" median {median['sampler'] / median[base]:.3f};"
                f" client CPU per completion {cpu[base] / cpu['sampler']:.3f}  (target >= 0.8)"
            )
    finally:
        proc.terminate()
        proc.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
