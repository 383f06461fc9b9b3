"""One real vLLM server (``small``, started through VllmDeployment's launcher) and one embedded trainer
shared by the tests of tests/vllm that need them. vLLM comes from ``$HOTLOOP_VLLM_PYTHON``, the repo's
``.venv-vllm`` (``scripts/install-vllm.sh``) or /opt/vllm-venv; without any the tests that need it skip.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from engine.backends.base import DeploymentRef, DeploymentSpec, TrainerRef
from engine.backends.vllm import VllmDeployment, VllmLaunchSpec, locate_vllm_python

MODEL = "small"


@dataclass
class Served:
    deployment: VllmDeployment
    ref: DeploymentRef
    model_dir: Path


@pytest.fixture(scope="session")
def small_model_dir() -> Path:
    from engine.local.models import build_model_dir

    return build_model_dir(MODEL)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def vllm(small_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Served]:
    python = locate_vllm_python()
    if python is None:
        pytest.skip("no vLLM install: run scripts/install-vllm.sh (or set HOTLOOP_VLLM_PYTHON)")
    spec = VllmLaunchSpec(
        python=str(python),
        model_dir=str(small_model_dir),
        served_model_name=MODEL,
        dtype="float32",
        max_model_len=1024,
        env={"VLLM_CPU_KVCACHE_SPACE": "1"},
    )
    deployment = VllmDeployment(launch=spec, work_dir=tmp_path_factory.mktemp("vllm"))
    try:
        ref = await deployment.provision(DeploymentSpec(MODEL, "vllm-test"), TrainerRef("local", "t"), None)
        ref = await deployment.wait_ready(ref, timeout_s=120)
        yield Served(deployment, ref, small_model_dir)
    finally:
        await deployment.aclose()


@pytest.fixture(scope="session")
def trainer_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """The embedded trainer on ``small`` (in-process thread): (url, bucket)."""
    from engine.local.trainer import TrainerConfig, serve_in_thread

    bucket = tmp_path_factory.mktemp("trainer") / "bucket"
    config = TrainerConfig(model=MODEL, bucket=bucket, poll_timeout_s=2.0, torch_threads=1)
    with serve_in_thread(config) as thread:
        yield thread.url, bucket


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Any]:
    """An embedded stack whose trainer the vLLM runs train on (backend: remote)."""
    from engine.local.stack import EmbeddedStack

    async with EmbeddedStack(tmp_path_factory.mktemp("vllm-run-stack")) as s:
        yield s
