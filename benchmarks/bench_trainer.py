"""Trainer service throughput vs a bare PyTorch loop, measured side by side in one run.

    .venv/bin/python benchmarks/bench_trainer.py [--model small] [--steps 3] [--threads 1]

One step = forward_backward (cross_entropy, batch 32 x 128 tokens) + optim_step (AdamW),
full-parameter. The service side is `hotloop serve trainer` as a subprocess driven by the official
tinker client with every step submitted before any result is awaited (pipelined). The bare side is
the same computation in this process. Both use the same torch thread count, and the two sides run
in interleaved rounds so a shared machine's drifting load hits both alike. Prints steps/s and the
ratio service / bare (target >= 0.85), plus the ratio of CPU time per step.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # tests/support
from support.launch import TRAINER_URL_KEY, launched, serve_argv

REPO = Path(__file__).resolve().parents[1]


def batch(n: int, length: int, seed: int = 0) -> list[list[int]]:
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.integers(4, 1024, size=(n, length + 1)).tolist()


class Bare:
    """The same step in this process: forward, summed cross-entropy, backward, AdamW."""

    def __init__(self, model_name: str, rows: list[list[int]]) -> None:
        import torch

        from engine.local.models import load_model

        self.torch = torch
        self.model = load_model(model_name)
        self.ids = torch.tensor(rows)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-5, betas=(0.9, 0.95), eps=1e-12)

    def run(self, n: int) -> None:
        torch, ids = self.torch, self.ids
        for _ in range(n):
            logits = self.model(input_ids=ids[:, :-1], use_cache=False).logits
            logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
            (-(torch.ones_like(logp) * logp).sum()).backward()
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)


def cpu_seconds(pid: int) -> float:
    """user + system CPU time of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Service:
    """The step through `hotloop serve trainer` with the official client, all steps pipelined."""

    def __init__(self, url: str, model: str, rows: list[list[int]]) -> None:
        import tinker
        from tinker import types

        self.data = [
            types.Datum(
                model_input=types.ModelInput.from_ints(r[:-1]),
                loss_fn_inputs={"target_tokens": r[1:], "weights": [1.0] * (len(r) - 1)},
            )
            for r in rows
        ]
        self.svc = tinker.ServiceClient(base_url=url, api_key="tml-bench")
        self.tc = self.svc.create_lora_training_client(base_model=model, rank=0).result()
        self.adam = types.AdamParams(learning_rate=1e-5)

    def run(self, n: int) -> None:
        futures = []
        for _ in range(n):
            futures.append(self.tc.forward_backward(self.data, "cross_entropy"))
            futures.append(self.tc.optim_step(self.adam))
        for f in futures:
            f.result()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="small")
    ap.add_argument("--steps", type=int, default=1, help="steps per side per round")
    ap.add_argument("--rounds", type=int, default=5)
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
    # Interleaved rounds, so drifting load on a shared machine hits both sides alike.
    t_bare = t_svc = cpu_bare = cpu_svc = 0.0
    per_round: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        argv = serve_argv(
            "trainer", model=a.model, bucket=Path(tmp) / "bucket", extra=["--threads", str(a.threads)]
        )
        env = {"OMP_NUM_THREADS": str(a.threads)}
        with launched(argv, TRAINER_URL_KEY, timeout_s=180, extra_env=env, cwd=REPO, grace_s=60) as server:
            proc, url = server.proc, server.url
            bare, served = Bare(a.model, rows), Service(url, a.model, rows)
            bare.run(a.warmup)
            served.run(a.warmup)
            for _ in range(a.rounds):
                c0, t0 = time.process_time(), time.perf_counter()
                bare.run(a.steps)
                round_bare = time.perf_counter() - t0
                t_bare += round_bare
                cpu_bare += time.process_time() - c0
                c0, t0 = cpu_seconds(proc.pid), time.perf_counter()
                served.run(a.steps)
                round_svc = time.perf_counter() - t0
                t_svc += round_svc
                per_round.append(round_bare / round_svc)
                cpu_svc += cpu_seconds(proc.pid) - c0
            served.svc.close("success").result()
    n = a.steps * a.rounds
    print(
        f"model={a.model} batch={a.batch}x{a.length} steps={n} "
        f"({a.rounds} interleaved rounds) threads={a.threads}"
    )
    print(
        f"bare pytorch : {n / t_bare:.4f} steps/s  "
        f"({t_bare / n:.2f} s/step wall, {cpu_bare / n:.2f} s/step CPU)"
    )
    print(
        f"service      : {n / t_svc:.4f} steps/s  ({t_svc / n:.2f} s/step wall, {cpu_svc / n:.2f} s/step CPU)"
    )
    print(f"ratio service/bare throughput = {t_bare / t_svc:.3f} (target >= 0.85)")
    print(f"  per-round ratios {[round(r, 3) for r in per_round]}, median {statistics.median(per_round):.3f}")
    print(f"ratio by CPU time per step    = {cpu_bare / cpu_svc:.3f} (trainer process only)")
    print(f"wall {time.perf_counter() - wall:.0f}s")


if __name__ == "__main__":
    main()
