"""``health`` of the vLLM adapter: a launched server that died is ``failed`` with its exit and log; an
attached one that does not answer is ``unreachable`` (the control-plane adapter's health is read
from real records in test_policy and exercised against a real stack in tests/chaos)."""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path

from engine.backends.base import DeploymentRef
from engine.backends.vllm import VllmDeployment, VllmLaunchSpec
from engine.backends.vllm.launcher import VllmServer


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_an_attached_vllm_that_does_not_answer_is_unreachable(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    dep = VllmDeployment(work_dir=tmp_path, base_url=url, served_model_name="m")
    try:
        health = await dep.health(DeploymentRef("vllm", "d", {"base_url": url}))
    finally:
        await dep.aclose()
    assert health.status == "unreachable" and url in health.detail


async def test_a_launched_vllm_that_exited_is_failed_with_its_reason(tmp_path: Path) -> None:
    spec = VllmLaunchSpec(python=sys.executable, model_dir=str(tmp_path), served_model_name="m")
    dep = VllmDeployment(work_dir=tmp_path, launch=spec)
    server = VllmServer(spec, tmp_path / "vllm.log")
    (tmp_path / "vllm.log").write_text("INFO starting\nERROR engine core died: out of memory\n")
    server.proc = await asyncio.create_subprocess_exec(sys.executable, "-c", "raise SystemExit(3)")
    await server.proc.wait()
    dep._server = server
    health = await dep.health(DeploymentRef("vllm", "d", {"base_url": "http://127.0.0.1:1"}))
    assert health.status == "failed" and health.lost
    assert "exited with code 3" in health.detail and "engine core died: out of memory" in health.detail
