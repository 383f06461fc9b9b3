"""Recovery on vLLM: ``hotloop run`` with a vLLM server it launched itself (``deployment.launch``),
whose process group is SIGKILLed after step 3. The vLLM adapter's health reports the exit, the policy
relaunches the server through the seam (its weights are then the initial ones, so the run owes it a
full reload), and the run finishes on its own: every step once, every row naming an identity vLLM was
read back serving, and the journal recording the decision with vLLM's own account of the exit."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e_run.run_support import check_exactly_once, journal, rows
from support.chaos import pids_with, wait_for_step
from support.launch import hotloop_cli
from vllm_support import ROOT

from engine.backends.vllm import locate_vllm_python

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="session")]
STEPS = 6
KILL_AFTER_STEP = 3
SERVED = "small-heal"
SERVED_ARGS = ("vllm.entrypoints.openai.api_server", f"--served-model-name {SERVED}")  # finds the server


async def _kill_vllm_after(run_dir: Path, step: int, timeout_s: float = 400) -> int:
    """Wait for ``step``'s row, then SIGKILL the launched server's process group; its pid."""
    await wait_for_step(run_dir, step, timeout_s=timeout_s)
    [pid] = pids_with(*SERVED_ARGS)
    os.killpg(pid, signal.SIGKILL)
    return pid


async def test_a_launched_vllm_killed_mid_run_is_relaunched_and_the_run_finishes(
    stack: Any, tmp_path: Path
) -> None:
    if locate_vllm_python() is None:
        pytest.skip("no vLLM install: run scripts/install-vllm.sh (or set HOTLOOP_VLLM_PYTHON)")
    run_dir = tmp_path / "run"
    config = yaml.safe_load((ROOT / "examples" / "vllm.yaml").read_text())
    config.update(
        run_id="vllm-heal", run_dir=str(run_dir), max_steps=STEPS,
        deployment={"kind": "vllm", "served_model_name": SERVED, "launch": {"startup_timeout_s": 300}},
        intervals={"eval_every": 0, "checkpoint_every": 2},
        backend={"kind": "remote", "base_url": stack.base_url, "api_key_env": "HOTLOOP_API_KEY"},
        limits={"stall_s": 300, "ready_timeout_s": 300},
        recovery={"health_every_s": 1},
    )  # fmt: skip
    path = tmp_path / "heal.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "HOTLOOP_API_KEY": stack.api_key, "TINKER_TELEMETRY": "0"}

    (code, out), killed = await asyncio.gather(
        hotloop_cli(["run", str(path), "--no-progress"], env, timeout_s=900),
        _kill_vllm_after(run_dir, KILL_AFTER_STEP),
    )
    assert code == 0, out[-3000:]
    assert pids_with(*SERVED_ARGS) == [], "the run stopped the server it relaunched"

    steps = check_exactly_once(run_dir, STEPS)
    records = journal(run_dir)
    decided = [(r["failure"], r["action"]) for r in records if r["event"] == "recovery"]
    assert decided == [("deployment_failed", "recover_deployment")], decided
    [failure] = [r["error"] for r in records if r["event"] == "exit" and r.get("next") == "failed"]
    assert f"the vLLM server hotloop launched (pid {killed})" in failure and "SIGKILL" in failure, failure
    assert sum(r["event"] == "start" for r in records) == 2  # one recovery, one new attempt

    # Every row names what a committed sync read back from vLLM -- after the relaunch too.
    synced = {r["step"]: r["identity"] for r in rows(run_dir, "checkpoints.jsonl") if r["kind"] == "sync"}
    for row in steps[1:]:
        assert row["snapshot_identity"] == synced[row["policy_version"]], row
    assert max(synced) == STEPS
