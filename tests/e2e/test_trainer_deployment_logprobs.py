"""For the same snapshot and tokens, the deployment's logprobs equal the trainer's forward logprobs
(fp32, max abs diff <= 1e-4): after a base hot-load and after each of two delta hot-loads."""

from __future__ import annotations

from typing import Any

import pytest
from e2e_support import MODEL, served_identity, train_steps, trainer_logprobs

from engine.backends.tinker import TrainingSession
from engine.local.models import load_tokenizer
from engine.sampling import DeploymentSampler, FixedConcurrencyController
from engine.weights import WeightSyncer

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="session")]
TOLERANCE = 1e-4


async def test_deployment_logprobs_match_trainer_across_base_and_deltas(stack: Any, seed_env: Any) -> None:
    # Shares the seed's trainer and deployment, with its own training session: the deployment may hold
    # another session's snapshot, so the first save must be base.
    b = seed_env
    session: TrainingSession | None = None
    sampler: DeploymentSampler | None = None
    try:
        session = await TrainingSession.connect(
            b.endpoint.base_url, stack.api_key, MODEL, tokenizer_loader=load_tokenizer
        )
        tokenizer = session.tokenizer
        syncer = WeightSyncer(
            session, b.deploy_mgr, "seed-serving", MODEL, hotload_timeout_s=120, poll_interval_s=0.2
        )
        sampler = DeploymentSampler(
            inference_url=b.deploy_mgr.inference_url,
            model=b.deploy_mgr.model_name("seed-serving"),
            api_key=stack.api_key,
            tokenizer=tokenizer,
            concurrency_controller=FixedConcurrencyController(2),
        )
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": "name a colour"}],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
        )
        kinds, diffs = [], []
        for round_ in range(3):
            await train_steps(session, tokenizer, steps=1, first=round_)
            identity = await syncer.save_and_hotload(f"lp-{round_}")
            assert syncer.last_snapshot is not None
            kinds.append(syncer.last_snapshot.checkpoint_type)
            assert served_identity(await b.deploy_mgr.hotload_check_status("seed-serving", MODEL)) == identity
            completions = await sampler.sample_with_prompt_tokens(prompt, n=2, max_tokens=8, temperature=1.0)
            expected_all = await trainer_logprobs(session, completions)
            for c, expected in zip(completions, expected_all, strict=True):
                assert c.snapshot_identity == identity
                assert c.full_tokens[: c.prompt_len] == list(prompt)
                served = c.inference_logprobs
                assert len(served) == len(expected) == len(c.completion_tokens)
                assert all(x is not None for x in served)
                diffs.append(max(abs(float(s) - e) for s, e in zip(served, expected, strict=True)))  # type: ignore[arg-type]
        assert kinds == ["base", "delta", "delta"]
        assert max(diffs) <= TOLERANCE, diffs
    finally:
        if sampler is not None:
            await sampler.close()
        if session is not None:
            await session.close()
