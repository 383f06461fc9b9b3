"""Asynchronous RL (``rl.async_rollouts``, k = 1) against synchronous RL, measured side by side.

    .venv/bin/python benchmarks/bench_async.py              # scripted planes (seconds)
    .venv/bin/python benchmarks/bench_async.py --demo [--rounds 2] [--steps 20]   # the embedded demo

Scripted planes: the fake trainer and deployment of tests/support/fakes.py with fixed sleeps, sampling
time S per batch, training time T per step, hot-load time ``sync``, for S = T, S = 2T and S = T/2,
with a deployment that keeps sampling through hot-loads and one that drains around them. Steps per
second are steady-state (journal time from the exit of TRAINING at step 2 to the last one), and
``ideal = (S + T + sync) / (max(S, T) + sync)``. Target: measured / ideal >= 0.9.

Demo: examples/async-rl.yaml and the same config without ``async_rollouts`` on one embedded stack,
alternating which goes first per round; steps per second as above, the spread across rounds, and
the reward each reached after equal wall time (the time the faster run took).
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # tests/support

from engine.config import dump_config, load_config  # noqa: E402
from engine.journal import read_journal  # noqa: E402
from engine.log import configure  # noqa: E402
from engine.run.orchestrator import run  # noqa: E402


def training_exits(run_dir: Path) -> list[tuple[int, float]]:
    """(step, journal time) of every committed TRAINING exit."""
    out = []
    for rec in read_journal(run_dir / "journal.jsonl"):
        if rec["event"] == "exit" and rec["state"] == "training" and rec.get("next") != "failed":
            out.append((int(rec["step"]) + 1, float(rec["t"])))
    return out


def steps_per_s(run_dir: Path, first: int = 2) -> float:
    exits = [(s, t) for s, t in training_exits(run_dir) if s >= first]
    (s0, t0), (s1, t1) = exits[0], exits[-1]
    return (s1 - s0) / (t1 - t0)


# ---- scripted planes ----------------------------------------------------------------------------


async def scripted_run(
    mode: str, steps: int, s_s: float, t_s: float, sync_s: float, per_completion: bool
) -> float:
    """Steady-state steps per second of one run on scripted planes."""
    from support.fakes import Timings, planes

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        rl: dict[str, Any] = {"prompts_per_step": 4, "group_size": 2}
        if mode == "async":
            rl["async_rollouts"] = {"max_staleness": 1}
        cfg = {
            "model": "tiny", "run_dir": str(run_dir), "max_steps": steps, "rl": rl,
            "intervals": {"sync_every": 1, "eval_every": 0, "checkpoint_every": steps},
        }  # fmt: skip
        timings = Timings(sample_s=s_s, train_s=t_s, hotload_s=sync_s)
        await run(cfg, planes=planes(per_completion_identity=per_completion, timings=timings))
        return steps_per_s(run_dir)


async def scripted(steps: int, t_s: float, sync_s: float, rounds: int) -> None:
    print(
        f"scripted planes: T = {t_s:g}s training, sync = {sync_s:g}s hot-load, {steps} steps, k = 1, "
        f"median of {rounds} rounds (alternating which mode goes first)"
    )
    head = ("S/T", "deployment", "sync st/s", "async st/s", "ratio", "ideal", "meas/ideal")
    print(" ".join(f"{h:>{w}}" for h, w in zip(head, (5, 10, 10, 10, 7, 7, 10), strict=True)))
    worst = float("inf")
    for s_over_t in (1.0, 2.0, 0.5):
        s_s = s_over_t * t_s
        ideal = (s_s + t_s + sync_s) / (max(s_s, t_s) + sync_s)
        for per_completion in (True, False):
            samples: dict[str, list[float]] = {"sync": [], "async": []}
            for r in range(rounds):
                for mode in ("sync", "async") if r % 2 == 0 else ("async", "sync"):
                    samples[mode].append(await scripted_run(mode, steps, s_s, t_s, sync_s, per_completion))
            rates = {mode: statistics.median(v) for mode, v in samples.items()}
            ratio = rates["async"] / rates["sync"]
            worst = min(worst, ratio / ideal)
            kind = "keep" if per_completion else "drain"
            print(
                f"{s_over_t:>5g} {kind:>10} {rates['sync']:>10.2f} {rates['async']:>10.2f} "
                f"{ratio:>7.3f} {ideal:>7.3f} {ratio / ideal:>10.3f}"
            )
    print(f"worst measured/ideal: {worst:.3f} (target >= 0.9)")


# ---- the embedded demo --------------------------------------------------------------------------


def reward_by(run_dir: Path, seconds: float) -> tuple[float | None, float | None, int]:
    """(mean train reward of the last 3 steps, last eval score, steps) reached ``seconds`` after the
    run's first TRAINING entry."""
    records = read_journal(run_dir / "journal.jsonl")
    start = next(float(r["t"]) for r in records if r["event"] == "enter" and r["state"] == "training")
    rewards: list[float] = []
    score = None
    for rec in records:
        if rec["event"] != "exit" or float(rec["t"]) - start > seconds:
            continue
        for fact in rec.get("records") or []:
            if fact["kind"] == "step":
                rewards.append(float(fact["row"]["reward_mean"]))
            elif fact["kind"] == "eval":
                score = float(fact["row"]["score"])
    tail = rewards[-3:]
    return (sum(tail) / len(tail) if tail else None), score, len(rewards)


