"""Recovery under chaos: the fault table, and a soak whose processes must stay flat.

    .venv/bin/python benchmarks/bench_chaos.py [--seed 14]          # the fault table (a few minutes)
    .venv/bin/python benchmarks/bench_chaos.py --soak [--steps 520] [--every 50]

Table: the ``tiny`` demo shape (tests/support/chaos_run.py) run as ``hotloop run`` three times --
the trainer and the deployment processes killed once each at seeded moments; the run's own embedded
control plane killed; every network fault kind (reset, stall, truncate, 5xx, 429) on every plane
(control-plane REST, trainer gateway, inference, hot-load) through fault-injecting proxies -- and,
per fault kind x plane: injected, recovered, steps lost, steps repeated, mean seconds to recover (a
proxy fault: until its plane answered a request that arrived after it; a kill: until the generation
that recovered from it committed its first fact: a step, a sync, a checkpoint).

Soak: one run of ``--steps`` steps on a stack behind the proxies, with a fault every ``--every``
steps (seeded jitter), rotating through a trainer kill, a burst of network faults on one plane, a
deployment kill; RSS and open file descriptors of every process (the run, the control plane, the
trainer, the deployment -- the last two are new processes after their kills) sampled at the start
and every fault, printed at the end. They must stay flat.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from support.chaos import (  # noqa: E402
    KINDS,
    Fault,
    FaultProxy,
    Resources,
    SeededMoments,
    pids_with,
    repeated_lines,
    resources,
    seeded_faults,
    step_rows,
    wait_for_step,
)
from support.chaos_run import (  # noqa: E402
    ChaosResult,
    Strike,
    chaos_config,
    chaos_run,
    fault_table,
    format_table,
    part_pids,
)

from engine.local.stack import EmbeddedStack  # noqa: E402

PLANES = {
    "rest": lambda method, path: path.startswith("/v1/accounts/"),
    "trainer_gateway": lambda method, path: "/api/v1/" in path and "heartbeat" not in path,
    "inference": lambda method, path: path.endswith("/completions"),
    "hot_load": lambda method, path: "/hot_load/" in path,
}
RANGES = {"rest": (4, 30), "trainer_gateway": (10, 60), "inference": (14, 80), "hot_load": (3, 28)}


def remote(stack: EmbeddedStack, proxies: dict[str, FaultProxy] | None = None) -> dict[str, Any]:
    if proxies is None:
        return {"kind": "remote", "base_url": stack.base_url, "api_key_env": "HOTLOOP_API_KEY"}
    return {
        "kind": "remote",
        "base_url": proxies["rest"].url,
        "api_key_env": "HOTLOOP_API_KEY",
        "trainer_gateway_url": proxies["trainer_gateway"].url,
        "inference_url": proxies["inference"].url,
        "hotload_api_url": proxies["hot_load"].url,
    }


async def proxies_for(stack: EmbeddedStack, seed: int | None) -> dict[str, FaultProxy]:
    out = {}
    for offset, (plane, match) in enumerate(PLANES.items()):
        lo, hi = RANGES[plane]
        faults = seeded_faults(seed + offset, first=lo, last=hi) if seed is not None else []
        out[plane] = FaultProxy(plane, stack.base_url, faults, match=match)
        await out[plane].start()
    return out


def report(result: ChaosResult, name: str) -> None:
    worst = repeated_lines(result.output)
    print(
        f"{name}: exit {result.rc}, {len(result.rows)} rows for {result.max_steps} steps, "
        f"{len(result.recoveries())} recovery decisions, {result.steps_redone()} steps redone, "
        f"most repeated log line x{worst[0][0] if worst else 1}, {result.wall_s:.0f} s",
        flush=True,
    )
    if worst:
        print(f"  (that line: {worst[0][1][:200]})")


async def table(seed: int, root: Path) -> None:
    results: list[ChaosResult] = []
    async with EmbeddedStack(root / "stack") as stack:
        env = {**os.environ, "HOTLOOP_API_KEY": stack.api_key}
        moments = SeededMoments(seed)
        (t_at, t_delay), (d_at, d_delay) = moments.pick(2, 4), moments.pick(6, 8)
        strikes = [Strike("trainer", t_at, t_delay), Strike("deployment", d_at, d_delay)]
        kills = await chaos_run(
            chaos_config(root / "kills", "kills", 10, backend=remote(stack)),
            env=env,
            strikes=strikes,
            find=lambda part: part_pids(part, stack.root_dir, "kills-trainer"),
        )
        report(kills, "trainer + deployment killed")
        results.append(kills)
        proxies = await proxies_for(stack, seed + 10)
        try:
            net = await chaos_run(
                chaos_config(root / "net", "net", 10, backend=remote(stack, proxies)),
                env=env,
                injections=lambda: [i for p in proxies.values() for i in p.injections],
            )
        finally:
            for proxy in proxies.values():
                await proxy.close()
        report(net, "every network fault on every plane")
        results.append(net)
    at, delay = SeededMoments(seed + 1).pick(2, 4)
    cp_dir = root / "cp"
    cp = await chaos_run(
        chaos_config(cp_dir, "cp", 8),
        env=dict(os.environ),
        strikes=[Strike("control_plane", at, delay)],
        find=lambda part: part_pids(part, cp_dir / "stack", "cp-trainer"),
    )
    report(cp, "embedded control plane killed")
    results.append(cp)
    print()
    print(format_table(fault_table(results)))


# ---- soak ---------------------------------------------------------------------------------------


def sample(roles: dict[str, list[int]]) -> dict[str, tuple[int, Resources | None]]:
    out: dict[str, tuple[int, Resources | None]] = {}
    for role, pids in roles.items():
        for pid in pids[:1]:
            out[role] = (pid, resources(pid))
    return out


def fmt(res: tuple[int, Resources | None] | None) -> str:
    if res is None or res[1] is None:
        return "-"
    pid, r = res
    return f"pid {pid}: {r.rss_bytes / 2**20:.0f} MiB, {r.open_fds} fds"


async def soak(seed: int, steps: int, every: int, root: Path) -> None:
    rng = random.Random(seed)
    async with EmbeddedStack(root / "stack") as stack:
        proxies = await proxies_for(stack, None)
        env = {**os.environ, "HOTLOOP_API_KEY": stack.api_key}
        cfg = chaos_config(
            root / "soak", "soak", steps, backend=remote(stack, proxies),
            intervals={"sync_every": 1, "eval_every": 100, "checkpoint_every": 10},
            recovery={"health_every_s": 2.0, "backoff_s": 1.0, "max_per_hour": 30},
        )  # fmt: skip
        run_dir = Path(cfg["run_dir"])
        samples: list[tuple[int, dict[str, tuple[int, Resources | None]]]] = []
        strikes: list[Strike] = []
        plan: list[tuple[int, str]] = []

        def roles() -> dict[str, list[int]]:
            return {
                "run": pids_with("engine.cli", " run ", str(root / "soak.yaml")),
                "control plane": [stack.pid] if stack.pid else [],
                "trainer": part_pids("trainer", stack.root_dir, "soak-trainer"),
                "deployment": part_pids("deployment", stack.root_dir, "soak-trainer"),
            }

        async def chaos() -> None:
            await wait_for_step(run_dir, 5, timeout_s=600)
            samples.append((5, sample(roles())))
            rotation = ["trainer", "network", "deployment", "network"]
            at, n = 5, 0
            while True:
                at += every + rng.randint(-every // 5, every // 5)
                if at >= steps - 10:
                    break
                what = rotation[n % len(rotation)]
                n += 1
                await wait_for_step(run_dir, at, timeout_s=1800)
                samples.append((at, sample(roles())))
                if what == "network":
                    plane = list(PLANES)[rng.randrange(len(PLANES))]
                    proxy = proxies[plane]
                    for i, kind in enumerate(KINDS):
                        proxy.add(
                            Fault(
                                kind,
                                proxy.matched + 3 + 4 * i,
                                stall_s=2.0,
                                upstream_first=rng.random() < 0.5,
                            )
                        )
                    plan.append((at, f"network faults on {plane}"))
                else:
                    strike = Strike(what, at, round(rng.uniform(0.0, 1.2), 3))  # type: ignore[arg-type]
                    await asyncio.sleep(strike.delay_s)
                    strike.committed_at_kill = max((r["step"] for r in step_rows(run_dir)), default=0)
                    strike.pids = part_pids(strike.part, stack.root_dir, "soak-trainer")
                    strike.killed_at = time.time()
                    for pid in strike.pids:
                        os.kill(pid, 9)
                    strikes.append(strike)
                    plan.append((at, f"{what} killed"))
            await wait_for_step(run_dir, steps - 2, timeout_s=1800)
            samples.append((steps - 2, sample(roles())))

        result = await chaos_run(
            cfg, env=env, also=[chaos], timeout_s=7200,
            injections=lambda: [i for p in proxies.values() for i in p.injections],
        )  # fmt: skip
        result.strikes = strikes
        for proxy in proxies.values():
            await proxy.close()
    report(result, f"soak ({steps} steps, a fault every ~{every})")
    print("faults:", "; ".join(f"step {s}: {w}" for s, w in plan))
    print()
    print(format_table(fault_table([result])))
    print()
    print(
        f"{'at step':>8}  "
        + "  ".join(f"{role:<30}" for role in ("run", "control plane", "trainer", "deployment"))
    )
    for at, snap in samples:
        print(
            f"{at:>8}  "
            + "  ".join(
                f"{fmt(snap.get(role)):<30}" for role in ("run", "control plane", "trainer", "deployment")
            )
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--soak", action="store_true")
    parser.add_argument("--steps", type=int, default=520)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--keep", type=Path, default=None, help="keep the run directories here")
    args = parser.parse_args()
    os.environ.setdefault("TINKER_TELEMETRY", "0")
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-chaos-"))
    root.mkdir(parents=True, exist_ok=True)
    if args.soak:
        asyncio.run(soak(args.seed, args.steps, args.every, root))
    else:
        asyncio.run(table(args.seed, root))
    print(f"\nrun directories: {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
