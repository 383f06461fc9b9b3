"""Backend fixes from review, each against a real aiohttp server on 127.0.0.1: a 409 is a
ConflictError, vLLM admin answers are read whole, a refused key fails health (not ``unreachable``)
and a hot-load wait, a relaunched vLLM's old admin session is closed, Tinker exports stream to disk
under one deadline."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web

from engine.backends.base import DeploymentRef, TrainerRef
from engine.backends.fireworks.deployments import DeploymentManager
from engine.backends.fireworks.errors import (
    AuthenticationError,
    ConflictError,
    HotloadError,
    TrainerJobFailedError,
)
from engine.backends.fireworks.health import deployment_config, deployment_health, job_health
from engine.backends.fireworks.hotload import replica_identity
from engine.backends.fireworks.jobs import TrainerJobManager
from engine.backends.fireworks.rest import RestClient, RestRetryPolicy
from engine.backends.tinker import trainer as tinker_trainer
from engine.backends.tinker.trainer import TinkerTrainer
from engine.backends.vllm import VllmDeployment
from engine.backends.vllm.admin import VllmAdminClient
from engine.errors import ConfigError, FatalError, RetryableError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
NO_RETRY = RestRetryPolicy(max_attempts=1)


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    """Start a server answering every path with ``handler``; returns its base URL."""
    runners: list[web.AppRunner] = []

    async def start(handler: Handler) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return f"http://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


def status_handler(status: int, body: str = '{"error": {"message": "said so"}}') -> Handler:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=status, text=body, content_type="application/json")

    return handler


async def test_a_409_is_a_conflict_error(serve: Callable[[Handler], Awaitable[str]]) -> None:
    url = await serve(status_handler(409))
    async with RestClient("k", url, retry_policy=NO_RETRY, account_id="a") as client:
        with pytest.raises(ConflictError) as caught:
            await client.request("POST", "/v1/things")
    assert caught.value.status == 409 and "said so" in str(caught.value)


async def test_vllm_admin_reads_a_chunked_body_whole(serve: Callable[[Handler], Awaitable[str]]) -> None:
    pieces = [b'{"version": "', b"0.33.1", b"x" * 100_000, b'"}']

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for piece in pieces:  # separate writes with pauses: the client sees partial buffers
            await resp.write(piece)
            await asyncio.sleep(0.02)
        await resp.write_eof()
        return resp

    admin = VllmAdminClient(await serve(handler))
    try:
        assert await admin.version() == "0.33.1" + "x" * 100_000
    finally:
        await admin.aclose()


async def test_a_refused_key_fails_control_plane_health(serve: Callable[[Handler], Awaitable[str]]) -> None:
    url = await serve(status_handler(401))
    jobs = TrainerJobManager("k", url, retry_policy=NO_RETRY, account_id="a")
    deployments = DeploymentManager("k", url, retry_policy=NO_RETRY, account_id="a")
    try:
        with pytest.raises(ConfigError, match="api_key") as caught:
            await job_health(jobs, "j")
        assert isinstance(caught.value.__cause__, AuthenticationError)
        with pytest.raises(ConfigError, match="api_key"):
            await deployment_health(deployments, "d")
    finally:
        await jobs.aclose()
        await deployments.aclose()


async def test_a_503_control_plane_is_unreachable(serve: Callable[[Handler], Awaitable[str]]) -> None:
    url = await serve(status_handler(503))
    jobs = TrainerJobManager("k", url, retry_policy=NO_RETRY, account_id="a")
    try:
        assert (await job_health(jobs, "j")).status == "unreachable"
    finally:
        await jobs.aclose()


async def test_a_refused_key_fails_tinker_health(serve: Callable[[Handler], Awaitable[str]]) -> None:
    url = await serve(status_handler(403))
    trainer = TinkerTrainer(url, "k", exports_dir=Path("."), tokenizer_loader=None)
    with pytest.raises(ConfigError, match="api_key"):
        await trainer.health(TrainerRef("tinker", "t", {}))


async def test_a_fatal_hotload_poll_is_not_waited_out(serve: Callable[[Handler], Awaitable[str]]) -> None:
    url = await serve(status_handler(401))
    deployments = DeploymentManager("k", url, retry_policy=NO_RETRY, account_id="a")
    try:
        async with asyncio.timeout(5):
            with pytest.raises(AuthenticationError):
                await deployments.wait_for_hotload("d", "m", "s1", timeout_seconds=60, poll_interval=0.01)
    finally:
        await deployments.aclose()


def test_one_parser_reads_the_served_identity() -> None:
    assert replica_identity({"replicas": []}) == (False, None)
    assert replica_identity({"replicas": [{"current_snapshot_identity": "s1"}]}) == (True, "s1")
    assert replica_identity({"replicas": [{"current_snapshot_identity": ""}]}) == (True, None)
    with pytest.raises(HotloadError):
        replica_identity({"nope": 1})


def test_a_deleting_job_is_gone() -> None:
    assert TrainerJobFailedError("x", job_id="j", state="JOB_STATE_DELETING").status == "gone"
    assert TrainerJobFailedError("x", job_id="j", state="JOB_STATE_FAILED").status == "failed"


def test_the_deployment_config_links_only_a_same_kind_trainer() -> None:
    linked = deployment_config("d", "m", TrainerRef("cp", "t", {"job_name": "jobs/t"}), trainer_kind="cp")
    assert linked.hot_load_trainer_job == "jobs/t"
    assert (linked.min_replica_count, linked.max_replica_count) == (0, 1)
    other = deployment_config("d", "m", TrainerRef("tinker", "t", {"job_name": "x"}), trainer_kind="cp")
    assert other.hot_load_trainer_job is None


async def test_a_moved_vllm_gets_a_new_admin_and_the_old_session_closes(tmp_path: Path) -> None:
    dep = VllmDeployment(work_dir=tmp_path, base_url="http://127.0.0.1:1", served_model_name="m")
    try:
        old = dep._admin_for(DeploymentRef("vllm", "d", {"base_url": "http://127.0.0.1:1"}))
        session = old._session()
        new = await dep._admin_async(DeploymentRef("vllm", "d", {"base_url": "http://127.0.0.1:2"}))
        assert new is not old and new.base_url == "http://127.0.0.1:2"
        assert session.closed
    finally:
        await dep.aclose()


async def test_a_tinker_export_streams_to_disk(
    serve: Callable[[Handler], Awaitable[str]], tmp_path: Path
) -> None:
    payload = bytes(range(256)) * 20_000  # 5 MB: several chunks

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        for i in range(0, len(payload), 300_000):
            await resp.write(payload[i : i + 300_000])
        await resp.write_eof()
        return resp

    url = await serve(handler)
    await tinker_trainer._download({"a/model.safetensors": f"{url}/f"}, tmp_path)
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == payload


async def test_a_tinker_export_is_bounded_as_a_whole(
    serve: Callable[[Handler], Awaitable[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def slow(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(b"x")
        await asyncio.sleep(0.3)  # each file well inside any per-request limit, the two together not
        await resp.write_eof()
        return resp

    monkeypatch.setattr(tinker_trainer, "DOWNLOAD_TIMEOUT_S", 0.45)
    url = await serve(slow)
    with pytest.raises(RetryableError, match="not downloaded within"):
        await tinker_trainer._download({"a": f"{url}/a", "b": f"{url}/b"}, tmp_path)


async def test_a_missing_export_file_is_fatal(
    serve: Callable[[Handler], Awaitable[str]], tmp_path: Path
) -> None:
    url = await serve(status_handler(404))
    with pytest.raises(FatalError, match="HTTP 404"):
        await tinker_trainer._download({"a": f"{url}/a"}, tmp_path)
