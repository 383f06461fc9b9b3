"""The control plane's catalog in Fireworks' shape (in-process, stand-in children): training shapes
that Fireworks' own ``resolve_training_profile`` resolves, base and promoted models, and checkpoint
promotion (base only), with 4xx naming the field for everything else."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from engine.backends.fireworks import TrainerJobConfig
from engine.local.controlplane.plane import ControlPlane
from engine.local.controlplane.server import build_app

from .test_controlplane import API_KEY, Plane, standin_argv

SHAPE = "accounts/fireworks/trainingShapes/tiny"


@pytest.fixture
async def cp(tmp_path: Path) -> AsyncIterator[Plane]:
    plane = ControlPlane(tmp_path, child_argv=standin_argv, startup_timeout_s=60)
    runner = web.AppRunner(build_app(plane, API_KEY))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield Plane(plane, f"http://127.0.0.1:{runner.addresses[0][1]}")
    finally:
        await plane.close()
        await runner.cleanup()


async def _call(cp: Plane, method: str, path: str, body: Any = None, **params: str) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession(headers={"X-Api-Key": API_KEY}) as http,
        http.request(method, cp.url + path, json=body, params=params or None) as resp,
    ):
        return resp.status, await resp.json()


async def test_fireworks_sdk_resolves_the_embedded_shapes(cp: Plane) -> None:
    from fireworks.training.sdk import FireworksClient

    def resolve(shape: str) -> Any:
        with FireworksClient(api_key=API_KEY, base_url=cp.url) as client:
            return client.resolve_training_profile(shape)

    latest = await asyncio.to_thread(resolve, SHAPE)
    pinned = await asyncio.to_thread(resolve, f"{SHAPE}/versions/1")
    for profile in (latest, pinned):
        assert profile.training_shape_version == f"{SHAPE}/versions/1"
        assert profile.training_shape == SHAPE
        assert profile.max_supported_context_length == 1024 and profile.node_count == 1
        assert profile.trainer_mode == "POLICY_TRAINER" and profile.deployment_shape is None
    with pytest.raises(RuntimeError, match="HTTP 404"):
        await asyncio.to_thread(resolve, "accounts/fireworks/trainingShapes/qwen3-8b")


async def test_shape_routes_answer_fireworks_json_and_name_what_exists(cp: Plane) -> None:
    status, shape = await _call(cp, "GET", f"/v1/{SHAPE}")
    assert status == 200 and shape["baseModel"] == "accounts/fireworks/models/tiny"
    status, page = await _call(
        cp, "GET", f"/v1/{SHAPE}/versions", filter="latest_validated=true", pageSize="1"
    )
    assert status == 200 and page["trainingShapeVersions"][0]["snapshot"]["acceleratorType"] == "CPU"
    status, err = await _call(cp, "GET", f"/v1/{SHAPE}/versions/7")
    assert status == 404 and "version '7'" in err["error"]["message"]
    status, err = await _call(cp, "GET", "/v1/accounts/fireworks/trainingShapes/nope")
    assert status == 404 and "accounts/fireworks/trainingShapes/small" in err["error"]["message"]
    status, err = await _call(cp, "GET", "/v1/accounts/local/trainingShapes/tiny")
    assert status == 404  # Fireworks' public shapes live in the fireworks account


async def test_models_by_fireworks_resource_name(cp: Plane) -> None:
    status, model = await _call(cp, "GET", "/v1/accounts/fireworks/models/tiny")
    assert status == 200 and model["kind"] == "HF_BASE_MODEL" and model["baseModelDetails"]["moe"] is False
    status, listed = await _call(cp, "GET", "/v1/accounts/fireworks/models")
    assert status == 200 and {m["name"] for m in listed["models"]} >= {"accounts/fireworks/models/tiny"}
    status, err = await _call(cp, "GET", "/v1/accounts/fireworks/models/qwen3-8b")
    assert status == 404 and "not found" in err["error"]["message"]


async def test_shape_path_job_must_train_the_shapes_model(cp: Plane) -> None:
    body = {"serviceMode": True, "trainingConfig": {"baseModel": "accounts/fireworks/models/small"}}
    path = "/v1/accounts/local/rlorTrainerJobs"
    status, err = await _call(
        cp, "POST", path, body, trainingShape=f"{SHAPE}/versions/1", rlorTrainerJobId="j1"
    )
    assert status == 400 and "trainingConfig.baseModel" in err["error"]["message"]
    status, err = await _call(cp, "POST", path, body, trainingShape="accounts/x/trainingShapes/tiny")
    assert status == 400 and err["error"]["message"].startswith("trainingShape:")


def _snapshot(bucket: Path, name: str, kind: str) -> None:
    (bucket / name).mkdir(parents=True)
    (bucket / name / "manifest.json").write_text(json.dumps({"format": "hotloop-snapshot/1", "kind": kind}))


async def test_promotion_of_base_checkpoints_only(cp: Plane, tmp_path: Path) -> None:
    async with cp.trainers() as mgr:
        await mgr.resolve_account_id()
        created = await mgr.create(
            TrainerJobConfig(base_model="accounts/fireworks/models/tiny", requested_job_id="promo-job")
        )
    job = cp.plane.job(created.job_id)
    _snapshot(job.bucket, "step_00001-aaaa0000", "base")
    _snapshot(job.bucket, "step_00002-aaaa0000", "delta")
    body = {
        "output_model": "accounts/local/models/my-model",
        "trainer_job_id": created.job_name,
        "base_model": "accounts/fireworks/models/tiny",
        "async_promotion": True,
    }
    promote = "/v1/accounts/local/checkpoints/{}:promote"
    status, err = await _call(cp, "POST", promote.format("step_00002-aaaa0000"), body)
    assert status == 412 and "a delta is not promotable" in err["error"]["message"]
    status, answer = await _call(cp, "POST", promote.format("step_00001-aaaa0000"), body)
    assert status == 200 and answer["model"]["name"] == "accounts/local/models/my-model"
    assert answer["model"]["state"] == "READY" and answer["model"]["kind"] == "HF_BASE_MODEL"
    status, err = await _call(cp, "POST", promote.format("step_00001-aaaa0000"), body)
    assert status == 409 and "already exists" in err["error"]["message"]
    for field, value, expect in (
        ("output_model", "accounts/other/models/x", "output_model"),
        ("output_model", "accounts/local/models/Bad_Id", "output_model"),
        ("base_model", "accounts/fireworks/models/small", "base_model"),
        ("trainer_job_id", "nope", "trainer_job_id"),
    ):
        status, err = await _call(cp, "POST", promote.format("step_00001-aaaa0000"), {**body, field: value})
        assert status == 400 and err["error"]["message"].startswith(expect), (field, err)
    status, err = await _call(
        cp, "POST", promote.format("missing"), {**body, "output_model": body["output_model"] + "2"}
    )
    assert status == 404 and "not found" in err["error"]["message"]
    status, model = await _call(cp, "GET", "/v1/accounts/local/models/my-model")
    assert status == 200 and model["hotloop"]["checkpoint"].endswith("/checkpoints/step_00001-aaaa0000")
    # Promoted models are records on disk: a restarted control plane still has them.
    from engine.local.controlplane.catalog import Catalog

    assert "my-model" in Catalog(cp.plane.root).models


async def test_promotion_of_per_run_snapshots_by_name_or_identity(cp: Plane) -> None:
    async with cp.trainers() as mgr:
        await mgr.resolve_account_id()
        created = await mgr.create(
            TrainerJobConfig(base_model="accounts/fireworks/models/tiny", requested_job_id="run-job")
        )
    job = cp.plane.job(created.job_id)
    # The trainer keeps sampler snapshots per training run: BUCKET/<run>/<name>.
    _snapshot(job.bucket, "s1:train:0/only-here", "base")
    _snapshot(job.bucket, "s1:train:0/shared", "base")
    _snapshot(job.bucket, "s2:train:0/shared", "base")
    body = {
        "trainer_job_id": created.job_name,
        "base_model": "accounts/fireworks/models/tiny",
    }
    promote = "/v1/accounts/local/checkpoints/{}:promote"
    status, answer = await _call(
        cp, "POST", promote.format("only-here"), {**body, "output_model": "accounts/local/models/m1"}
    )
    assert status == 200, answer
    hot = answer["model"]["hotloop"]
    assert hot["snapshot"] == str(job.bucket / "s1:train:0" / "only-here")
    assert hot["snapshotIdentity"] == "s1:train:0/only-here"
    assert await asyncio.to_thread(Path(hot["snapshot"], "manifest.json").is_file)  # a real snapshot
    # Two runs with one name: a 409 naming both identities, nothing promoted.
    status, err = await _call(
        cp, "POST", promote.format("shared"), {**body, "output_model": "accounts/local/models/m2"}
    )
    assert status == 409, err
    assert "s1:train:0/shared" in err["error"]["message"] and "s2:train:0/shared" in err["error"]["message"]
    status, _ = await _call(cp, "GET", "/v1/accounts/local/models/m2")
    assert status == 404
    # The identity itself (its '/' URL-encoded) picks one.
    status, answer = await _call(
        cp,
        "POST",
        promote.format("s2:train:0%2Fshared"),
        {**body, "output_model": "accounts/local/models/m2"},
    )
    assert status == 200, answer
    assert answer["model"]["hotloop"]["snapshot"] == str(job.bucket / "s2:train:0" / "shared")
    status, err = await _call(
        cp,
        "POST",
        promote.format("s3:train:0%2Fshared"),
        {**body, "output_model": "accounts/local/models/m3"},
    )
    assert status == 404 and "not found" in err["error"]["message"]
