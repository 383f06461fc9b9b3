"""Benchmark the embedded deployment: continuous-batching throughput and the queueing signal.

Starts ``hotloop serve deployment --model small`` as a subprocess and drives it over HTTP with
streaming requests (as the DeploymentSampler does), then prints, side by side in one run:

* output tokens/s at concurrency 1, 8 and 32, each as a ratio to concurrency 1 (the same requests
  generated one at a time by the same server and model); target >= 4x at 32;
* server-reported ``prefill-queue-duration`` p50 at concurrency 1 vs 64 (with ``--max-batch 32``
  half of the 64 must queue): the signal the adaptive concurrency controller feeds on.

``--compare-transformers`` also times transformers' own continuous batching (``generate_batch``)
against this scheduler on the same requests, in-process, without HTTP.

Usage: .venv/bin/python benchmarks/bench_deployment.py [--model small] [--max-tokens 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # tests/support
from support.launch import DEPLOYMENT_URL_KEY, alaunched, serve_argv


async def _one(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> dict[str, Any]:
    final: dict[str, Any] = {}
    tokens = 0
    async with session.post(url + "/inference/v1/completions", json=body) as resp:
        resp.raise_for_status()
        async for raw in resp.content:
            line = raw.decode().strip()
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[5:])
            for choice in chunk["choices"]:
                if choice.get("raw_output"):
                    tokens = len(choice["raw_output"]["completion_token_ids"])
            if "perf_metrics" in chunk:
                final = chunk["perf_metrics"]
    return {"tokens": tokens, **final}


async def run_level(
    url: str, concurrency: int, requests: int, prompt_len: int, max_tokens: int, first: int = 0
) -> tuple[float, list[dict[str, Any]]]:
    """Send ``requests`` streaming requests with at most ``concurrency`` in flight; (tokens/s, results).

    Request i's prompt starts with token (31 i) mod 1000, so prompts with distinct ``i < 1000`` differ
    and no level is helped by the prompt cache; ``first`` keeps the levels' ranges apart."""
    bodies = [
        {
            "prompt": [(31 * i + 7 * j) % 1000 + 4 for j in range(prompt_len)],
            "max_tokens": max_tokens,
            "temperature": 1.0,
            "seed": i,
            "ignore_eos": True,
            "stream": True,
            "raw_output": True,
            "perf_metrics_in_response": True,
        }
        for i in range(first, first + requests)
    ]
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for b in bodies:
        queue.put_nowait(b)
    results: list[dict[str, Any]] = []

    async def worker(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            results.append(await _one(session, url, queue.get_nowait()))

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        start = time.perf_counter()
        async with asyncio.timeout(600):
            await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return sum(r["tokens"] for r in results) / wall, results


def _p50(results: list[dict[str, Any]], key: str) -> float:
    return statistics.median(float(r[key]) for r in results)


async def bench(args: argparse.Namespace) -> None:
    argv = serve_argv(
        "deployment", model=args.model, extra=["--max-batch", str(args.max_batch), "--max-waiting", "4096"]
    )
    async with alaunched(argv, DEPLOYMENT_URL_KEY, timeout_s=300) as server:
        url = server.url
        await run_level(url, 4, 4, args.prompt_len, 4, first=900)  # warm-up
        rows: list[tuple[int, float, list[dict[str, Any]]]] = []
        for concurrency, requests, first in ((1, 8, 0), (8, 32, 100), (32, 64, 200)):
            tps, results = await run_level(
                url, concurrency, requests, args.prompt_len, args.max_tokens, first
            )
            rows.append((concurrency, tps, results))
        _, queue_results = await run_level(url, 64, 128, args.prompt_len, args.max_tokens // 2, first=300)
    base = rows[0][1]
    print(f"\nmodel={args.model} max_batch={args.max_batch} prompt={args.prompt_len}", end=" ")
    print(f"max_tokens={args.max_tokens}")
    header = ("concurrency", "tokens/s", "vs one-at-a-time", "pq p50 (s)", "ttft p50 (s)")
    print("{:>11} {:>9} {:>17} {:>11} {:>12}".format(*header))
    for concurrency, tps, results in rows:
        pq, ttft = _p50(results, "prefill-queue-duration"), _p50(results, "server-time-to-first-token")
        print(f"{concurrency:>11} {tps:>9.1f} {tps / base:>16.2f}x {pq:>11.4f} {ttft:>12.4f}")
    pq1 = _p50(rows[0][2], "prefill-queue-duration")
    pq64 = _p50(queue_results, "prefill-queue-duration")
    print(
        f"{64:>11} {'':>9} {'':>17} {pq64:>11.4f} {_p50(queue_results, 'server-time-to-first-token'):>12.4f}"
    )
    print(f"\nthroughput ratio at 32 vs 1: {rows[2][1] / base:.2f}x (target >= 4x)")
    print(f"prefill-queue-duration p50 at 64 vs 1: {pq64:.4f}s vs {pq1:.4f}s = {pq64 / max(pq1, 1e-6):.0f}x")


def compare_transformers(model_name: str, requests: int, prompt_len: int, max_tokens: int) -> None:
    """Same greedy requests: this scheduler (no HTTP) vs transformers' generate_batch, tokens/s."""
    import torch
    from transformers import ContinuousBatchingConfig, GenerationConfig

    from engine.local.deployment.batch_runner import BatchRunner
    from engine.local.deployment.scheduler import Scheduler
    from engine.local.deployment.state import RequestHandle, SeqSpec
    from engine.local.deployment.token_selection import SamplingParams
    from engine.local.models import load_model, load_tokenizer

    torch.set_num_threads(1)
    prompts = [[(7 * i + 3 * j) % 1000 + 4 for j in range(prompt_len)] for i in range(requests)]
    model, tok = load_model(model_name), load_tokenizer(model_name)

    async def ours() -> float:
        sched = Scheduler(BatchRunner(model), tok, max_batch=requests)
        sched.start()

        async def one(p: list[int]) -> int:
            h = RequestHandle(1)
            sched.submit(
                h, [SeqSpec(prompt=p, max_tokens=max_tokens, sampling=SamplingParams(temperature=0))]
            )
            n = 0
            while True:
                item = await h.queue.get()
                assert not isinstance(item, BaseException)
                for u in item:
                    n += len(u.tokens)
                    if u.finish_reason:
                        return n

        start = time.perf_counter()
        total = sum(await asyncio.gather(*map(one, prompts)))
        elapsed = time.perf_counter() - start
        sched.close()
        return total / elapsed

    gen = GenerationConfig(max_new_tokens=max_tokens, do_sample=False, eos_token_id=-1, pad_token_id=3)
    cbc = ContinuousBatchingConfig(
        page_size=32,
        num_blocks=256,
        max_batch_tokens=512,
        max_requests_per_batch=requests,
        use_cuda_graph=False,
    )
    for attempt in range(2):
        ours_tps = asyncio.run(ours())
        start = time.perf_counter()
        out = model.generate_batch(prompts, gen, continuous_batching_config=cbc, warmup=False)
        theirs = sum(len(o.generated_tokens) for o in out.values()) / (time.perf_counter() - start)
        print(f"run {attempt}: hotloop scheduler {ours_tps:.1f} tok/s,", end=" ")
        print(f"transformers generate_batch {theirs:.1f} tok/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="small")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--compare-transformers", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("HOTLOOP_LOG_LEVEL", "WARNING")
    if args.compare_transformers:
        compare_transformers(args.model, 32, 16, args.max_tokens)
        return
    asyncio.run(bench(args))


if __name__ == "__main__":
    main()
