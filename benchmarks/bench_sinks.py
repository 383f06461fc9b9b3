"""Metric sinks never slow a run: step time with a hanging sink (and a raising one, and TensorBoard)
vs no sink, side by side.

    .venv/bin/python benchmarks/bench_sinks.py [--steps 40] [--rounds 5]

Runs are whole orchestrator runs on the in-memory fake backends of tests/support/fakes.py, where a step
costs only the engine's own work (state bookkeeping, fsync'd journal records, derived files, events), so any
cost of a sink on the loop would show at its largest. The hanging sink blocks in its first write for
the whole run (its queue of 8 fills, later rows are dropped); the raising sink raises on every row.
Step time = (journal ``done`` - first ``enter``) / steps: setup and the sinks' bounded close are
outside it. Rounds alternate the order of the variants to spread the noise of a shared machine.
Target: hanging sink / no sink <= 1.05 (the noise of a shared 2-core machine is a few %). A sink that
works (TensorBoard) or raises costs its worker thread's CPU, a fraction of a millisecond per row, which
shows against these ~5 ms fake steps and vanishes against real ones (seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import sys
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # tests/support

from support.fakes import planes  # noqa: E402

from engine.journal import read_journal  # noqa: E402
from engine.run.orchestrator import run  # noqa: E402
from engine.run.sinks import MetricSink, SinkRun  # noqa: E402

RELEASE = threading.Event()


class Hanging:
    name = "hanging"

    def open(self, run: SinkRun) -> None:
        return None

    def write(self, row: Mapping[str, Any]) -> None:
        RELEASE.wait()

    def close(self) -> None:
        return None


class Raising:
    name = "raising"

    def open(self, run: SinkRun) -> None:
        return None

    def write(self, row: Mapping[str, Any]) -> None:
        raise RuntimeError("down")

    def close(self) -> None:
        return None


def config(run_dir: Path, steps: int, extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": "tiny", "run_dir": str(run_dir), "max_steps": steps,
        "intervals": {"sync_every": 1, "eval_every": 5, "checkpoint_every": 5},
        "rl": {"prompts_per_step": 2, "group_size": 2}, "eval": {"prompts": 2, "samples_per_prompt": 1},
        "sinks": {"queue_size": 8, "close_timeout_s": 0.2, **extra},
    }  # fmt: skip


async def step_time(run_dir: Path, steps: int, sinks: list[MetricSink], extra: dict[str, Any]) -> float:
    summary = await run(config(run_dir, steps, extra), planes=planes(), sinks=sinks)
    assert summary.status == "done" and summary.steps == steps
    records = read_journal(run_dir / "journal.jsonl")
    first = next(r["t"] for r in records if r.get("event") == "enter")
    done = next(r["t"] for r in records if r.get("event") == "done")
    return (done - first) / steps


async def main(steps: int, rounds: int) -> None:
    variants: dict[str, tuple[list[MetricSink], dict[str, Any]]] = {
        "no sink": ([], {}),
        "hanging sink": ([Hanging()], {}),
        "raising sink": ([Raising()], {}),
    }
    if importlib.util.find_spec("tensorboard") is not None:
        variants["tensorboard"] = ([], {"tensorboard": {}})
    times: dict[str, list[float]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as tmp:
        await step_time(Path(tmp) / "warmup", 3, [], {})  # imports, first-run costs
        for r in range(rounds):
            order = list(variants) if r % 2 == 0 else list(reversed(variants))
            for name in order:
                sinks, extra = variants[name]
                run_dir = Path(tmp) / f"{name.replace(' ', '-')}-{r}"
                times[name].append(await step_time(run_dir, steps, sinks, extra))
    RELEASE.set()
    base = statistics.median(times["no sink"])
    print(f"{steps} steps x {rounds} rounds on fake backends; median step time per variant:")
    for name, ts in times.items():
        med = statistics.median(ts)
        extra = (med - base) * 1000
        print(
            f"  {name:14s} {med * 1000:7.2f} ms/step  ({extra:+.2f} ms)  ratio vs no sink {med / base:5.3f}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.steps, args.rounds))
