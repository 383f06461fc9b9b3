"""`hotloop serve deployment` as a real subprocess: URL line, completions, hot-load, clean exit."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from deployment_helpers import complete, hot_load, stream, write_chain
from support.launch import DEPLOYMENT_URL_KEY, alaunched, serve_argv


@pytest.fixture
async def deployment_process(tiny_model_dir: Path, tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    bucket = tmp_path / "bucket"
    argv = serve_argv(
        "deployment", model=str(tiny_model_dir), bucket=bucket, extra=["--api-key", "secret-key"]
    )
    async with alaunched(
        argv, DEPLOYMENT_URL_KEY, timeout_s=120, extra_env={"HOTLOOP_LOG_FORMAT": "json"}
    ) as server:
        # The URL line is the first and only stdout line, in exactly this format.
        assert server.before == (), server.before
        assert server.line.startswith("HOTLOOP_DEPLOYMENT_URL=http://127.0.0.1:"), server.line
        yield server.url, bucket
        server.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            assert await server.proc.wait() == 0


async def test_serve_deployment_subprocess(
    deployment_process: tuple[str, Path], tiny_model_dir: Path
) -> None:
    url, bucket = deployment_process
    write_chain(bucket, tiny_model_dir)
    headers = {"Authorization": "Bearer secret-key"}
    async with aiohttp.ClientSession() as anonymous:
        async with anonymous.get(url + "/health") as resp:
            assert resp.status == 200  # health is open
        status, _, _ = await complete(anonymous, url, prompt=[1, 2, 3], max_tokens=2)
        assert status == 401
    async with aiohttp.ClientSession(headers=headers) as session:
        replica = await hot_load(session, url, "step-0")
        assert replica["current_snapshot_identity"] == "step-0"
        replica = await hot_load(session, url, "step-1", previous="step-0")
        assert replica["current_snapshot_identity"] == "step-1"
        chunks, resp_headers = await stream(session, url, prompt=[1, 2, 3], max_tokens=4, temperature=0)
        assert chunks[-1]["snapshot_identity"] == "step-1"
        assert resp_headers["x-hotloop-snapshot-identity"] == "step-1"
        assert chunks[-1]["choices"][0]["finish_reason"] in ("length", "stop")


async def test_a_taken_port_fails_start_without_leaking_the_engine_thread(tiny_model_dir: Path) -> None:
    import socket
    import threading

    from engine.local.deployment.app import DeploymentServer, DeploymentServerSettings

    def engines() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name == "hotloop-deployment-engine" and t.is_alive()}

    before = engines()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = DeploymentServer(DeploymentServerSettings(model=str(tiny_model_dir)), port=port)
        with pytest.raises(OSError):
            await server.start()
    assert server.deployment.scheduler is not None  # startup ran, so there was a thread to stop
    assert engines() - before == set()
