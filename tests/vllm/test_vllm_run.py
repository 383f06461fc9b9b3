"""``hotloop run`` with the embedded trainer and a real vLLM deployment (examples/vllm.yaml's shape):
killed in SYNCING and resumed, it loses and repeats no step, its eval score rises, and every metrics
row names an identity vLLM was read back serving."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e_run.run_support import check_exactly_once, journal, rows
from support.launch import hotloop_cli
from vllm_support import ROOT

from engine.backends.vllm import VllmAdminClient

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="session")]
STEPS = 10


async def test_the_demo_on_vllm_killed_in_syncing_resumes_exactly(
    vllm: Any, stack: Any, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    config = yaml.safe_load((ROOT / "examples" / "vllm.yaml").read_text())
    config.update(
        run_id="vllm-demo", run_dir=str(run_dir), max_steps=STEPS,
        intervals={"eval_every": 5, "checkpoint_every": 2},
        backend={"kind": "remote", "base_url": stack.base_url, "api_key_env": "HOTLOOP_API_KEY"},
        limits={"stall_s": 300, "ready_timeout_s": 300},
    )  # fmt: skip
    path = tmp_path / "vllm.yaml"
    path.write_text(yaml.safe_dump(config))
    url = vllm.ref.attrs["base_url"]
    env = {**os.environ, "HOTLOOP_API_KEY": stack.api_key, "HOTLOOP_VLLM_URL": url, "TINKER_TELEMETRY": "0"}

    code, out = await hotloop_cli(
        ["run", str(path), "--no-progress"], {**env, "HOTLOOP_FAULT": "kill:SYNCING@3:exit"}
    )
    assert code == -signal.SIGKILL, out[-3000:]
    assert journal(run_dir)[-1]["event"] == "enter" and journal(run_dir)[-1]["state"] == "syncing"
    code, out = await hotloop_cli(["resume", str(run_dir), "--no-progress"], env)
    assert code == 0, out[-3000:]

    steps = check_exactly_once(run_dir, STEPS)
    evals = [r for r in rows(run_dir) if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [0, 5, 10]
    assert evals[-1]["score"] > evals[0]["score"] + 0.1, evals  # 0.14 -> 0.3 in probe runs
    # Every row names an identity that a committed sync verified vLLM to serve, for its policy.
    synced = {r["step"]: r["identity"] for r in rows(run_dir, "checkpoints.jsonl") if r["kind"] == "sync"}
    for row in steps[1:]:
        assert row["snapshot_identity"] == synced[row["policy_version"]], row
    admin = VllmAdminClient(url)
    try:
        assert await admin.weight_version() == synced[STEPS]
    finally:
        await admin.aclose()
