"""Chaos runs: a ``hotloop run`` subprocess whose trainer, deployment or control plane is killed at
seeded moments, or whose planes sit behind fault-injecting proxies (support.chaos), and what came of
it -- exit status, output, journal, rows, and a table of fault kind x plane: injected, recovered,
steps lost, steps repeated, seconds to recover. Shared by tests/chaos and benchmarks/bench_chaos.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from support.chaos import Injection, pids_with, step_rows, wait_for_step
from support.launch import hotloop_cli

Part = Literal["trainer", "deployment", "control_plane"]
COLLECTED: list[ChaosResult] = []  # the chaos tests' results, for the table printed at the end


def chaos_config(run_dir: Path, run_id: str, max_steps: int, **over: Any) -> dict[str, Any]:
    """The ``tiny`` demo shape, small and quick to recover: a full state every 2 steps, short waits."""
    cfg: dict[str, Any] = {
        "recipe": "rl",
        "model": "tiny",
        "run_id": run_id,
        "run_dir": str(run_dir),
        "max_steps": max_steps,
        "learning_rate": 1e-3,
        "intervals": {"sync_every": 1, "eval_every": max(2, max_steps // 2), "checkpoint_every": 2},
        "rl": {"prompts_per_step": 2, "group_size": 4, "max_tokens": 4},
        "eval": {"prompts": 4, "samples_per_prompt": 1, "max_tokens": 4},
        "limits": {"stall_s": 120, "ready_timeout_s": 180},
        "recovery": {"health_every_s": 1.0, "backoff_s": 0.5, "deadline_s": 300},
    }
    cfg.update(over)
    return cfg


@dataclass
class Strike:
    """Kill ``part`` once the run committed ``step``, ``delay_s`` into the next one."""

    part: Part
    step: int
    delay_s: float = 0.0
    killed_at: float | None = None  # wall clock, as the journal's ``t``
    pids: list[int] = field(default_factory=list)
    committed_at_kill: int = 0


def part_pids(part: Part, stack_root: Path, job_id: str) -> list[int]:
    """The processes of a part of a stack whose state directory is ``stack_root``."""
    if part == "control_plane":
        return pids_with("engine.cli", " up ", str(stack_root))
    kind = "trainer" if part == "trainer" else "deployment"
    return pids_with("serve", kind, str(stack_root / "jobs" / job_id))


@dataclass
class ChaosResult:
    rc: int
    output: str
    run_dir: Path
    max_steps: int
    wall_s: float
    strikes: list[Strike]
    injections: list[Injection]

    @property
    def journal(self) -> list[dict[str, Any]]:
        lines = (self.run_dir / "journal.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    @property
    def rows(self) -> list[dict[str, Any]]:
        return step_rows(self.run_dir)

    def recoveries(self) -> list[dict[str, Any]]:
        return [r for r in self.journal if r["event"] == "recovery"]

    def steps_lost(self) -> int:
        return self.max_steps - len({r["step"] for r in self.rows})

    def steps_repeated(self) -> int:
        return len(self.rows) - len({r["step"] for r in self.rows})

    def recovered_in(self, strike: Strike) -> float | None:
        """Seconds from the kill until the run made progress again: the first fact (a step, a sync,
        a checkpoint) committed by the generation that started after the kill (the kill's own
        recovery), else by any attempt. A kill at the last sync is recovered by that sync."""
        if strike.killed_at is None:
            return None
        restarted = any(r["event"] == "start" and r["t"] >= strike.killed_at for r in self.journal)
        seen_start = not restarted
        for rec in self.journal:
            if rec.get("t", 0) < strike.killed_at:
                continue
            seen_start = seen_start or rec["event"] == "start"
            if rec["event"] != "exit" or not seen_start:
                continue
            if rec.get("records"):
                return float(rec["t"]) - strike.killed_at
        return None

    def steps_redone(self) -> int:
        """Steps committed by a failed attempt after its restore point, trained again by the next."""
        committed, redone = 0, 0
        for rec in self.journal:
            if rec["event"] == "start" and rec.get("resume_from") is not None:
                redone += max(0, committed - int(rec["resume_from"]))
            for fact in rec.get("records") or [] if rec["event"] == "exit" else []:
                if fact.get("kind") == "step":
                    committed = max(committed, int(fact["row"]["step"]))
        return redone


@dataclass(frozen=True)
class TableRow:
    kind: str
    plane: str
    injected: int
    recovered: int
    steps_lost: int
    steps_repeated: int
    seconds: float | None  # mean seconds to recover, over the recovered ones


def fault_table(results: Sequence[ChaosResult]) -> list[TableRow]:
    """Fault kind x plane over every run. A proxy's fault is recovered once its plane answered a
    request that arrived after it; a kill once the generation that recovered from it committed a
    fact. Steps lost/repeated are those of the runs the faults were in."""
    groups: dict[tuple[str, str], list[tuple[bool, float | None, ChaosResult]]] = {}
    for result in results:
        done = result.rc == 0
        for inj in result.injections:
            ok = done and inj.recovered_at is not None
            groups.setdefault((inj.kind, inj.plane), []).append((ok, inj.seconds_to_recover, result))
        for strike in result.strikes:
            if strike.killed_at is None:
                continue
            seconds = result.recovered_in(strike)
            ok = seconds is not None  # it committed new steps after the kill (a budget may end it later)
            groups.setdefault(("kill", strike.part), []).append((ok, seconds, result))
    rows = []
    for (kind, plane), seen in sorted(groups.items()):
        times = [s for ok, s, _ in seen if ok and s is not None]
        runs = {id(r): r for _, _, r in seen}.values()
        rows.append(
            TableRow(
                kind, plane, len(seen), sum(ok for ok, _, _ in seen),
                sum(r.steps_lost() for r in runs), sum(r.steps_repeated() for r in runs),
                round(sum(times) / len(times), 2) if times else None,
            )
        )  # fmt: skip
    return rows


def format_table(rows: Sequence[TableRow]) -> str:
    head = f"{'fault':<11} {'plane':<16} {'injected':>8} {'recovered':>9} {'lost':>5} {'repeated':>8}"
    head += f" {'s to recover':>12}"
    lines = [head, "-" * len(head)]
    for r in rows:
        secs = "-" if r.seconds is None else f"{r.seconds:.2f}"
        lines.append(
            f"{r.kind:<11} {r.plane:<16} {r.injected:>8} {r.recovered:>9} {r.steps_lost:>5} "
            f"{r.steps_repeated:>8} {secs:>12}"
        )
    return "\n".join(lines)


async def _strike(strike: Strike, run_dir: Path, find: Callable[[Part], list[int]], timeout_s: float) -> None:
    await wait_for_step(run_dir, strike.step, timeout_s=timeout_s)
    await asyncio.sleep(strike.delay_s)
    strike.committed_at_kill = max((r["step"] for r in step_rows(run_dir)), default=0)
    strike.pids = find(strike.part)
    strike.killed_at = time.time()
    for pid in strike.pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


async def chaos_run(
    cfg: dict[str, Any],
    *,
    env: dict[str, str],
    strikes: Sequence[Strike] = (),
    find: Callable[[Part], list[int]] = lambda part: [],
    injections: Callable[[], list[Injection]] = list,
    also: Sequence[Callable[[], Awaitable[None]]] = (),
    timeout_s: float = 600.0,
    args: Sequence[str] | None = None,
) -> ChaosResult:
    """Write ``cfg``, run it (or ``args``), carry out ``strikes`` (and ``also``) while it goes."""
    run_dir = Path(cfg["run_dir"])
    path = run_dir.parent / f"{run_dir.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    started = time.monotonic()
    command = list(args) if args is not None else ["run", str(path), "--no-progress"]
    run = asyncio.create_task(hotloop_cli(command, {**env, "TINKER_TELEMETRY": "0"}, timeout_s))
    helpers = [asyncio.create_task(_strike(s, run_dir, find, timeout_s)) for s in strikes]
    helpers += [asyncio.create_task(fn()) for fn in also]
    try:
        rc, output = await run
    finally:
        for task in helpers:
            task.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
    (run_dir.parent / f"{run_dir.name}.out").write_text(output)  # the run's own output, kept for a reader
    return ChaosResult(
        rc, output, run_dir, int(cfg["max_steps"]), time.monotonic() - started, list(strikes), injections()
    )
