"""Kill the trainer process: the job shows FAILED; reconnect_and_wait resumes it and training
continues from the last saved state (weights and optimizer step counter).

It kills the shared seed trainer (starting a trainer is the slow part on 2 cores), so this file is
named to run after the other tests that use it; run alone, the fixture bootstraps a fresh one."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import pytest
from e2e_support import MODEL, WAIT, build_batch, served_identity, train_steps

from engine.backends.tinker import TrainingSession
from engine.local.models import load_tokenizer
from engine.weights import WeightSyncer

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="session")]


async def wait_for_state(b: Any, state: str, timeout_s: float = 60.0) -> dict[str, Any]:
    """Poll the job until it reaches ``state`` (the supervisor notices a dead child asynchronously)."""
    async with asyncio.timeout(timeout_s):
        while True:
            job: dict[str, Any] = await b.rlor.get(b.job_id)
            if job["state"] == state:
                return job
            await asyncio.sleep(0.2)


async def test_killed_trainer_is_resumed_from_the_last_saved_state(stack: Any, seed_env: Any) -> None:
    b = seed_env
    first: TrainingSession | None = None
    second: TrainingSession | None = None
    try:
        first = await TrainingSession.connect(
            b.endpoint.base_url, stack.api_key, MODEL, tokenizer_loader=load_tokenizer
        )
        tokenizer = first.tokenizer
        await train_steps(first, tokenizer, steps=2)
        state_path = await first.save_state("ckpt-2")
        probe = build_batch(tokenizer, 99)
        saved_logprobs = (await first.forward(probe)).loss_fn_outputs[0]["logprobs"].data
        await train_steps(first, tokenizer, steps=1, first=2)  # not saved: lost with the process

        job = await b.rlor.get(b.job_id)
        pid = job["hotloop"]["pid"]
        assert isinstance(pid, int)
        os.kill(pid, signal.SIGKILL)
        job = await wait_for_state(b, "JOB_STATE_FAILED")
        assert job["status"]["message"]  # the exit reason is reported
        await first.close(timeout_s=1)  # its trainer is gone: don't wait on the finish call
        first = None

        endpoint = await b.rlor.reconnect_and_wait(b.job_id, **WAIT)
        assert (await b.rlor.get(b.job_id))["state"] == "JOB_STATE_RUNNING"
        second = await TrainingSession.from_state(
            endpoint.base_url, stack.api_key, state_path, with_optimizer=True
        )
        assert second.resumed_steps == 2 and second.policy_version == 2
        # The weights are the saved ones (the unsaved third step is gone).
        assert (await second.forward(probe)).loss_fn_outputs[0]["logprobs"].data == saved_logprobs
        await train_steps(second, tokenizer, steps=1, first=2)
        assert second.policy_version == 3
        info = await second.trainer_info()
        assert info is not None and info["optimizer_steps"] == 3
        # The resumed policy reaches the deployment that stayed attached to the job's bucket: a new
        # session's first snapshot is base (the deployment holds another session's snapshot).
        syncer = WeightSyncer(
            second, b.deploy_mgr, "seed-serving", MODEL, hotload_timeout_s=120, poll_interval_s=0.2
        )
        identity = await syncer.save_and_hotload("resumed-3")
        assert syncer.last_snapshot is not None and syncer.last_snapshot.checkpoint_type == "base"
        assert served_identity(await b.deploy_mgr.hotload_check_status("seed-serving", MODEL)) == identity
    finally:
        for s in (first, second):
            if s is not None:
                await s.close(timeout_s=5)
