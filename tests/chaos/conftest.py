"""The chaos tests (``pytest -m chaos``): real ``hotloop run`` processes whose trainer, deployment and
control plane are killed at seeded moments, or whose planes sit behind fault-injecting proxies. One
embedded stack is shared; at the end the session prints the fault table (kind x plane)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def chaos_stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Any]:
    from engine.local.stack import EmbeddedStack

    async with EmbeddedStack(tmp_path_factory.mktemp("chaos-stack")) as stack:
        yield stack


def pytest_terminal_summary(terminalreporter: Any) -> None:
    from support.chaos_run import COLLECTED, fault_table, format_table

    if COLLECTED:
        terminalreporter.write_sep("-", "chaos: fault kind x plane")
        terminalreporter.write_line(format_table(fault_table(COLLECTED)))
