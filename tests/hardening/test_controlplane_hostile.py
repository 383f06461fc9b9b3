"""`hotloop up` under hostile input: a 4xx naming the field, still answering, RSS bounded; and, with
stand-in children in-process, what the gateway and the stored records guarantee."""

from __future__ import annotations

import asyncio
import gzip
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest

from engine.local.controlplane.plane import ControlPlane
from engine.local.controlplane.server import build_app
from engine.local.http_server import make_runner, start_site

from .support import Target, assert_rejected, bounded_growth, gzip_bomb, nested

JOBS = "/v1/accounts/local/rlorTrainerJobs"
DEPS = "/v1/accounts/local/deployments"
STANDIN = str(Path(__file__).parent.parent / "control" / "standin_child.py")
KEY = "hl-gateway-test-key"


@pytest.fixture(scope="module")
def http(stack_proc: Target) -> Any:
    with stack_proc.client() as client:
        yield client


def _job(**training: Any) -> dict[str, Any]:
    return {"trainingConfig": {"baseModel": "nonesuch-model", **training}}


def test_requests_without_the_key_or_with_odd_header_bytes(stack_proc: Target) -> None:
    with httpx.Client(base_url=stack_proc.url, timeout=10) as anon:
        assert anon.get("/v1/accounts").status_code == 401
        r = anon.get("/v1/accounts", headers={"Authorization": b"Bearer \xff\xfe"})
        assert_rejected(r, 400, "header Authorization")


def test_bodies_are_small_strict_json(
    stack_proc: Target, http: httpx.Client, measurements: dict[str, Any]
) -> None:
    json_headers = {"Content-Type": "application/json"}
    with bounded_growth(stack_proc, "control plane 5 MB body, gzip 1 GB, nested JSON, NaN", measurements):
        r = http.post(JOBS, params={"rlorTrainerJobId": "big"}, json=_job(description="x" * (5 << 20)))
        assert_rejected(r, 413, "body")
        for path in (JOBS, "/inference/v1/completions"):
            r = http.post(path, content=gzip_bomb(), headers={**json_headers, "Content-Encoding": "gzip"})
            assert_rejected(r, 413, "body")
        assert_rejected(http.post(JOBS, content=nested(), headers=json_headers), 400, "nested")
        raw = b'{"trainingConfig": {"baseModel": "tiny", "learningRate": NaN}}'
        r = http.post(JOBS, params={"rlorTrainerJobId": "nan"}, content=raw, headers=json_headers)
        assert_rejected(r, 400, "NaN")
        raw = b'{"trainingConfig": {"baseModel": "tiny", "learningRate": 1e400}}'
        r = http.post(JOBS, params={"rlorTrainerJobId": "inf"}, content=raw, headers=json_headers)
        assert_rejected(r, 400, "out of range")
        r = http.post(
            JOBS,
            params={"rlorTrainerJobId": "s"},
            content=b'{"displayName": "\\udc80"}',
            headers=json_headers,
        )
        assert_rejected(r, 400, "displayName")
        r = http.post(
            DEPS, params={"deploymentId": "d"}, json={"baseModel": "tiny", "minReplicaCount": "\u0661"}
        )
        assert_rejected(r, 400, "minReplicaCount")
        r = http.post(JOBS, params={"rlorTrainerJobId": "lr"}, json=_job(learningRate="NaN"))
        assert_rejected(r, 400, "trainingConfig.learningRate")
    assert http.get(JOBS).json()["rlorTrainerJobs"] == []  # nothing was stored or started


def test_base_model_paths_do_not_reveal_what_exists(http: httpx.Client, tmp_path: Path) -> None:
    messages = []
    for path in ("/etc", str(tmp_path), "/surely/not/here", "../etc"):
        r = http.post(
            JOBS, params={"rlorTrainerJobId": "probe"}, json={"trainingConfig": {"baseModel": path}}
        )
        messages.append(assert_rejected(r, 400, "trainingConfig.baseModel").replace(repr(path), "PATH"))
    assert len(set(messages)) == 1, messages  # same answer whether the directory exists or not


# ----------------------------------------------------------------- in-process, stand-in children


def _standin(kind: str, args: list[str]) -> list[str]:
    return [sys.executable, STANDIN, kind, *args]


@pytest.fixture
async def cp(tmp_path: Path) -> AsyncIterator[tuple[ControlPlane, str]]:
    plane = ControlPlane(tmp_path, child_argv=_standin, startup_timeout_s=60)
    runner = make_runner(build_app(plane, KEY))  # as `hotloop up` runs it: handler cancellation on
    await runner.setup()
    port = await start_site(runner, "127.0.0.1", 0)
    try:
        yield plane, f"http://127.0.0.1:{port}"
    finally:
        await plane.close()
        await runner.cleanup()


