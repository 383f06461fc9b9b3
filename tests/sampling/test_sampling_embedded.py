"""DeploymentSampler against the real embedded deployment serving the tiny model."""

from __future__ import annotations

import math

from engine.local.deployment.app import DeploymentServer, DeploymentServerSettings
from engine.local.models import load_tokenizer
from engine.sampling import AdaptiveConcurrencyController, DeploymentSampler


async def test_sample_with_tokens_against_embedded_deployment() -> None:
    tok = load_tokenizer("tiny")
    messages = [{"role": "user", "content": "name a fruit"}]
    prompt = list(
        tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=False)
    )
    ctl = AdaptiveConcurrencyController()
    async with (
        DeploymentServer(DeploymentServerSettings(model="tiny", max_batch=4)) as server,
        DeploymentSampler(
            server.url, "accounts/local/deployments/d", "hl-test", tokenizer=tok, concurrency_controller=ctl
        ) as sampler,
    ):
        out = await sampler.sample_with_tokens(messages, n=3, max_tokens=8)
    assert len(out) == 3
    for c in out:
        assert c.full_tokens[: c.prompt_len] == prompt
        assert 1 <= c.completion_len <= 8 and len(c.full_tokens) == c.prompt_len + c.completion_len
        assert c.finish_reason in ("stop", "length")
        assert len(c.sampling_logprobs) == len(c.inference_logprobs) == c.completion_len
        assert all(lp is not None and lp <= 0.0 and math.isfinite(lp) for lp in c.sampling_logprobs)
        assert c.snapshot_identity is None  # base weights: no hot-load yet
        assert c.server_metrics.prefill_queue_duration is not None
    assert ctl.in_flight == 0
    assert ctl.step_completed()["requests"] == 3
