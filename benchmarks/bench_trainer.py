"""Trainer service throughput vs a bare PyTorch loop, measured side by side in one run.

    .venv/bin/python benchmarks/bench_trainer.py [--model small] [--steps 3] [--threads 1]

One step = forward_backward (cross_entropy, batch 32 x 128 tokens) + optim_step (AdamW),
full-parameter. The service side is `hotloop serve trainer` as a subprocess driven by the official
tinker client with every step submitted before any result is awaited (pipelined). The bare side is
the same computation in this process. Both use the same torch thread count. Prints steps/s and the
ratio service / bare (target >= 0.85).
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def batch(n: int, length: int, seed: int = 0) -> list[list[int]]:
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.integers(4, 1024, size=(n, length + 1)).tolist()


def bare(model_name: str, rows: list[list[int]], steps: int, warmup: int) -> float:
    import torch

    from engine.local.models import load_model

    model = load_model(model_name)
    ids = torch.tensor(rows)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.95), eps=1e-12, weight_decay=0.0)

    def step() -> None:
        logits = model(input_ids=ids[:, :-1], use_cache=False).logits
        logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        (-(torch.ones_like(logp) * logp).sum()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - start)


def start_server(model: str, threads: int, root: Path) -> tuple[subprocess.Popen[str], str]:
    cmd = [
        sys.executable,
        "-m",
        "engine.cli",
        "serve",
        "trainer",
        "--port",
        "0",
        "--model",
        model,
        "--bucket",
        str(root / "bucket"),
        "--threads",
        str(threads),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if select.select([proc.stdout], [], [], 1.0)[0] and proc.stdout is not None:
            line = proc.stdout.readline().strip()
            if line.startswith("HOTLOOP_TRAINER_URL="):
                return proc, line.split("=", 1)[1]
    proc.kill()
    raise RuntimeError("trainer did not start")


def service(url: str, model: str, rows: list[list[int]], steps: int, warmup: int) -> float:
    import tinker
    from tinker import types

    data = [
        types.Datum(
            model_input=types.ModelInput.from_ints(r[:-1]),
            loss_fn_inputs={"target_tokens": r[1:], "weights": [1.0] * (len(r) - 1)},
        )
        for r in rows
    ]
    svc = tinker.ServiceClient(base_url=url, api_key="tml-bench")
    tc = svc.create_lora_training_client(base_model=model, rank=0).result()
    adam = types.AdamParams(learning_rate=1e-5)

    def run(n: int) -> None:
        futures = []
        for _ in range(n):
            futures.append(tc.forward_backward(data, "cross_entropy"))
            futures.append(tc.optim_step(adam))
        for f in futures:
            f.result()

    run(warmup)
    start = time.perf_counter()
    run(steps)
    rate = steps / (time.perf_counter() - start)
    svc.close("success").result()
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="small")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1, help="torch threads on both sides")
    a = ap.parse_args()
    os.environ.setdefault("TINKER_TELEMETRY", "0")
    import torch

    torch.set_num_threads(a.threads)
    rows = batch(a.batch, a.length)
    wall = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_server(a.model, a.threads, Path(tmp))
        try:
            served = service(url, a.model, rows, a.steps, a.warmup)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    direct = bare(a.model, rows, a.steps, a.warmup)
    print(f"model={a.model} batch={a.batch}x{a.length} steps={a.steps} threads={a.threads}")
    print(f"bare pytorch : {direct:.4f} steps/s ({1 / direct:.2f} s/step)")
    print(f"service      : {served:.4f} steps/s ({1 / served:.2f} s/step)")
    print(
        f"ratio service/bare = {served / direct:.3f} (target >= 0.85); wall {time.perf_counter() - wall:.0f}s"
    )


if __name__ == "__main__":
    main()
