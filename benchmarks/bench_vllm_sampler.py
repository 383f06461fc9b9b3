"""Sampler completions/s through DeploymentSampler (vLLM dialect) vs a bare aiohttp loop, same vLLM.

    .venv/bin/python benchmarks/bench_vllm_sampler.py [--requests 192] [--concurrency 16] [--tokens 16]

Starts one vLLM server on ``small`` (``locate_vllm_python``; fp32, CPU). The bare loop posts the very
body the sampler sends (``VllmDialect.payload``: token ids, logprobs, usage, ignore_eos so both get
exactly ``--tokens`` tokens) and reads each stream to EOF without parsing; the sampler does what it
does in a run: admission by a FixedConcurrencyController, the retry owner, SSE parsing into token
ids, logprobs and ServerMetrics (the queue time), a SampledCompletion. Rounds alternate (bare,
sampler, ...) so background load hits both alike. Target: sampler / bare >= 0.8.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp

from engine.backends.vllm import VllmDialect, VllmLaunchSpec, VllmServer, locate_vllm_python
from engine.local.models import build_model_dir
from engine.log import configure
from engine.sampling import DeploymentSampler, FixedConcurrencyController

PROMPT = [(7 * j) % 900 + 4 for j in range(32)]


async def _timed(worker: Callable[[], Awaitable[None]], requests: int, concurrency: int) -> float:
    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return requests / (time.perf_counter() - start)


async def bare(url: str, requests: int, concurrency: int, tokens: int) -> float:
    body = VllmDialect().payload(
        "small", PROMPT, max_tokens=tokens, temperature=1.0, extra={"ignore_eos": True}
    )
    data = json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        counter = iter(range(requests))

        async def worker() -> None:
            for _ in counter:
                async with session.post(url + "/v1/completions", data=data, headers=headers) as resp:
                    resp.raise_for_status()
                    async for _chunk in resp.content.iter_any():
                        pass

        return await _timed(worker, requests, concurrency)


async def sampled(url: str, requests: int, concurrency: int, tokens: int) -> float:
    sampler = DeploymentSampler(
        url,
        "small",
        "",
        concurrency_controller=FixedConcurrencyController(concurrency),
        dialect=VllmDialect(),
    )
    async with sampler:
        counter = iter(range(requests))

        async def worker() -> None:
            for _ in counter:
                [c] = await sampler.sample_with_prompt_tokens(PROMPT, max_tokens=tokens, ignore_eos=True)
                assert c.completion_len == tokens and c.server_metrics.prefill_queue_duration is not None

        return await _timed(worker, requests, concurrency)


async def main(args: argparse.Namespace) -> int:
    python = locate_vllm_python()
    if python is None:
        print("no vLLM install (scripts/install-vllm.sh)", file=sys.stderr)
        return 2
    spec = VllmLaunchSpec(
        python=str(python),
        model_dir=str(build_model_dir("small")),
        served_model_name="small",
        dtype="float32",
        max_model_len=1024,
        env={"VLLM_CPU_KVCACHE_SPACE": "1"},
    )
    with tempfile.TemporaryDirectory(prefix="bench-vllm-sampler-") as tmp:
        server = VllmServer(spec, Path(tmp) / "vllm.log")
        try:
            url = await server.start(timeout_s=300)
            await bare(url, 32, args.concurrency, args.tokens)  # warm up the server and both clients
            await sampled(url, 32, args.concurrency, args.tokens)
            runs: dict[str, list[float]] = {"bare": [], "sampler": []}
            for _ in range(args.rounds):
                runs["bare"].append(await bare(url, args.requests, args.concurrency, args.tokens))
                runs["sampler"].append(await sampled(url, args.requests, args.concurrency, args.tokens))
        finally:
            await server.stop()
    print(
        f"vLLM small: {args.requests} completions x {args.rounds} alternating rounds, concurrency"
        f" {args.concurrency}, {args.tokens} tokens each"
    )
    for name, rates in runs.items():
        print(f"{name:>8}: median {statistics.median(rates):6.1f}/s  rounds {[round(r, 1) for r in rates]}")
    ratio = statistics.median(runs["sampler"]) / statistics.median(runs["bare"])
    print(f"sampler / bare completions/s (median): {ratio:.3f}  (target >= 0.8)")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=192)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    configure(level="WARNING")
    sys.exit(asyncio.run(main(parser.parse_args())))
