"""`hotloop up` as a real subprocess with real trainer and deployment processes (tiny model)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest

from engine.backends.fireworks import DeploymentConfig, DeploymentManager, TrainerJobConfig, TrainerJobManager
from engine.local.stack import EmbeddedStack
from engine.log import get_logger

pytestmark = pytest.mark.slow
log = get_logger("tests.control.e2e")
T = TypeVar("T")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def eventually_gone(pids: list[int], timeout_s: float = 30.0) -> list[int]:
    for _ in range(int(timeout_s / 0.1)):
        if not any(alive(p) for p in pids):
            break
        await asyncio.sleep(0.1)
    return [p for p in pids if alive(p)]


async def test_stack_parallel_wait_crash_resume_and_clean_shutdown(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    spans: dict[str, tuple[float, float]] = {}

    async def timed(name: str, aw: Awaitable[T]) -> T:
        start = time.monotonic()
        try:
            return await aw
        finally:
            spans[name] = (start, time.monotonic())

    async with EmbeddedStack(tmp_path / "stack", startup_timeout_s=120) as stack:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", stack.base_url)
        assert stack.api_key.startswith("hl-") and stack.account_id == "local"
        async with (
            TrainerJobManager(stack.api_key, stack.base_url) as tm,
            DeploymentManager(stack.api_key, stack.base_url) as dm,
        ):
            created = await tm.create(TrainerJobConfig(base_model="tiny", requested_job_id="e2e-job"))
            await dm.create_or_get(DeploymentConfig("e2e-dep", "tiny", hot_load_trainer_job=created.job_name))
            begin = time.monotonic()
            endpoint, deployment = await asyncio.gather(
                timed("trainer", tm.wait_for_ready(created.job_id, poll_interval_s=0.25, timeout_s=300)),
                timed("deployment", dm.wait_for_ready("e2e-dep", poll_interval_s=0.25, timeout_s=300)),
            )
            total = time.monotonic() - begin
            durations = {k: b - a for k, (a, b) in spans.items()}
            log.info(
                "parallel readiness wait",
                total_s=round(total, 2),
                **{k: round(v, 2) for k, v in durations.items()},
            )
            print(
                f"parallel wait: total {total:.2f}s, trainer {durations['trainer']:.2f}s, "
                f"deployment {durations['deployment']:.2f}s, sum {sum(durations.values()):.2f}s"
            )
            # Structural, not timed: the two waits ran at the same time (each began before the other ended).
            (t0, t1), (d0, d1) = spans["trainer"], spans["deployment"]
            assert t0 < d1 and d0 < t1
            assert deployment.state == "READY"
            assert endpoint.base_url == f"{stack.base_url}/training/v1/rlorTrainerJobs/local/e2e-job"
            assert (await tm.healthz("e2e-job"))[0] == 200
            assert await dm.warmup(dm.model_name("e2e-dep"), max_retries=3, retry_interval_s=1.0)
            # The real children refuse whoever reaches their 127.0.0.1 ports without their own key.
            direct = {
                "trainer": f"{(await tm.get('e2e-job'))['hotloop']['trainerUrl']}/api/v1/create_session",
                "deployment": f"{(await dm.get('e2e-dep')).raw['hotloop']['deploymentUrl']}/v1/completions",  # type: ignore[union-attr]
            }
            async with aiohttp.ClientSession() as anon:
                for url in direct.values():
                    async with anon.post(url, json={"prompt": [1], "max_tokens": 1}) as resp:
                        assert resp.status == 401, url
                    async with anon.post(url, json={}, headers={"X-API-Key": stack.api_key}) as resp:
                        assert resp.status == 401, url  # the stack's key is not a child's key

            # Kill the trainer process: the job shows FAILED with the reason, resume brings it back.
            job: dict[str, Any] = await tm.get("e2e-job")
            trainer_pid = job["hotloop"]["pid"]
            os.kill(trainer_pid, signal.SIGKILL)
            for _ in range(300):
                job = await tm.get("e2e-job")
                if job["state"] == "JOB_STATE_FAILED":
                    break
                await asyncio.sleep(0.1)
            assert job["state"] == "JOB_STATE_FAILED"
            assert "killed by SIGKILL" in job["status"]["message"]
            resumed = await tm.resume_and_wait("e2e-job", poll_interval_s=0.25, timeout_s=300)
            assert resumed == endpoint
            job = await tm.get("e2e-job")
            assert job["state"] == "JOB_STATE_RUNNING" and job["hotloop"]["pid"] not in (None, trainer_pid)
            assert job["hotloop"]["bucket"] == str(tmp_path / "stack" / "jobs" / "e2e-job" / "bucket")
            children = [job["hotloop"]["pid"], (await dm.get("e2e-dep")).raw["hotloop"]["pid"]]  # type: ignore[union-attr]
            assert all(alive(p) for p in children)
    # SIGTERM to `hotloop up`: it exits cleanly and takes its children with it.
    assert stack.returncode == 0
    assert await eventually_gone(children) == []


async def test_cancelled_owner_still_stops_the_stack(tmp_path: Path) -> None:
    started = asyncio.Event()
    holder: list[EmbeddedStack] = []

    async def owner() -> None:
        async with EmbeddedStack(tmp_path / "stack", startup_timeout_s=120) as stack:
            holder.append(stack)
            started.set()
            await asyncio.Event().wait()  # until cancelled

    task = asyncio.create_task(owner())
    async with asyncio.timeout(150):
        await started.wait()
    pid = holder[0].pid
    assert pid is not None and alive(pid)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert holder[0].returncode == 0 and not alive(pid)
