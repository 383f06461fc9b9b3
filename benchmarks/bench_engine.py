"""Engine overhead: the Runner-driven RL loop vs the same trainer, sync and sampling calls made
directly in a plain loop.

    .venv/bin/python benchmarks/bench_engine.py [--steps 5] [--rounds 2] [--model tiny]

Both sides run on one embedded stack, against the same trainer job and deployment, doing per step
exactly the calls the RL recipe makes with sync_every=1, checkpoint_every=1, no evaluation: group
rollouts through the deployment, forward_backward_custom + optim_step, save_state, a sampler
snapshot (base then deltas), a hot-load verified by read-back. The Runner side adds what the engine
adds: state bookkeeping, fsync'd journal records, derived metrics/ledger files, events. Both clocks
start at the first rollout (after bootstrap, connection and any step-0 sync, which both sides do)
and stop after the last step. Rounds alternate which side goes first, to spread the noise of a
shared 2-core machine.
Target: engine / plain <= 1.03.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tinker

from engine.backends.fireworks import DeploymentManager, TrainerJobManager
from engine.backends.tinker import TrainingSession
from engine.journal import read_journal
from engine.lifecycle import LifecycleEvent, State
from engine.local.models import load_tokenizer
from engine.log import configure
from engine.recipes import rl
from engine.recipes.tasks import load_task
from engine.run.offload import UserCode
from engine.run.orchestrator import run
from engine.run.planes import ControlPlaneConnection
from engine.sampling import AdaptiveConcurrencyController, DeploymentSampler
from engine.weights import WeightSyncer

PROMPTS, GROUP, MAX_TOKENS, LR = 2, 4, 4, 1e-3


def config(run_dir: Path, steps: int, model: str) -> dict[str, object]:
    return {
        "recipe": "rl",
        "model": model,
        "run_id": "bench",
        "run_dir": str(run_dir),
        "max_steps": steps,
        "learning_rate": LR,
        "intervals": {"sync_every": 1, "eval_every": 0, "checkpoint_every": 1},
        "rl": {"prompts_per_step": PROMPTS, "group_size": GROUP, "max_tokens": MAX_TOKENS},
    }


OUTSIDE: list[float] = []  # per engine round: fraction of the loop's wall time spent outside states


async def engine_round(conn: ControlPlaneConnection, root: Path, steps: int, model: str, index: int) -> float:
    marks: dict[str, float] = {}

    def on_event(event: LifecycleEvent) -> None:
        # From the first rollout (after bootstrap, connection and any step-0 sync, as in the plain loop).
        if event.kind == "enter" and event.state is State.SAMPLING:
            marks.setdefault("first", time.perf_counter())
        if event.kind == "done":
            marks["done"] = time.perf_counter()

    run_dir = root / f"engine-{index}"
    summary = await run(config(run_dir, steps, model), connection=conn, on_event=on_event)
    assert summary.status == "done" and summary.steps == steps
    wall = marks["done"] - marks["first"]
    # The Runner's own cost, independent of round-to-round noise: the loop's wall time minus the
    # time spent inside the state coroutines (which make the same calls as the plain loop).
    records = read_journal(run_dir / "journal.jsonl")
    first = next(
        i for i, r in enumerate(records) if r.get("event") == "enter" and r.get("state") == "sampling"
    )
    inside = sum(r.get("seconds", 0.0) for r in records[first:] if r.get("event") == "exit")
    OUTSIDE.append(1.0 - inside / wall)
    return wall


async def plain_round(conn: ControlPlaneConnection, steps: int, model: str) -> float:
    """The same calls, hand-written: what a user would write without the engine."""
    task = load_task("digits")
    user = UserCode(task)  # rewards and tokenization off the loop, as the engine does
    async with (
        TrainerJobManager(conn.api_key, conn.base_url) as tmgr,
        DeploymentManager(conn.api_key, conn.base_url) as dmgr,
    ):
        await tmgr.resolve_account_id()
        await dmgr.resolve_account_id()
        endpoint = await tmgr.wait_for_ready("bench-trainer", poll_interval_s=0.25)
        await dmgr.wait_for_ready("bench-serving", poll_interval_s=0.25)
        session = await TrainingSession.connect(
            endpoint.base_url, conn.api_key, model, 0, tokenizer_loader=load_tokenizer
        )
        syncer = WeightSyncer(
            session, dmgr, "bench-serving", model, hotload_timeout_s=300, poll_interval_s=0.1
        )
        served = await syncer.check_deployment_state()
        sampler = DeploymentSampler(
            dmgr.inference_url,
            dmgr.model_name("bench-serving"),
            conn.api_key,
            tokenizer=session.tokenizer,
            concurrency_controller=AdaptiveConcurrencyController(initial_window=16),
        )
        adam = tinker.AdamParams(learning_rate=LR, beta1=0.9, beta2=0.95, eps=1e-8)
        try:
            if served is not None:  # like the engine: start from this model's own step-0 weights
                snap = await syncer.save_only("step-000000")
                await syncer.hotload(snap.snapshot_name, snap.checkpoint_type)
                await syncer.check_deployment_state()
            started = time.perf_counter()
            for step in range(1, steps + 1):
                batch = await rl.collect(
                    sampler, session.tokenizer, task, user, step=step, seed=0, prompts_per_step=PROMPTS,
                    group_size=GROUP, max_tokens=MAX_TOKENS, temperature=1.0, policy_version=step - 1,
                    beat=lambda _: None,
                )  # fmt: skip
                sampler.concurrency_controller.step_completed()
                data = rl.build_datums(batch.rollouts)
                await session.forward_backward_custom(
                    data, rl.make_loss(batch.rollouts, "importance_sampling", 0.2)
                )
                await session.optim_step(adam)
                await session.save_state(f"plain-{step:06d}")
                snap = await syncer.save_only(f"step-{step:06d}")
                await syncer.hotload(snap.snapshot_name, snap.checkpoint_type)
            return time.perf_counter() - started
        finally:
            user.close()
            await sampler.close()
            await session.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--model", default="tiny")
    args = parser.parse_args()
    configure("console", "WARNING")
    from engine.local.stack import EmbeddedStack

    with tempfile.TemporaryDirectory(prefix="bench-engine-") as tmp:
        root = Path(tmp)
        async with EmbeddedStack(root / "stack") as stack:
            conn = ControlPlaneConnection(stack.base_url, stack.api_key, stack.account_id)
            await engine_round(conn, root, 1, args.model, -1)  # creates the job + deployment, warms up
            plain: list[float] = []
            engine: list[float] = []
            for i in range(args.rounds):
                # Alternate which side goes first, so neither always follows the other.
                if i % 2 == 0:
                    plain.append(await plain_round(conn, args.steps, args.model))
                    engine.append(await engine_round(conn, root, args.steps, args.model, i))
                else:
                    engine.append(await engine_round(conn, root, args.steps, args.model, i))
                    plain.append(await plain_round(conn, args.steps, args.model))
                print(f"round {i}: plain {plain[-1]:.2f}s  engine {engine[-1]:.2f}s", flush=True)
    p, e = statistics.median(plain), statistics.median(engine)
    print(f"\n{args.steps} steps x {args.rounds} rounds, model {args.model}")
    print(f"{'plain loop':>12}: {p:8.2f}s  ({p / args.steps:.3f} s/step)")
    print(f"{'engine':>12}: {e:8.2f}s  ({e / args.steps:.3f} s/step)")
    print(f"{'ratio':>12}: {e / p:8.3f}  (target <= 1.03; medians of alternating rounds)")
    outside = statistics.median(OUTSIDE[1:])
    print(f"{'outside':>12}: {outside:8.2%}  of the engine loop's wall time is spent outside the state")
    print(f"{'':>12}  coroutines (journal fsyncs, derived files, events, transitions): engine overhead")


if __name__ == "__main__":
    asyncio.run(main())
