"""A run whose trainer is a Tinker service (``hotloop serve trainer`` standing in, reached only by URL
and key: no control plane) and whose deployment is a real vLLM (examples/tinker-vllm.yaml): each
snapshot is an external weights export, downloaded through its signed URLs and hot-loaded into vLLM.
Killed mid-run and resumed, it loses and repeats no step, and its eval score rises."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e_run.run_support import check_exactly_once, journal, rows
from support.launch import TRAINER_URL_KEY, hotloop_cli, launched, serve_argv
from vllm_support import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="session")]
KEY = "tml-tinker-vllm-test-key"
STEPS = 10


@pytest.fixture(scope="module")
def tinker_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("tinker-service")
    argv = serve_argv(
        "trainer", model="small", bucket=root / "bucket", extra=["--state-dir", str(root / "state"),
                                                                  "--api-key-env", "TRAINER_KEY"],
    )  # fmt: skip
    env = {"TINKER_TELEMETRY": "0", "TRAINER_KEY": KEY}
    with launched(
        argv, TRAINER_URL_KEY, timeout_s=180, extra_env=env, log_path=root / "trainer.log"
    ) as server:
        yield server.url


async def test_a_tinker_trainer_with_vllm_resumes_after_a_kill(
    vllm: Any, tinker_service: str, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    config = yaml.safe_load((ROOT / "examples" / "tinker-vllm.yaml").read_text())
    config.update(
        run_id="tinker-vllm", run_dir=str(run_dir), max_steps=STEPS,
        intervals={"eval_every": 5, "checkpoint_every": 2},
        limits={"stall_s": 300, "ready_timeout_s": 300},
    )  # fmt: skip
    path = tmp_path / "tinker-vllm.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {
        **os.environ, "TINKER_BASE_URL": tinker_service, "TINKER_API_KEY": KEY,
        "HOTLOOP_VLLM_URL": vllm.ref.attrs["base_url"], "TINKER_TELEMETRY": "0",
    }  # fmt: skip

    code, out = await hotloop_cli(
        ["run", str(path), "--no-progress"], {**env, "HOTLOOP_FAULT": "kill:TRAINING@5:exit"}
    )
    assert code == -signal.SIGKILL, out[-3000:]
    assert not (run_dir / "stack").exists()  # no control plane was started
    code, out = await hotloop_cli(["resume", str(run_dir), "--no-progress"], env)
    assert code == 0, out[-3000:]

    check_exactly_once(run_dir, STEPS)
    evals = [r for r in rows(run_dir) if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [0, 5, 10]
    assert evals[-1]["score"] > evals[0]["score"] + 0.1, evals  # 0.14 -> 0.3 in probe runs
    ledger = rows(run_dir, "checkpoints.jsonl")
    snapshots = [r for r in ledger if r["kind"] == "snapshot"]
    assert snapshots and {r["checkpoint_type"] for r in snapshots} == {"base"}  # exports are full
    assert sum(r["event"] == "start" for r in journal(run_dir)) == 2
    # Each synced snapshot went through an export download into the run directory.
    synced = [r["identity"] for r in ledger if r["kind"] == "sync"]
    assert all((run_dir / "tinker-exports" / ident / "manifest.json").exists() for ident in synced)
