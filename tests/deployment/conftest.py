"""Fixtures: real in-process deployment servers on 127.0.0.1 (port 0) serving the tiny model."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import torch
from deployment_helpers import MakeServer

from engine.local.deployment.app import DeploymentServer, DeploymentServerSettings


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Reference forwards on the test thread with one intra-op thread, as the engine thread uses:
    on a busy shared 2-core box two spinning OpenMP threads are many times slower. Restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
async def make_server(tiny_model_dir: Path, tmp_path: Path) -> AsyncIterator[MakeServer]:
    """Start deployment servers with config overrides; all are stopped at teardown."""
    async with contextlib.AsyncExitStack() as stack:

        async def make(**overrides: Any) -> DeploymentServer:
            config = DeploymentServerSettings(
                **{"model": str(tiny_model_dir), "bucket": tmp_path / "bucket", **overrides}
            )
            return await stack.enter_async_context(DeploymentServer(config))

        yield make


@pytest.fixture
async def server(make_server: MakeServer) -> DeploymentServer:
    return await make_server()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        yield s
