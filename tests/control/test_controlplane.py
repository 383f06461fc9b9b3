"""The control plane in-process, supervising stand-in children (fast, no torch): REST, gateway, errors."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from engine.backends.fireworks import (
    AuthenticationError,
    ControlPlaneError,
    DeploymentConfig,
    DeploymentManager,
    NotFoundError,
    TrainerJobConfig,
    TrainerJobFailedError,
    TrainerJobManager,
)
from engine.local.controlplane.plane import ControlPlane
from engine.local.controlplane.server import build_app

STANDIN = str(Path(__file__).with_name("standin_child.py"))
API_KEY = "hl-test-stack-key"


def standin_argv(kind: str, args: list[str]) -> list[str]:
    return [sys.executable, STANDIN, kind, *args]


class Plane:
    def __init__(self, plane: ControlPlane, url: str) -> None:
        self.plane, self.url = plane, url

    def trainers(self) -> TrainerJobManager:
        return TrainerJobManager(API_KEY, self.url)

    def deployments(self) -> DeploymentManager:
        return DeploymentManager(API_KEY, self.url)


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


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_auth_is_required_with_a_clear_message(cp: Plane) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{cp.url}/v1/accounts") as resp:
            assert resp.status == 401
            assert "missing API key" in (await resp.json())["error"]["message"]
        async with http.get(f"{cp.url}/v1/accounts", headers={"X-API-Key": API_KEY}) as resp:
            assert resp.status == 200 and (await resp.json())["accounts"][0]["name"] == "accounts/local"
        async with http.get(f"{cp.url}/v1/accounts", headers={"X-API-Key": f"tml-{API_KEY}"}) as resp:
            assert resp.status == 200  # tinker's required key prefix
        async with http.get(f"{cp.url}/v1/nowhere", headers={"X-API-Key": API_KEY}) as resp:
            assert resp.status == 404
            assert "no route for GET /v1/nowhere" in (await resp.json())["error"]["message"]
    async with TrainerJobManager("hl-wrong", cp.url) as bad:
        with pytest.raises(AuthenticationError, match=r"invalid API key.*Authorization: Bearer"):
            await bad.resolve_account_id()


async def test_invalid_requests_name_the_field(cp: Plane) -> None:
    async with cp.trainers() as tm, cp.deployments() as dm:
        with pytest.raises(NotFoundError, match="rlorTrainerJobs/nope' not found"):
            await tm.get("nope")
        assert await dm.get("nope") is None
        with pytest.raises(ControlPlaneError, match=r"hotLoadTrainerJob: trainer job .*ghost.* not found"):
            await dm.create_or_get(
                DeploymentConfig("d1", "tiny", hot_load_trainer_job="accounts/local/rlorTrainerJobs/ghost")
            )
        with pytest.raises(ControlPlaneError, match=r"trainingConfig.baseModel: unknown model 'nonesuch'"):
            await tm.create(TrainerJobConfig(base_model="nonesuch"))
        path = "/v1/accounts/local/rlorTrainerJobs"
        for rank in (-1, "eight", 100000):
            with pytest.raises(
                ControlPlaneError, match=r"trainingConfig.loraRank: must be an integer"
            ) as info:
                body = {"trainingConfig": {"baseModel": "tiny", "loraRank": rank}}
                await tm.request("POST", path, params={"rlorTrainerJobId": "bad-rank"}, json_body=body)
            assert info.value.status == 400
        with pytest.raises(ControlPlaneError, match="rlorTrainerJobId: 'Not_Valid' is not a valid id"):
            await tm.request("POST", path, params={"rlorTrainerJobId": "Not_Valid"}, json_body={})
    assert cp.plane.jobs == {} and cp.plane.deployments == {}


async def test_jobs_and_deployments_with_supervised_processes(cp: Plane, tmp_path: Path) -> None:
    async with cp.trainers() as tm, cp.deployments() as dm:
        created = await tm.create(TrainerJobConfig(base_model="tiny", lora_rank=4, requested_job_id="job-1"))
        again = await tm.create(TrainerJobConfig(base_model="tiny", lora_rank=4, requested_job_id="job-1"))
        assert again == created  # 409 resolved to the existing job, no second process
        dep = await dm.create_or_get(DeploymentConfig("dep-1", "tiny", hot_load_trainer_job=created.job_name))
        assert dep.state == "CREATING"
        endpoint, ready = await asyncio.gather(
            tm.wait_for_ready("job-1", poll_interval_s=0.1, timeout_s=60),
            dm.wait_for_ready("dep-1", poll_interval_s=0.1, timeout_s=60),
        )
        # A CREATING deployment whose inference probe answers counts as ready (as on Fireworks); the
        # control plane marks it READY once its supervisor saw the child up, moments later.
        async with asyncio.timeout(10):
            while ready.state != "READY":
                await asyncio.sleep(0.05)
                ready = await dm.get("dep-1") or ready
        assert ready.state == "READY"
        assert ready.hot_load_bucket_url == (tmp_path / "jobs" / "job-1" / "bucket").as_uri()
        assert endpoint.base_url == f"{cp.url}/training/v1/rlorTrainerJobs/local/job-1"

        async with aiohttp.ClientSession(headers={"X-API-Key": f"tml-{API_KEY}"}) as http:
            # Gateway: the trainer sees its own path and none of the caller's credentials.
            async with http.post(f"{endpoint.base_url}/api/v1/echo?x=1", data=b"z" * 300_000) as resp:
                echoed = await resp.json()
            assert echoed["path"] == "/api/v1/echo" and echoed["query"] == "x=1" and echoed["size"] == 300_000
            assert API_KEY not in json.dumps(echoed)
            # Long-poll-like answers are streamed through, never cut short by a gateway deadline.
            async with http.get(f"{endpoint.base_url}/api/v1/slow?delay=1.5&chunks=3") as resp:
                assert await resp.text() == "chunk0\nchunk1\nchunk2\n"
            # LoRA rank mismatch between job and client is refused with a clear message.
            async with http.post(
                f"{endpoint.base_url}/api/v1/create_model", json={"lora_config": {"rank": 8}}
            ) as resp:
                assert resp.status == 400
                assert "lora_rank mismatch" in (await resp.json())["error"]["message"]
            async with http.post(
                f"{endpoint.base_url}/api/v1/create_model", json={"lora_config": {"rank": "four"}}
            ) as resp:
                assert resp.status == 400
                assert "lora_config.rank" in (await resp.json())["error"]["message"]
            async with http.post(
                f"{endpoint.base_url}/api/v1/create_model", json={"lora_config": {"rank": 4}}
            ) as resp:
                assert resp.status == 200

        # Inference routed by body model; hot-load routed by the fireworks-deployment header.
        assert await dm.hotload_and_wait("dep-1", "tiny", "snap-1", poll_interval=0.1)
        assert await dm.warmup(dm.model_name("dep-1"), max_retries=1)
        status = await dm.hotload_check_status("dep-1", "tiny")
        assert status["replicas"][0]["fireworks_deployment"] == "accounts/local/deployments/dep-1"

        # Checkpoints: training states and sampler snapshots of the job, oldest first, paginated.
        job_dir = tmp_path / "jobs" / "job-1"
        (job_dir / "state" / "run-a" / "weights" / "ckpt-1").mkdir(parents=True)
        (job_dir / "bucket" / "snap-1").mkdir(parents=True)
        (job_dir / "bucket" / "snap-1" / "manifest.json").write_text(json.dumps({"kind": "base"}))
        (job_dir / "bucket" / "snap-2").mkdir()
        (job_dir / "bucket" / "snap-2" / "manifest.json").write_text(json.dumps({"kind": "delta"}))
        rows = await tm.list_checkpoints("job-1", page_size=1)
        assert [r["name"].rsplit("/", 1)[-1] for r in rows] == ["ckpt-1", "snap-1", "snap-2"]
        assert [r["promotable"] for r in rows] == [False, True, False]
        with pytest.raises(ControlPlaneError, match="pageToken") as bad_page:
            path = "/v1/accounts/local/rlorTrainerJobs/job-1/checkpoints"
            await tm.request("GET", path, params={"pageToken": "-1"})
        assert bad_page.value.status == 400

        # A crashed trainer shows FAILED with its exit reason; resume brings it back.
        pid = (await tm.get("job-1"))["hotloop"]["pid"]
        os.kill(pid, signal.SIGKILL)
        for _ in range(200):
            job = await tm.get("job-1")
            if job["state"] == "JOB_STATE_FAILED":
                break
            await asyncio.sleep(0.05)
        assert job["state"] == "JOB_STATE_FAILED" and "killed by SIGKILL" in job["status"]["message"]
        with pytest.raises(TrainerJobFailedError, match="killed by SIGKILL"):
            await tm.wait_for_ready("job-1")
        async with (
            aiohttp.ClientSession(headers={"Authorization": f"Bearer {API_KEY}"}) as http,
            http.get(f"{endpoint.base_url}/api/v1/healthz") as resp,
        ):
            assert resp.status == 503 and resp.headers["Retry-After"] == "1"
        back = await tm.reconnect_and_wait("job-1", poll_interval_s=0.1, timeout_s=60)
        assert back == endpoint
        job = await tm.get("job-1")
        assert job["hotloop"]["pid"] not in (None, pid) and job["hotloop"]["restarts"] == 1

        # PATCH with updateMask, scale to zero and back, then delete.
        updated = await dm.update(
            "dep-1", {"hotLoadTransitionType": "SYNC", "description": "x"}, "hot_load_transition_type"
        )
        assert updated.hot_load_transition_type == "SYNC" and updated.raw["description"] != "x"
        with pytest.raises(ControlPlaneError, match="updateMask: field"):
            await dm.update("dep-1", {"baseModel": "small"}, "base_model")
        dep_pid = (await dm.get("dep-1")).raw["hotloop"]["pid"]  # type: ignore[union-attr]
        zero = await dm.scale_to_zero("dep-1")
        assert zero.raw["maxReplicaCount"] == 0
        for _ in range(200):
            if not alive(dep_pid):
                break
            await asyncio.sleep(0.05)
        assert not alive(dep_pid)
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {API_KEY}"}) as http:
            body = {"model": "accounts/local/deployments/dep-1", "prompt": [1]}
            async with http.post(f"{cp.url}/inference/v1/completions", json=body) as resp:
                assert resp.status == 503 and "not serving" in (await resp.json())["error"]["message"]
        await dm.update("dep-1", {"maxReplicaCount": 1}, "max_replica_count")
        await dm.wait_for_ready("dep-1", poll_interval_s=0.1, timeout_s=60)
        await dm.delete("dep-1")
        await tm.delete("job-1")
        for _ in range(200):
            if await dm.get("dep-1") is None and (await tm.get("job-1"))["state"] == "JOB_STATE_DELETED":
                break
            await asyncio.sleep(0.05)
        assert await dm.get("dep-1") is None
        with pytest.raises(TrainerJobFailedError, match="DELETED"):
            await tm.wait_for_ready("job-1")
        with pytest.raises(ControlPlaneError, match="cannot be recreated"):
            await tm.create(TrainerJobConfig(base_model="tiny", lora_rank=4, requested_job_id="job-1"))
    pids = [r.child.pid for r in [*cp.plane.jobs.values()] if r.child and r.child.returncode is None]
    assert pids == []


async def test_child_that_fails_to_start_shows_failed_with_reason(
    cp: Plane, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STANDIN_FAIL_START", "1")
    async with cp.trainers() as tm:
        await tm.create(TrainerJobConfig(base_model="tiny", requested_job_id="job-bad"))
        with pytest.raises(TrainerJobFailedError) as info:
            await tm.wait_for_ready("job-bad", poll_interval_s=0.1, timeout_s=60)
    assert "exited with code 3" in str(info.value) and "refusing to start" in str(info.value)


async def test_a_restarted_control_plane_restores_its_resources(tmp_path: Path) -> None:
    async def serve(plane: ControlPlane) -> tuple[web.AppRunner, str]:
        runner = web.AppRunner(build_app(plane, API_KEY))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"

    first = ControlPlane(tmp_path, child_argv=standin_argv, startup_timeout_s=60)
    runner, url = await serve(first)
    try:
        async with TrainerJobManager(API_KEY, url) as tm, DeploymentManager(API_KEY, url) as dm:
            kept = await tm.create(TrainerJobConfig(base_model="tiny", lora_rank=2, requested_job_id="kept"))
            await tm.create(TrainerJobConfig(base_model="tiny", requested_job_id="gone"))
            await dm.create_or_get(DeploymentConfig("dep-k", "tiny", hot_load_trainer_job=kept.job_name))
            await tm.wait_for_ready("kept", poll_interval_s=0.1, timeout_s=60)
            await tm.delete("gone")
    finally:
        await first.close()
        await runner.cleanup()

    second = ControlPlane(tmp_path, child_argv=standin_argv, startup_timeout_s=60)
    runner, url = await serve(second)
    try:
        second.restore()
        async with TrainerJobManager(API_KEY, url) as tm, DeploymentManager(API_KEY, url) as dm:
            endpoint = await tm.reconnect_and_wait("kept", poll_interval_s=0.1, timeout_s=60)
            assert endpoint.lora_rank == 2 and (await tm.get("kept"))["hotloop"]["restarts"] == 1
            assert (await tm.get("gone"))["state"] == "JOB_STATE_DELETED"
            ready = await dm.wait_for_ready("dep-k", poll_interval_s=0.1, timeout_s=60)
            assert ready.hot_load_bucket_url == (tmp_path / "jobs" / "kept" / "bucket").as_uri()
    finally:
        await second.close()
        await runner.cleanup()


async def test_reattach_points_a_deployment_at_a_new_trainer_bucket(cp: Plane, tmp_path: Path) -> None:
    async with cp.trainers() as tm, cp.deployments() as dm:
        old = await tm.create(TrainerJobConfig(base_model="tiny", requested_job_id="old-job"))
        new = await tm.create(TrainerJobConfig(base_model="tiny", requested_job_id="new-job"))
        await dm.create_or_get(DeploymentConfig("dep-r", "tiny", hot_load_trainer_job=old.job_name))
        async with asyncio.TaskGroup() as tg:
            tg.create_task(dm.wait_for_ready("dep-r", poll_interval_s=0.1, timeout_s=60))
            tg.create_task(tm.wait_for_ready("old-job", poll_interval_s=0.1, timeout_s=60))
        first_pid = (await dm.get("dep-r")).raw["hotloop"]["pid"]  # type: ignore[union-attr]
        info = await dm.reattach_trainer(
            "dep-r", trainer_job_name=new.job_name, poll_interval_s=0.1, hot_load_transition_type="SYNC"
        )
        assert info.hot_load_trainer_job == new.job_name and info.hot_load_transition_type == "SYNC"
        assert info.hot_load_bucket_url == (tmp_path / "jobs" / "new-job" / "bucket").as_uri()
        assert info.raw["hotloop"]["pid"] not in (None, first_pid)  # the serving process was rolled
        with pytest.raises(ControlPlaneError, match=r"hotLoadTrainerJob: trainer job .*missing.* not found"):
            await dm.reattach_trainer("dep-r", trainer_job_name="accounts/local/rlorTrainerJobs/missing")


def test_malformed_records_are_skipped_on_restore(tmp_path: Path) -> None:
    from engine.local.controlplane import store

    for kind, name in (("jobs", store.JOB_FILE), ("deployments", store.DEPLOYMENT_FILE)):
        for rid, text in (("torn", "{"), ("partial", '{"job_id": "partial"}'), ("array", "[1]")):
            (tmp_path / kind / rid).mkdir(parents=True)
            (tmp_path / kind / rid / name).write_text(text)
    assert store.load_jobs(tmp_path) == [] and store.load_deployments(tmp_path) == []
