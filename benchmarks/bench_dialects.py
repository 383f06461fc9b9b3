"""forward_backward on the embedded trainer in its two dialects, measured side by side in one run:
tinker 0.38's protobuf (the official tinker client) vs Fireworks' JSON (hotloop's Fireworks client,
and Fireworks' own SDK 1.2.30 when installed).

    .venv/bin/python benchmarks/bench_dialects.py [--model tiny] [--batch 32] [--length 128] [--rounds 5]

One step = forward_backward (cross_entropy) + optim_step, full-parameter, each client with its own
model on one `hotloop serve trainer` subprocess, steps awaited one at a time (so the figure is the
round trip of one step, encoding included). The clients run in interleaved rounds so a shared
machine's drifting load hits them alike. Prints seconds per step and the ratio JSON / protobuf.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # tests/support
from support.launch import TRAINER_URL_KEY, launched, serve_argv

REPO = Path(__file__).resolve().parents[1]


def rows(n: int, length: int) -> list[list[int]]:
    import numpy as np

    return np.random.default_rng(0).integers(4, 1024, size=(n, length + 1)).tolist()


def datums(types: Any, data: list[list[int]]) -> list[Any]:
    return [
        types.Datum(
            model_input=types.ModelInput.from_ints(r[:-1]),
            loss_fn_inputs={"target_tokens": r[1:], "weights": [1.0] * (len(r) - 1)},
        )
        for r in data
    ]


class Proto:
    name = "protobuf (tinker 0.38)"

    def __init__(self, url: str, model: str, data: list[list[int]]) -> None:
        import tinker

        self.svc = tinker.ServiceClient(base_url=url, api_key="tml-bench")
        self.tc = self.svc.create_lora_training_client(base_model=model, rank=0).result()
        self.data, self.adam = datums(tinker.types, data), tinker.types.AdamParams(learning_rate=1e-5)

    def step(self) -> None:
        self.tc.forward_backward(self.data, "cross_entropy").result()
        self.tc.optim_step(self.adam).result()

    def close(self) -> None:
        self.svc.close("success").result()


class HotloopJson:
    name = "JSON (hotloop's Fireworks client)"

    def __init__(self, url: str, model: str, data: list[list[int]]) -> None:
        import tinker

        from engine.backends.fireworks.trainer_session import FireworksTrainingSession

        self.loop = asyncio.new_event_loop()
        self.session = self.loop.run_until_complete(FireworksTrainingSession.connect(url, "bench", model))
        self.data, self.adam = datums(tinker.types, data), tinker.types.AdamParams(learning_rate=1e-5)

    def step(self) -> None:
        async def one() -> None:
            await self.session.forward_backward(self.data, "cross_entropy")
            await self.session.optim_step(self.adam)

        self.loop.run_until_complete(one())

    def close(self) -> None:
        self.loop.run_until_complete(self.session.close())
        self.loop.close()


class FireworksJson:
    name = "JSON (fireworks-ai 1.2.30)"

    def __init__(self, url: str, model: str, data: list[list[int]]) -> None:
        import fireworks.training.sdk as fw

        self.svc = fw.FiretitanServiceClient(base_url=url, api_key="bench")
        self.tc = self.svc.create_training_client(base_model=model, lora_rank=0)
        self.data, self.adam = datums(fw, data), fw.AdamParams(learning_rate=1e-5)

    def step(self) -> None:
        self.tc.forward_backward(self.data, "cross_entropy").result()
        self.tc.optim_step(self.adam).result()

    def close(self) -> None:
        self.tc.unload_model().result()


def decode_costs(data: list[list[int]], repeats: int = 20) -> None:
    """The trainer's side of the difference, alone: bytes on the wire and decode time per request."""
    import json

    import tinker
    from tinker.proto.request_conv import forward_backward_request_to_proto

    from engine.backends.fireworks import trainer_wire as wire
    from engine.local.trainer.json_dialect import decode_json_forward
    from engine.local.trainer.proto import decode_forward_backward

    ds = datums(tinker.types, data)
    req = tinker.types.ForwardBackwardRequest(
        forward_backward_input=tinker.types.ForwardBackwardInput(data=ds, loss_fn="cross_entropy"),
        model_id="m",
        seq_id=1,
    )
    proto = forward_backward_request_to_proto(req).SerializeToString()
    body = json.dumps(
        {**wire.forward_body("m", ds, "cross_entropy", None, backward=True), "seq_id": 1}
    ).encode()
    timings = {}
    for name, fn in (
        ("protobuf", lambda: decode_forward_backward(proto)),
        ("JSON", lambda: decode_json_forward(json.loads(body), len(body), forward_only=False)),
    ):
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        timings[name] = (time.perf_counter() - t0) / repeats
    print(
        f"request body: protobuf {len(proto)} bytes, JSON {len(body)} bytes ({len(body) / len(proto):.2f}x)"
    )
    print(
        f"trainer decode: protobuf {timings['protobuf'] * 1000:.2f} ms, JSON {timings['JSON'] * 1000:.2f} ms "
        f"({timings['JSON'] / timings['protobuf']:.1f}x)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=2, help="steps per client per round")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the trainer")
    a = ap.parse_args()
    os.environ.setdefault("TINKER_TELEMETRY", "0")
    data = rows(a.batch, a.length)
    kinds: list[type] = [Proto, HotloopJson]
    try:
        import fireworks.training.sdk  # noqa: F401

        kinds.append(FireworksJson)
    except ImportError:
        print("fireworks-ai is not installed: its SDK is not measured")
    wall = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        argv = serve_argv(
            "trainer", model=a.model, bucket=Path(tmp) / "bucket", extra=["--threads", str(a.threads)]
        )
        env = {"OMP_NUM_THREADS": str(a.threads)}
        with launched(argv, TRAINER_URL_KEY, timeout_s=180, extra_env=env, cwd=REPO, grace_s=60) as server:
            clients = [k(server.url, a.model, data) for k in kinds]
            for c in clients:
                c.step()  # warm-up
            seconds: dict[str, list[float]] = {c.name: [] for c in clients}
            for _ in range(a.rounds):
                for c in clients:
                    t0 = time.perf_counter()
                    for _ in range(a.steps):
                        c.step()
                    seconds[c.name].append((time.perf_counter() - t0) / a.steps)
            for c in clients:
                c.close()
    print(
        f"model={a.model} batch={a.batch}x{a.length} rounds={a.rounds} x {a.steps} steps, threads={a.threads}"
    )
    base = statistics.median(seconds[Proto.name])
    for name, per_step in seconds.items():
        median = statistics.median(per_step)
        print(
            f"{name:36s} {median * 1000:8.1f} ms/step (median; rounds {[round(s * 1000) for s in per_step]})"
        )
        if name != Proto.name:
            print(f"{'':36s} ratio to protobuf = {median / base:.3f}")
    decode_costs(data)
    print(f"wall {time.perf_counter() - wall:.0f}s")


if __name__ == "__main__":
    main()
