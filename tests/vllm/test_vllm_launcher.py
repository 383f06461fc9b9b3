"""The launcher and the deployment's configuration, without a vLLM server."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from engine.backends.vllm import (
    VllmDeployment,
    VllmLaunchError,
    VllmLaunchSpec,
    VllmServer,
    locate_vllm_python,
)
from engine.backends.vllm.deployment import parse_version
from engine.errors import ConfigError


def test_locate_prefers_the_env_then_the_repo_venv(tmp_path: Path) -> None:
    python = tmp_path / "py"
    python.write_text("#!/bin/sh\n")
    python.chmod(0o755)
    assert locate_vllm_python({"HOTLOOP_VLLM_PYTHON": str(python)}, tmp_path) == python
    repo_python = tmp_path / ".venv-vllm" / "bin" / "python"
    repo_python.parent.mkdir(parents=True)
    repo_python.write_text("#!/bin/sh\n")
    repo_python.chmod(0o755)
    assert locate_vllm_python({}, tmp_path) == repo_python


def test_launch_argv_turns_on_the_endpoints_hotloop_needs(tmp_path: Path) -> None:
    spec = VllmLaunchSpec(python="py", model_dir="/m", served_model_name="small", max_model_len=1024)
    argv = spec.argv(8123)
    assert argv[:3] == ["py", "-m", "vllm.entrypoints.openai.api_server"]
    assert "--enable-per-request-metrics" in argv and "--enforce-eager" in argv
    assert argv[argv.index("--port") + 1] == "8123" and argv[argv.index("--max-model-len") + 1] == "1024"
    env = spec.environ("s3cret")
    assert env["VLLM_SERVER_DEV_MODE"] == "1" and env["VLLM_API_KEY"] == "s3cret"
    assert "s3cret" not in " ".join(argv)


async def test_a_server_that_exits_at_start_reports_its_log(tmp_path: Path) -> None:
    # hotloop's own python has no vLLM: the child exits at once with ModuleNotFoundError.
    spec = VllmLaunchSpec(python=sys.executable, model_dir=str(tmp_path), served_model_name="x")
    server = VllmServer(spec, tmp_path / "vllm.log")
    with pytest.raises(
        VllmLaunchError, match=r"exited with code 1 before it was ready(.|\n)*No module named"
    ):
        await server.start(timeout_s=60)
    await server.stop()


def test_deployment_config_errors_name_the_field(tmp_path: Path) -> None:
    spec = VllmLaunchSpec(python="py", model_dir="/m", served_model_name="small")
    with pytest.raises(ConfigError, match="exactly one of base_url"):
        VllmDeployment(work_dir=tmp_path, base_url="http://h:1", launch=spec)
    with pytest.raises(ConfigError, match="exactly one of base_url"):
        VllmDeployment(work_dir=tmp_path)
    with pytest.raises(ConfigError, match="api_key_env: environment variable VLLM_KEY"):
        VllmDeployment(work_dir=tmp_path, base_url="http://h:1", api_key_env="VLLM_KEY", environ={})
    with pytest.raises(ConfigError, match=r"launch\.python"):
        VllmServer(spec, tmp_path / "log")


def test_versions_compare_numerically() -> None:
    assert parse_version("0.32.0") == (0, 32, 0) and parse_version("0.33.1+cpu") == (0, 33, 1)
    assert parse_version("0.32.0") < (0, 33) <= parse_version("0.33.0rc1")
