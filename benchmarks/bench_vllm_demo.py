"""The RL demo's steps per second with a vLLM deployment vs the embedded deployment, side by side.

    .venv/bin/python benchmarks/bench_vllm_demo.py [--steps 10] [--rounds 2]

Both runs use the embedded trainer (one control plane, started once) and the `small` model; the vLLM
side attaches to one vLLM server launched here (examples/vllm.yaml's shape). Rounds alternate which
side goes first, because the 2 shared cores are noisy. Steps per second counts the training steps
over the time from WAITING's exit (trainer and deployment up) to the end, evaluations and syncs
included. Needs vLLM
(scripts/install-vllm.sh).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from engine.backends.base import DeploymentSpec, TrainerRef
from engine.backends.vllm import VllmDeployment, VllmLaunchSpec, locate_vllm_python
from engine.lifecycle import LifecycleEvent, State
from engine.local.models import build_model_dir
from engine.local.stack import EmbeddedStack
from engine.run.orchestrator import run
from engine.run.planes import ControlPlaneConnection


def config(run_dir: Path, steps: int, vllm_url: str | None) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "model": "small",
        "run_dir": str(run_dir),
        "max_steps": steps,
        "intervals": {"eval_every": steps, "checkpoint_every": steps},
    }
    if vllm_url is not None:
        cfg["deployment"] = {"kind": "vllm", "base_url": vllm_url}
    return cfg


async def one(root: Path, conn: ControlPlaneConnection, steps: int, vllm_url: str | None, i: int) -> float:
    side = "vllm" if vllm_url else "embedded"
    marks: dict[str, float] = {}

    def on_event(event: LifecycleEvent) -> None:
        if event.kind == "exit" and event.state is State.WAITING:
            marks["ready"] = time.perf_counter()  # trainer and deployment up, session connected
        if event.kind == "done":
            marks["done"] = time.perf_counter()

    summary = await run(config(root / f"{side}-{i}", steps, vllm_url), connection=conn, on_event=on_event)
    wall = marks["done"] - marks["ready"]
    assert summary.status == "done", summary
    print(
        f"  {side:8s} round {i}: {steps / wall:.3f} steps/s ({wall:.1f}s) "
        f"eval {summary.eval_score_first} -> {summary.eval_score_last}"
    )
    return steps / wall


async def main(steps: int, rounds: int) -> int:
    python = locate_vllm_python()
    if python is None:
        print("no vLLM install: run scripts/install-vllm.sh", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="bench-vllm-demo-"))
    spec = VllmLaunchSpec(
        python=str(python), model_dir=str(build_model_dir("small")), served_model_name="small",
        dtype="float32", max_model_len=1024, env={"VLLM_CPU_KVCACHE_SPACE": "1"},
    )  # fmt: skip
    vllm = VllmDeployment(launch=spec, work_dir=root / "vllm-server")
    rates: dict[str, list[float]] = {"vllm": [], "embedded": []}
    try:
        ref = await vllm.provision(DeploymentSpec("small", "bench"), TrainerRef("local", "t"), None)
        ref = await vllm.wait_ready(ref, timeout_s=300)
        url = ref.attrs["base_url"]
        async with EmbeddedStack(root / "stack") as stack:
            conn = ControlPlaneConnection(stack.base_url, stack.api_key, stack.account_id)
            for i in range(rounds):
                order = [url, None] if i % 2 == 0 else [None, url]
                for side in order:
                    rate = await one(root, conn, steps, side, i)
                    rates["vllm" if side else "embedded"].append(rate)
    finally:
        await vllm.aclose()
    ratios = [v / e for v, e in zip(rates["vllm"], rates["embedded"], strict=True)]
    print(
        f"\ndemo steps/s, vLLM deployment / embedded deployment: median {statistics.median(ratios):.2f} "
        f"(rounds {', '.join(f'{r:.2f}' for r in ratios)})"
    )
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.steps, args.rounds)))
