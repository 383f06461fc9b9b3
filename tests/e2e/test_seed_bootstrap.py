"""The seed workflow's bootstrap (Fireworks' training-and-sampling walkthrough), translated to
hotloop's async API, against the embedded control plane with real trainer and deployment processes."""

from __future__ import annotations

import math
from typing import Any

import pytest
from e2e_support import MODEL, served_identity, train_steps, trainer_logprobs

from engine.backends.tinker import TrainingSession
from engine.errors import FatalError
from engine.local.models import load_tokenizer
from engine.sampling import AdaptiveConcurrencyController, DeploymentSampler
from engine.weights import WeightSyncer

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="session")]


async def test_seed_bootstrap(stack: Any, seed_env: Any) -> None:
    b = seed_env
    session: TrainingSession | None = None
    sampler: DeploymentSampler | None = None
    try:
        # Both waits were in flight at the same time (awaited in parallel, not one after the other).
        assert b.waits is not None
        trainer_wait, deploy_wait = b.waits
        assert trainer_wait.start < deploy_wait.end and deploy_wait.start < trainer_wait.end
        assert b.deployment is not None and b.deployment.state in ("READY", "CREATING")
        assert b.endpoint.base_url.endswith(f"/training/v1/rlorTrainerJobs/{stack.account_id}/{b.job_id}")

        # A client whose LoRA rank differs from the job's gets the gateway's message, at once.
        with pytest.raises(FatalError, match="lora_rank mismatch"):
            await TrainingSession.connect(b.endpoint.base_url, stack.api_key, MODEL, lora_rank=8)

        session = await TrainingSession.connect(
            b.endpoint.base_url, stack.api_key, MODEL, lora_rank=0, tokenizer_loader=load_tokenizer
        )
        tokenizer = session.tokenizer
        losses = await train_steps(session, tokenizer, steps=5)
        assert len(losses) == 5 and all(math.isfinite(x) for x in losses)
        assert losses[-1] < losses[0]  # the objective is being optimized
        assert session.policy_version == 5
        info = await session.trainer_info()
        assert info is not None and info["optimizer_steps"] == 5

        syncer = WeightSyncer(
            session,
            b.deploy_mgr,
            "seed-serving",
            MODEL,
            hotload_timeout_s=120,
            full_every=10,
            poll_interval_s=0.2,
        )
        base_id = await syncer.save_and_hotload("step_00005")
        assert syncer.last_snapshot is not None and syncer.last_snapshot.checkpoint_type == "base"
        assert served_identity(await b.deploy_mgr.hotload_check_status("seed-serving", MODEL)) == base_id
        assert set(syncer.last_timing) == {"save_time_s", "hotload_time_s", "total_time_s"}

        await train_steps(session, tokenizer, steps=1, first=5)
        delta_id = await syncer.save_and_hotload("step_00006")
        snap = syncer.last_snapshot
        assert snap.checkpoint_type == "delta" and snap.parent_snapshot_identity == base_id
        # The embedded trainer keeps snapshots per run: <run>/<name>-<tag> is what gets hot-loaded.
        assert delta_id == f"{session.model_id}/step_00006-{session.session_tag}"
        assert served_identity(await b.deploy_mgr.hotload_check_status("seed-serving", MODEL)) == delta_id

        sampler = DeploymentSampler(
            inference_url=b.deploy_mgr.inference_url,
            model=b.deploy_mgr.model_name("seed-serving"),
            api_key=stack.api_key,
            tokenizer=tokenizer,
            concurrency_controller=AdaptiveConcurrencyController(initial_window=4),
        )
        completions = await sampler.sample_with_tokens(
            messages=[{"role": "user", "content": "count to three"}], n=3, max_tokens=8
        )
        assert len(completions) == 3
        for c in completions:
            assert c.snapshot_identity == delta_id
            assert 1 <= len(c.completion_tokens) <= 8
            assert c.full_tokens[c.prompt_len :] == c.completion_tokens
            assert len(c.sampling_logprobs) == len(c.completion_tokens) == len(c.inference_logprobs)
            assert all(lp is not None and lp <= 0.0 for lp in c.sampling_logprobs)
        # "From the new weights": the served logprobs are the trainer's at this policy version.
        expected = await trainer_logprobs(session, completions)
        for c, exp in zip(completions, expected, strict=True):
            assert max(abs(a - e) for a, e in zip(c.inference_logprobs, exp, strict=True)) <= 1e-4  # type: ignore[operator]
    finally:
        if sampler is not None:
            await sampler.close()
        if session is not None:
            await session.close()
