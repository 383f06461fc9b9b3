"""A loop that heals itself: the ``tiny`` demo shape run as ``hotloop run`` while its parts are broken
at seeded moments -- the trainer and the deployment processes killed, the control plane killed, every
network fault kind on every plane, a recovery budget run out -- and in each case the run finishes on
its own (or, past its budget, fails naming the cause and resumes), every step row exactly once, the
trainer's optimizer step count equal to max_steps, and no log line repeated more than a handful of
times. ``SEED`` picks every moment and schedule; a failure reproduces with the same seed."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from e2e_run.run_support import restored_optimizer_steps, rows, served_identity
from support.chaos import FaultProxy, SeededMoments, repeated_lines, seeded_faults
from support.chaos_run import COLLECTED, ChaosResult, Strike, chaos_config, chaos_run, part_pids
from support.launch import hotloop_cli

pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.asyncio(loop_scope="session")]

SEED = int(os.environ.get("HOTLOOP_CHAOS_SEED", "14"))
MAX_REPEATS = 5  # "a handful": an identical log line (timestamp aside) at most this often


def remote(stack: Any, **urls: str) -> dict[str, Any]:
    return {
        "kind": "remote",
        "base_url": urls.pop("rest", stack.base_url),
        "api_key_env": "HOTLOOP_API_KEY",
        **urls,
    }


def env_for(stack: Any) -> dict[str, str]:
    return {**os.environ, "HOTLOOP_API_KEY": stack.api_key}


def check_finished(result: ChaosResult) -> None:
    assert result.rc == 0, result.output[-4000:]
    steps = result.rows
    assert [r["step"] for r in steps] == list(range(1, result.max_steps + 1)), "each step's row exactly once"
    assert [r["optimizer_steps"] for r in steps] == list(range(1, result.max_steps + 1))
    assert result.journal[-1]["event"] == "done"


def check_quiet(result: ChaosResult) -> None:
    worst = repeated_lines(result.output)
    assert not worst or worst[0][0] <= MAX_REPEATS, (
        f"a log line repeats {worst[0][0]} times: {worst[0][1][:300]}"
    )
    assert "Traceback" not in result.output, "a retried or recovered error is a line, not a traceback"
    assert "Telemetry queue full" not in result.output


async def test_trainer_and_deployment_killed_once_the_run_heals_itself(
    chaos_stack: Any, tmp_path: Path
) -> None:
    moments = SeededMoments(SEED)
    steps = 10
    trainer_at, trainer_delay = moments.pick(2, 4)
    deployment_at, deployment_delay = moments.pick(6, 8)
    strikes = [
        Strike("trainer", trainer_at, trainer_delay),
        Strike("deployment", deployment_at, deployment_delay),
    ]
    cfg = chaos_config(tmp_path / "kills", "kills", steps, backend=remote(chaos_stack))
    result = await chaos_run(
        cfg,
        env=env_for(chaos_stack),
        strikes=strikes,
        find=lambda part: part_pids(part, chaos_stack.root_dir, "kills-trainer"),
    )
    COLLECTED.append(result)
    check_finished(result)
    check_quiet(result)
    assert all(s.pids for s in strikes), "each part was found and killed"
    decided = result.recoveries()
    assert [(r["failure"], r["action"]) for r in decided] == [
        ("trainer_failed", "reconnect_trainer"),
        ("deployment_failed", "recover_deployment"),
    ]
    failures = [r["error"] for r in result.journal if r["event"] == "exit" and r.get("next") == "failed"]
    assert "trainer job 'kills-trainer' is FAILED: trainer process killed by SIGKILL" in failures[0]
    assert "deployment 'kills-serving' is FAILED: deployment process killed by SIGKILL" in failures[1]
    assert not any("is stuck" in f for f in failures)
    # The trainer's own count: the final full state, loaded back with its optimizer, has max_steps.
    ledger = rows(result.run_dir, "checkpoints.jsonl")
    states = [r for r in ledger if r["kind"] == "state"]
    assert states[-1]["step"] == steps
    assert await restored_optimizer_steps(chaos_stack, "kills-trainer", states[-1]["path"]) == steps
    last_sync = [r for r in ledger if r["kind"] == "sync"][-1]
    assert (
        last_sync["step"] == steps
        and await served_identity(chaos_stack, "kills-serving") == last_sync["identity"]
    )


async def test_the_control_plane_killed_is_restarted_and_its_children_recovered(tmp_path: Path) -> None:
    """The run starts its own embedded stack (backend: embedded) and restarts it when it dies; the
    new control plane restores the trainer job and the deployment from its state directory."""
    moments = SeededMoments(SEED + 1)
    at, delay = moments.pick(2, 4)
    run_dir = tmp_path / "cp"
    strike = Strike("control_plane", at, delay)
    result = await chaos_run(
        chaos_config(run_dir, "cp", 8),
        env=dict(os.environ),
        strikes=[strike],
        find=lambda part: part_pids(part, run_dir / "stack", "cp-trainer"),
    )
    COLLECTED.append(result)
    check_finished(result)
    check_quiet(result)
    assert strike.pids, "the control plane was found and killed"
    (decided,) = result.recoveries()
    assert decided["failure"] == "control_plane_down" and decided["action"] == "restart_control_plane"
    assert "the embedded control plane" in decided["cause"] and "killed by SIGKILL" in decided["cause"]
    assert not part_pids("control_plane", run_dir / "stack", "cp-trainer"), "nothing outlives the run"
    assert not part_pids("trainer", run_dir / "stack", "cp-trainer")


PLANES = {
    "rest": (lambda method, path: path.startswith("/v1/accounts/"), 4, 30),
    "trainer_gateway": (lambda method, path: "/api/v1/" in path and "heartbeat" not in path, 10, 60),
    "inference": (lambda method, path: path.endswith("/completions"), 14, 80),
    "hot_load": (lambda method, path: "/hot_load/" in path, 3, 28),
}


async def test_every_network_fault_on_every_plane_changes_nothing(chaos_stack: Any, tmp_path: Path) -> None:
    proxies: dict[str, FaultProxy] = {}
    for offset, (plane, (match, first, last)) in enumerate(PLANES.items()):
        proxies[plane] = FaultProxy(
            plane,
            chaos_stack.base_url,
            seeded_faults(SEED + 10 + offset, first=first, last=last),
            match=match,
        )
        await proxies[plane].start()
    try:
        backend = remote(
            chaos_stack,
            rest=proxies["rest"].url,
            trainer_gateway_url=proxies["trainer_gateway"].url,
            inference_url=proxies["inference"].url,
            hotload_api_url=proxies["hot_load"].url,
        )
        result = await chaos_run(
            chaos_config(tmp_path / "net", "net", 10, backend=backend),
            env=env_for(chaos_stack),
            injections=lambda: [i for p in proxies.values() for i in p.injections],
        )
    finally:
        for proxy in proxies.values():
            await proxy.close()
    COLLECTED.append(result)
    check_finished(result)
    check_quiet(result)
    assert {p: proxies[p].pending for p in proxies} == dict.fromkeys(proxies, 0), "every fault was injected"
    assert len(result.injections) == 20 and all(i.recovered_at is not None for i in result.injections)


async def test_an_exhausted_budget_fails_naming_the_cause_and_resume_finishes(
    chaos_stack: Any, tmp_path: Path
) -> None:
    moments = SeededMoments(SEED + 2)
    first, _ = moments.pick(2, 3)
    strikes = [Strike("trainer", first, 0.3), Strike("trainer", first + 3, 0.3)]
    recovery = {"health_every_s": 1.0, "backoff_s": 0.5, "max_per_hour": 1}
    cfg = chaos_config(tmp_path / "budget", "budget", 8, backend=remote(chaos_stack), recovery=recovery)
    result = await chaos_run(
        cfg,
        env=env_for(chaos_stack),
        strikes=strikes,
        find=lambda part: part_pids(part, chaos_stack.root_dir, "budget-trainer"),
    )
    COLLECTED.append(result)
    assert result.rc == 1, result.output[-3000:]
    check_quiet(result)
    named = "trainer job 'budget-trainer' is FAILED: trainer process killed by SIGKILL"
    assert named in result.output
    assert (
        "recovery budget exhausted: 1 recoveries in the last hour (recovery.max_per_hour: 1)" in result.output
    )
    assert [r["action"] for r in result.recoveries()] == ["reconnect_trainer", "fail"]
    # A person resumes it: the same command the CLI prints, a fresh budget.
    code, out = await hotloop_cli(["resume", str(result.run_dir), "--no-progress"], env_for(chaos_stack), 300)
    assert code == 0, out[-3000:]
    resumed = ChaosResult(code, out, result.run_dir, 8, 0.0, [], [])
    check_finished(resumed)
    check_quiet(resumed)
