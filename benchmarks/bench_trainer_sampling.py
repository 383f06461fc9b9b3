"""Trainer sampling: requests served one at a time vs batched, measured side by side in one run.

    .venv/bin/python benchmarks/bench_trainer_sampling.py [--model small] [--requests 32] [--rounds 3]

Two `hotloop serve trainer` subprocesses on the same model, one with --sample-batch-rows 1 (each
asample request generated alone, as the trainer did before) and one with the default batching.
The workload is a rollout loop's: --requests concurrent single-sample requests (a ~150-token chat
prompt, --tokens sampled tokens each, like one guess_number turn), sent through the official
tinker client from as many threads. Rounds alternate between the two servers so background load
hits both alike; the best round of each is compared. Also prints one request alone on each (the
latency a batched sampler must not lose). Ratios > 1 mean batched is faster.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # tests/support

from support.launch import TRAINER_URL_KEY, launched, serve_argv

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="small")
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=24)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per server")
    args = ap.parse_args()
    os.environ.setdefault("TINKER_TELEMETRY", "0")
    import tinker
    from tinker import types

    env = {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(args.threads)}
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        urls = {}
        for label, rows in (("serial", "1"), ("batched", "32")):
            argv = serve_argv(
                "trainer",
                model=args.model,
                bucket=Path(tmp) / label,
                extra=["--threads", str(args.threads), "--sample-batch-rows", rows],
            )
            urls[label] = stack.enter_context(
                launched(argv, TRAINER_URL_KEY, timeout_s=300, extra_env=env)
            ).url
        clients = {}
        for label, url in urls.items():
            svc = tinker.ServiceClient(base_url=url, api_key="tml-bench")
            clients[label] = svc.create_sampling_client(base_model=args.model).result()
        prompts = [[11 + (i * 7 + j) % 900 for j in range(150)] for i in range(args.requests)]
        params = types.SamplingParams(max_tokens=args.tokens, stop=[], temperature=1.0)
        pool = stack.enter_context(concurrent.futures.ThreadPoolExecutor(args.requests))

        def burst(sc: tinker.SamplingClient) -> float:
            start = time.perf_counter()
            futures = [
                pool.submit(lambda p=p: sc.sample(types.ModelInput.from_ints(p), 1, params).result())
                for p in prompts
            ]
            for f in futures:
                assert len(f.result().sequences[0].tokens) == args.tokens
            return time.perf_counter() - start

        def single(sc: tinker.SamplingClient) -> float:
            start = time.perf_counter()
            sc.sample(types.ModelInput.from_ints(prompts[0]), 1, params).result()
            return time.perf_counter() - start

        for sc in clients.values():  # warm up: module caches, first-request costs
            burst(sc)
        best: dict[str, list[float]] = {k: [float("inf"), float("inf")] for k in clients}
        for r in range(args.rounds):
            order = list(clients.items())
            for label, sc in order if r % 2 == 0 else order[::-1]:  # alternate: load hits both alike
                best[label][0] = min(best[label][0], burst(sc))
                best[label][1] = min(best[label][1], single(sc))
        n_tok = args.requests * args.tokens
        for label, (b, s) in best.items():
            rate = n_tok / b
            print(
                f"{label:8s} burst of {args.requests}: {b:6.2f}s ({rate:7.1f} tok/s)   one request: {s:5.2f}s"
            )
        print(f"burst speedup batched/serial: {best['serial'][0] / best['batched'][0]:.2f}x")
        print(f"single-request ratio batched/serial (time): {best['batched'][1] / best['serial'][1]:.2f}")


if __name__ == "__main__":
    main()
