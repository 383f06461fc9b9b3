"""One embedded stack (``hotloop up`` as a subprocess) shared by the end-to-end tests of a session.

Starting the stack is the slow part on 2 cores, so it is session-scoped; each test creates its own
trainer job and deployment in it (distinct ids), which is also what a user of one stack does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Any]:
    from engine.local.stack import EmbeddedStack

    root: Path = tmp_path_factory.mktemp("stack")
    async with EmbeddedStack(root) as s:
        yield s


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def seed_env(stack: Any) -> AsyncIterator[Any]:
    """The seed's bootstrap (trainer job + linked deployment, awaited in parallel), shared by the
    tests that need a trainer and a deployment: each connects its own training session to it."""
    from e2e_support import bootstrap, close

    b = await bootstrap(stack, "seed")
    try:
        yield b
    finally:
        try:
            await b.deploy_mgr.delete("seed-serving")
            await b.rlor.delete(b.job_id)
        finally:
            await close(b)
