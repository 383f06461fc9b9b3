"""Client capacity of the load generator vs a bare aiohttp loop, against the same minimal server.

    .venv/bin/python benchmarks/bench_loadgen.py [--seconds 3] [--concurrency 32] [--tokens 16]

The server (tests/support/mock_server.py, its own process) streams ``--tokens`` chunks per request
with no delay, so the client is the bottleneck as far as one machine allows. Measured, alternating
to share the machine's noise, best of ``--rounds`` each:

* bare: ``--concurrency`` asyncio workers that POST and read the stream to EOF, nothing else;
* generator: ``hotloop loadtest``'s CellRunner in closed loop at the same concurrency, with its SSE
  parsing, per-chunk timing, controller and requests.jsonl writing.

Target: generator / bare >= 0.8. Then the generator runs open loop at its own sustained rate (and at
80 % of it) and the dispatch lag (actual send - intended start) is reported at that rate.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp

from engine.loadtest.client import Target
from engine.loadtest.metrics import GoodputTargets, summarize_cell
from engine.loadtest.output import RunOutput, load_description
from engine.loadtest.prompts import Prompt
from engine.loadtest.runner import CellResult, CellRunner, new_session
from engine.loadtest.schedules import ClosedLoop, OpenLoop

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # tests/support
from support.launch import MOCK_URL_KEY, launched

MOCK = Path(__file__).resolve().parents[1] / "tests" / "support" / "mock_server.py"
MOCK_ARGV = [sys.executable, str(MOCK), "--port", "0", "--model", "bench"]


async def bare_loop(
    url: str, payload: dict[str, object], concurrency: int, seconds: float
) -> tuple[float, float]:
    """(requests/s, client CPU microseconds per request)."""
    done = 0
    deadline = time.perf_counter() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                async with session.post(url, json=payload) as resp:
                    async for _ in resp.content.iter_any():
                        pass
                done += 1

        start, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done / (time.perf_counter() - start), (time.process_time() - cpu) / max(done, 1) * 1e6


async def generator(
    target: Target, prompts: list[Prompt], load: ClosedLoop | OpenLoop, seconds: float, out_dir: Path
) -> dict[str, object]:
    output = RunOutput(out_dir, GoodputTargets())
    async with new_session() as session:
        runner = CellRunner(
            session, target, prompts, max_requests=None, duration_s=seconds, on_record=output.add
        )
        result = output.new_cell(CellResult(label=load.label, load=load))
        cpu = time.process_time()
        await runner.run(load, result=result)
        cpu_us = (time.process_time() - cpu) / max(len(result.records), 1) * 1e6
    output.finish(run_info={"mode": "bench"}, status="ok", error=None)
    cell = summarize_cell(
        result.records, label=result.label, load=load_description(load), targets=GoodputTargets()
    )
    return {**cell, "cpu_us_per_request": cpu_us}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    repo = Path(__file__).resolve().parents[1]
    with launched(MOCK_ARGV, MOCK_URL_KEY, timeout_s=60, cwd=repo, grace_s=10) as server:
        base = server.url
        url = base + "/inference/v1/completions"
        prompts = [Prompt(list(range(10, 42)), a.tokens)]
        target = Target(url=url, model="bench", temperature=1.0)
        payload = target.payload(prompts[0])
        tmp = Path(tempfile.mkdtemp(prefix="bench_loadgen_"))
        asyncio.run(bare_loop(url, payload, a.concurrency, 0.5))  # warm the server's code paths
        bare: list[tuple[float, float]] = []
        gen: list[tuple[float, float]] = []
        for i in range(a.rounds):
            bare.append(asyncio.run(bare_loop(url, payload, a.concurrency, a.seconds)))
            cell = asyncio.run(
                generator(target, prompts, ClosedLoop(a.concurrency), a.seconds, tmp / f"c{i}")
            )
            gen.append(
                (float(cell["completed"]) / float(cell["duration_s"]), float(cell["cpu_us_per_request"]))
            )
        best_bare, best_gen = max(r for r, _ in bare), max(r for r, _ in gen)
        cpu_bare, cpu_gen = min(c for _, c in bare), min(c for _, c in gen)

        def rounds(xs: list[tuple[float, float]]) -> str:
            return ", ".join(f"{r:.0f}" for r, _ in xs)

        print(
            f"client capacity: {a.concurrency} in flight, {a.tokens} chunks/response,"
            f" {a.seconds:g}s x {a.rounds} rounds"
        )
        print(
            f"  bare aiohttp loop : {best_bare:7.1f} req/s cpu {cpu_bare:5.0f} us/req (rounds {rounds(bare)})"
        )
        print(f"  hotloop generator : {best_gen:7.1f} req/s cpu {cpu_gen:5.0f} us/req (rounds {rounds(gen)})")
        print(
            f"  ratio generator/bare: req/s {best_gen / best_bare:.3f} (target >= 0.8), "
            f"cpu-per-request bare/generator {cpu_bare / cpu_gen:.3f}"
        )
        for share in (1.0, 0.8):
            rate = round(best_gen * share, 1)
            load = OpenLoop(rate, "poisson", seed=1)
            cell = asyncio.run(generator(target, prompts, load, a.seconds, tmp / f"o{share}"))
            lag = cell["dispatch_lag_ms"]
            assert isinstance(lag, dict)
            print(
                f"  open loop at {rate:.1f} req/s ({share:.0%} of sustained):"
                f" sent at {cell['achieved_send_rate']:.1f}/s,"
                f" completed {cell['completed']}/{cell['requests']}, dispatch lag ms p50 {lag['p50']:.2f}"
                f" p90 {lag['p90']:.2f} p99 {lag['p99']:.2f} max {lag['max']:.2f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
