"""Configs and checks shared by the run-engine end-to-end tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from support.run_checks import check_exactly_once as check_exactly_once  # re-exported for the tests

from engine.run.planes import ControlPlaneConnection


def tiny_config(run_dir: Path, run_id: str, **overrides: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "recipe": "rl",
        "model": "tiny",
        "run_id": run_id,
        "run_dir": str(run_dir),
        "max_steps": 3,
        "learning_rate": 1e-3,
        "intervals": {"sync_every": 1, "eval_every": 2, "checkpoint_every": 1},
        "rl": {"prompts_per_step": 2, "group_size": 4, "max_tokens": 4},
        "sft": {"batch_size": 4},
        "eval": {"prompts": 4, "samples_per_prompt": 1, "max_tokens": 4},
        "limits": {"stall_s": 180, "ready_timeout_s": 300},
    }
    cfg.update(overrides)
    return cfg


def connection(stack: Any) -> ControlPlaneConnection:
    return ControlPlaneConnection(base_url=stack.base_url, api_key=stack.api_key, account_id=stack.account_id)


def remote(stack: Any) -> dict[str, Any]:
    return {"kind": "remote", "base_url": stack.base_url, "api_key_env": "HOTLOOP_API_KEY"}


def rows(run_dir: Path, name: str = "metrics.jsonl") -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / name).read_text().splitlines() if line.strip()]


def journal(run_dir: Path) -> list[dict[str, Any]]:
    return rows(run_dir, "journal.jsonl")


async def served_identity(stack: Any, deployment_id: str) -> str | None:
    """Ask the deployment (through the control plane's hot-load API) what it serves."""
    from engine.backends.fireworks import DeploymentManager

    async with DeploymentManager(stack.api_key, stack.base_url) as mgr:
        await mgr.resolve_account_id()
        status = await mgr.hotload_check_status(deployment_id, "tiny")
    ident = status["replicas"][0].get("current_snapshot_identity")
    return ident or None


async def restored_optimizer_steps(stack: Any, job_id: str, state_path: str) -> int:
    """Load a committed training state (with its optimizer) into a new model on the trainer and
    ask the trainer how many optimizer steps that state has applied (hotloop extension endpoint)."""
    from engine.backends.tinker import TrainingSession

    base_url = f"{stack.base_url}/training/v1/rlorTrainerJobs/{stack.account_id}/{job_id}"
    session = await TrainingSession.from_state(base_url, stack.api_key, state_path, with_optimizer=True)
    try:
        info = await session.trainer_info()
        assert info is not None
        return int(info["optimizer_steps"])
    finally:
        await session.close()