async def _ready(http: aiohttp.ClientSession, url: str, kind: str, rid: str) -> dict[str, Any]:
    for _ in range(600):
        async with http.get(f"{url}/v1/accounts/local/{kind}/{rid}") as resp:
            record: dict[str, Any] = await resp.json()
        if record["state"] in ("JOB_STATE_RUNNING", "READY"):
            return record
        await asyncio.sleep(0.05)
    raise AssertionError(f"{kind}/{rid} never became ready: {record}")


async def test_children_have_their_own_keys_and_the_gateway_holds_them(cp: tuple[ControlPlane, str]) -> None:
    plane, url = cp
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY}"}) as http:
        body = {"trainingConfig": {"baseModel": "tiny"}, "junk": "x" * 100_000, "displayName": "j"}
        async with http.post(f"{url}{JOBS}", params={"rlorTrainerJobId": "job"}, json=body) as resp:
            assert resp.status == 200
        dep = {"baseModel": "tiny", "hotLoadTrainerJob": "accounts/local/rlorTrainerJobs/job"}
        async with http.post(f"{url}{DEPS}", params={"deploymentId": "dep"}, json=dep) as resp:
            assert resp.status == 200
        job = await _ready(http, url, "rlorTrainerJobs", "job")
        await _ready(http, url, "deployments", "dep")
        assert "junk" not in job and job["displayName"] == "j"  # records keep known fields only
        trainer_url, dep_url = job["hotloop"]["trainerUrl"], plane.deployments["dep"].url
        keys = {plane.jobs["job"].child_key, plane.deployments["dep"].child_key}
        assert None not in keys and len(keys) == 2 and KEY not in keys
        for record in (plane.jobs["job"], plane.deployments["dep"]):
            assert record.child is not None and record.child.pid is not None and record.child_key is not None
            cmdline = await asyncio.to_thread(Path(f"/proc/{record.child.pid}/cmdline").read_bytes)
            assert record.child_key.encode() not in cmdline  # never visible in ps
        # Directly, without the child's key: refused. The stack's key is not the child's either.
        async with aiohttp.ClientSession() as anon:
            async with anon.post(f"{trainer_url}/api/v1/echo", data=b"x") as resp:
                assert resp.status == 401
            async with anon.post(f"{dep_url}/inference/v1/completions", json={"prompt": [1]}) as resp:
                assert resp.status == 401
            async with anon.post(f"{trainer_url}/api/v1/echo", headers={"X-API-Key": KEY}) as resp:
                assert resp.status == 401
        async with http.post(f"{url}/training/v1/rlorTrainerJobs/local/job/api/v1/echo", data=b"x") as resp:
            assert resp.status == 200 and (await resp.json())["size"] == 1


async def test_gateway_decodes_gzip_and_cancels_abandoned_completions(cp: tuple[ControlPlane, str]) -> None:
    plane, url = cp
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY}"}) as http:
        async with http.post(
            f"{url}{DEPS}", params={"deploymentId": "dep"}, json={"baseModel": "tiny"}
        ) as resp:
            assert resp.status == 200
        await _ready(http, url, "deployments", "dep")
        model = "accounts/local/deployments/dep"
        payload = gzip.compress(json.dumps({"model": model, "prompt": [1], "max_tokens": 2}).encode())
        headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
        async with http.post(f"{url}/inference/v1/completions", data=payload, headers=headers) as resp:
            assert resp.status == 200 and (await resp.json())["model"] == model
        # Non-stream completions whose callers give up: the child's handlers are cancelled too.
        long = {"model": model, "prompt": [1], "max_tokens": 1000}
        for _ in range(3):
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.3), http.post(f"{url}/inference/v1/completions", json=long):
                    pass
        dep = plane.deployments["dep"]
        async with aiohttp.ClientSession(headers={"X-API-Key": dep.child_key or ""}) as child:
            for _ in range(100):
                async with child.get(f"{dep.url}/standin/cancelled") as resp:
                    cancelled = (await resp.json())["cancelled"]
                if cancelled == 3:
                    break
                await asyncio.sleep(0.05)
        assert cancelled == 3


async def test_checkpoint_paging_takes_ascii_integers_only(cp: tuple[ControlPlane, str]) -> None:
    _, url = cp
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY}"}) as http:
        async with http.post(
            f"{url}{JOBS}", params={"rlorTrainerJobId": "job"}, json=_job(baseModel="tiny")
        ) as resp:
            assert resp.status == 200
        for size in ("\u0661\u0662", "²", "9" * 5000):
            async with http.get(f"{url}{JOBS}/job/checkpoints", params={"pageSize": size}) as resp:
                assert resp.status == 400 and "pageSize" in (await resp.json())["error"]["message"]
