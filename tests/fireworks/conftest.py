"""One embedded stack (``hotloop up`` as a subprocess) for the Fireworks fidelity tests: Fireworks'
own SDK (``fireworks-ai[training-sdk]==1.2.30``) and hotloop's Fireworks adapter both drive it, each
with its own trainer jobs and deployments."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def fw_stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Any]:
    from engine.local.stack import EmbeddedStack

    root: Path = tmp_path_factory.mktemp("fw-stack")
    async with EmbeddedStack(root) as s:
        yield s


@pytest.fixture(scope="session")
def tiny_tokenizer() -> Any:
    from engine.local.models import load_tokenizer

    return load_tokenizer("tiny")