def step_parts(run_dir: Path) -> tuple[float, float, float]:
    """(S, T, rest): mean sampling and training seconds per step from the rows, and what else a step
    takes on the learner path (checkpoint, hot-load, evaluations amortized, bookkeeping)."""
    rows = [
        f["row"]
        for rec in read_journal(run_dir / "journal.jsonl") if rec["event"] == "exit"
        for f in rec.get("records") or [] if f["kind"] == "step"
    ]  # fmt: skip
    s = statistics.mean(float(r["sample_s"]) for r in rows[1:])
    t = statistics.mean(float(r["train_s"]) for r in rows[1:])
    return s, t, max(0.0, 1.0 / steps_per_s(run_dir) - s - t)


def train_seconds(run_dir: Path) -> float:
    records = read_journal(run_dir / "journal.jsonl")
    start = next(float(r["t"]) for r in records if r["event"] == "enter" and r["state"] == "training")
    return training_exits(run_dir)[-1][1] - start


async def demo(rounds: int, steps: int, keep: Path | None) -> None:
    from engine.local.stack import EmbeddedStack
    from engine.run.planes import ControlPlaneConnection

    base = dump_config(load_config(REPO / "examples" / "async-rl.yaml", {"max_steps": steps}))
    sync_cfg = {**base, "rl": {**base["rl"], "async_rollouts": None}}
    results: dict[str, list[Path]] = {"sync": [], "async": []}
    with tempfile.TemporaryDirectory() as tmp:
        if keep is not None:
            tmp = str(keep)
        async with EmbeddedStack(Path(tmp) / "stack") as stack:
            conn = ControlPlaneConnection(stack.base_url, stack.api_key, stack.account_id)
            for r in range(rounds):
                order = ("sync", "async") if r % 2 == 0 else ("async", "sync")
                for mode in order:
                    cfg = dict(base if mode == "async" else sync_cfg)
                    run_dir = Path(tmp) / f"{mode}-{r}"
                    cfg.update(run_dir=str(run_dir), run_id=f"bench-{mode}-{r}")
                    started = time.monotonic()
                    summary = await run(cfg, connection=conn)
                    print(
                        f"round {r} {mode:>5}: {summary.steps} steps in {time.monotonic() - started:.1f}s, "
                        f"{steps_per_s(run_dir):.3f} steps/s, eval {summary.eval_score_first} -> "
                        f"{summary.eval_score_last}",
                        flush=True,
                    )
                    results[mode].append(run_dir)
            pairs = list(zip(results["async"], results["sync"], strict=True))
            ratios = [steps_per_s(a) / steps_per_s(s) for a, s in pairs]
            print(
                f"\ndemo ({base['model']}, {steps} steps, k = 1): async/sync steps per second "
                f"{statistics.mean(ratios):.3f} (rounds: {', '.join(f'{x:.3f}' for x in ratios)}; "
                f"spread {max(ratios) - min(ratios):.3f})"
            )
            for r, (a, s) in enumerate(pairs):
                s_s, t_s, rest = step_parts(s)
                ideal = (s_s + t_s + rest) / (max(s_s, t_s) + rest)
                ratio = steps_per_s(a) / steps_per_s(s)
                print(
                    f"round {r}: sync step = S {s_s:.2f}s + T {t_s:.2f}s + rest {rest:.2f}s; ideal "
                    f"{ideal:.3f}, measured {ratio:.3f}, measured/ideal {ratio / ideal:.3f}"
                )
                equal = min(train_seconds(a), train_seconds(s))
                ra, ea, na = reward_by(a, equal)
                rs, es, ns = reward_by(s, equal)
                print(
                    f"  after {equal:.1f}s of training: async {na} steps, reward {ra:.3f}, eval {ea} | "
                    f"sync {ns} steps, reward {rs:.3f}, eval {es}"
                )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", action="store_true", help="the embedded demo instead of scripted planes")
    parser.add_argument("--rounds", type=int, default=None, help="default: 3 scripted, 2 demo")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--keep", type=Path, default=None, help="demo: keep the run directories here")
    parser.add_argument("--train-s", type=float, default=0.1, help="scripted: T")
    parser.add_argument("--sync-s", type=float, default=0.02, help="scripted: the hot-load time")
    args = parser.parse_args()
    configure("console", "WARNING")
    if args.demo:
        asyncio.run(demo(args.rounds or 2, args.steps or 20, args.keep))
    else:
        asyncio.run(scripted(args.steps or 20, args.train_s, args.sync_s, args.rounds or 3))
    return 0


if __name__ == "__main__":
    sys.exit(main())
