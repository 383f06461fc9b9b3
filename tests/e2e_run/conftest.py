"""One embedded stack shared by the run-engine tests (starting one is the slow part on 2 cores).

Runs reach it as a *remote* backend (its base URL, the key in HOTLOOP_API_KEY), the way a user
points ``hotloop run`` at a stack started with ``hotloop up``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def run_stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Any]:
    from engine.local.stack import EmbeddedStack

    async with EmbeddedStack(tmp_path_factory.mktemp("run-stack")) as stack:
        yield stack
