"""Model aliases through the control plane: a job or deployment whose base model is an alias runs the
embedded model, and the trainer is told to answer to the alias (no symlinks, no renamed files)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from aiohttp import web

from engine.backends.fireworks import DeploymentConfig, DeploymentManager, TrainerJobConfig, TrainerJobManager
from engine.local.aliases import AliasError, parse_aliases
from engine.local.controlplane.plane import ControlPlane
from engine.local.controlplane.resources import ApiError, local_model
from engine.local.controlplane.server import build_app

STANDIN = str(Path(__file__).with_name("standin_child.py"))
API_KEY = "hl-test-alias-key"


def test_parse_aliases() -> None:
    assert parse_aliases(["Qwen/Qwen3-8B=small", "Qwen/Qwen3-4B"], "tiny") == {
        "Qwen/Qwen3-8B": "small",
        "Qwen/Qwen3-4B": "tiny",
    }
    for bad, why in [
        (["=small"], "NAME or NAME=MODEL"),
        (["x="], "NAME or NAME=MODEL"),
        (["a=b", "a=c"], "twice"),
    ]:
        with pytest.raises(AliasError, match=why):
            parse_aliases(bad, "tiny")
    with pytest.raises(AliasError, match="set --model"):
        parse_aliases(["Qwen/Qwen3-8B"], None)


def test_local_model_resolves_aliases_first() -> None:
    aliases = {"Qwen/Qwen3-8B": "tiny"}
    assert local_model("Qwen/Qwen3-8B", "baseModel", None, aliases=aliases) == "tiny"
    # A Fireworks-style resource name matches an alias of its short name.
    assert (
        local_model("accounts/fireworks/models/qwen3-8b", "baseModel", None, aliases={"qwen3-8b": "tiny"})
        == "tiny"
    )
    with pytest.raises(ApiError, match="unknown model 'Qwen/Qwen3-4B'"):
        local_model("Qwen/Qwen3-4B", "baseModel", None, aliases=aliases)
    with pytest.raises(ApiError, match="alias 'Qwen/Qwen3-8B'"):
        local_model("Qwen/Qwen3-8B", "baseModel", None, aliases={"Qwen/Qwen3-8B": "no-such-model"})


async def test_alias_jobs_and_deployments_run_the_embedded_model(tmp_path: Path) -> None:
    launched: list[tuple[str, list[str]]] = []

    def argv(kind: str, args: list[str]) -> list[str]:
        launched.append((kind, args))
        return [sys.executable, STANDIN, kind, *args]

    plane = ControlPlane(tmp_path, aliases={"Qwen/Qwen3-8B": "tiny"}, child_argv=argv, startup_timeout_s=60)
    runner = web.AppRunner(build_app(plane, API_KEY))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with TrainerJobManager(API_KEY, url) as tm, DeploymentManager(API_KEY, url) as dm:
            job = await tm.create(TrainerJobConfig(base_model="Qwen/Qwen3-8B", requested_job_id="aliased"))
            await tm.wait_for_ready("aliased", poll_interval_s=0.1, timeout_s=60)
            assert (await tm.get("aliased"))["hotloop"]["model"] == "tiny"
            # Same local model: a deployment named by the alias (or by the model) links to the job.
            await dm.create_or_get(
                DeploymentConfig("dep-a", "Qwen/Qwen3-8B", hot_load_trainer_job=job.job_name)
            )
            await dm.wait_for_ready("dep-a", poll_interval_s=0.1, timeout_s=60)
    finally:
        await plane.close()
        await runner.cleanup()
    trainer_args = next(args for kind, args in launched if kind == "trainer")
    assert trainer_args[trainer_args.index("--model") + 1] == "tiny"
    assert trainer_args[trainer_args.index("--alias") + 1] == "Qwen/Qwen3-8B"
    deployment_args = next(args for kind, args in launched if kind == "deployment")
    assert deployment_args[deployment_args.index("--model") + 1] == "tiny"
