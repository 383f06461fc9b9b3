"""DeploymentSampler against the scripted streaming server: results, faults, retries, admission."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from scripted_server import FAST_RETRY, ScriptedServer, expected_tokens

from engine.sampling import (
    DeploymentSampler,
    FixedConcurrencyController,
    SampledCompletion,
    SamplingExhaustedError,
    SamplingRetryPolicy,
    SamplingStatusError,
    SamplingTimeoutError,
    ServerMetrics,
    stream_completion,
)

PROMPT = [1, 5, 9, 2]
MODEL = "accounts/local/deployments/d1"


class RecordingController:
    """A fixed window that records every acquire/release and the metrics each release carried."""

    def __init__(self, window: int = 64) -> None:
        self.inner = FixedConcurrencyController(window)
        self.acquired = 0
        self.released: list[ServerMetrics | None] = []

    @property
    def window_size(self) -> int:
        return self.inner.window_size

    @property
    def in_flight(self) -> int:
        return self.inner.in_flight

    async def acquire(self) -> None:
        await self.inner.acquire()
        self.acquired += 1

    def release(self, metrics: ServerMetrics | None = None) -> None:
        self.released.append(metrics)
        self.inner.release(metrics)

    def step_completed(self) -> dict[str, float]:
        return self.inner.step_completed()


def make_sampler(
    server: ScriptedServer, controller: Any = None, policy: SamplingRetryPolicy = FAST_RETRY, **kw: Any
) -> DeploymentSampler:
    return DeploymentSampler(
        server.url, MODEL, "hl-secret-key", concurrency_controller=controller, retry_policy=policy, **kw
    )


def check(c: SampledCompletion, prompt: list[int] = PROMPT, max_tokens: int = 16) -> None:
    ids, finish = expected_tokens(prompt, max_tokens)
    assert c.completion_tokens == ids
    assert c.full_tokens == prompt + ids
    assert c.prompt_len == len(prompt)
    assert c.finish_reason == finish
    assert c.text == "".join(f"t{t} " for t in ids)
    assert c.inference_logprobs == pytest.approx([-0.01 * (i + 1) for i in range(len(ids))])
    assert c.sampling_logprobs == pytest.approx([-0.02 * (i + 1) for i in range(len(ids))])
    assert c.snapshot_identity == "snap-000001"
    assert c.server_metrics.prefill_queue_duration == pytest.approx(0.0125)
    assert c.server_metrics.num_concurrent_requests == 3


async def test_n_concurrent_requests_with_contract_payload(scripted_server: ScriptedServer) -> None:
    ctl = RecordingController()
    async with make_sampler(scripted_server, ctl) as sampler:
        out = await sampler.sample_with_prompt_tokens(PROMPT, n=3, max_tokens=16)
    assert len(out) == 3
    for c in out:
        check(c)
        assert c.attempts == 1
    assert len({c.request_id for c in out}) == 3
    body = scripted_server.requests[0].body
    for key, value in {
        "model": MODEL,
        "prompt": PROMPT,
        "n": 1,
        "stream": True,
        "perf_metrics_in_response": True,
        "raw_output": True,
        "logprobs": True,
        "top_p": 1.0,
        "top_k": 0,
        "temperature": 1.0,
    }.items():
        assert body[key] == value, key
    headers = scripted_server.requests[0].headers
    assert headers["authorization"] == "Bearer hl-secret-key"
    assert {r.headers["x-request-id"] for r in scripted_server.requests} == {c.request_id for c in out}
    assert ctl.acquired == 3 and len(ctl.released) == 3 and ctl.in_flight == 0
    assert all(m is not None and m.prefill_queue_duration == pytest.approx(0.0125) for m in ctl.released)
    assert "hl-secret-key" not in repr(sampler)


async def test_faults_are_retried_and_results_unchanged(scripted_server: ScriptedServer) -> None:
    scripted_server.script("500", "429:0", "425", "drop", "truncate", "upstream_error")
    ctl = RecordingController()
    sleeps: list[float] = []

    async def sleep(s: float) -> None:
        sleeps.append(s)

    sampler = make_sampler(scripted_server, ctl, sleep=sleep)
    try:
        [c] = await sampler.sample_with_prompt_tokens(PROMPT, max_tokens=16)
    finally:
        await sampler.close()
    check(c)
    assert c.attempts == 7 and len(sleeps) == 6
    assert [r.fault for r in scripted_server.requests] == [
        "500", "429:0", "425", "drop", "truncate", "upstream_error", "ok"
    ]  # fmt: skip
    assert {r.headers["x-request-id"] for r in scripted_server.requests} == {c.request_id}
    # Exactly one release per attempt, each with what the controller should observe.
    assert ctl.acquired == 7 and len(ctl.released) == 7 and ctl.in_flight == 0
    statuses = [m.http_status_code if m else None for m in ctl.released]
    assert statuses[:3] == [500, 429, 425]
    dropped = ctl.released[3]
    assert dropped is not None and dropped.transport_error and dropped.retry_attempt == 4
    assert ctl.released[4] is None  # truncation: slot freed, nothing observed
    upstream = ctl.released[5]
    assert upstream is not None and upstream.http_status_code == 503
    assert ctl.released[6] is not None and ctl.released[6].retry_attempt == 7


async def test_retry_after_is_a_floor(scripted_server: ScriptedServer) -> None:
    scripted_server.script("429:2", "429:300")
    sleeps: list[float] = []

    async def sleep(s: float) -> None:
        sleeps.append(s)

    async with make_sampler(scripted_server, sleep=sleep) as sampler:
        [c] = await sampler.sample_with_prompt_tokens(PROMPT, max_tokens=16)
    check(c)
    assert sleeps[0] >= 2.0
    assert 30.0 <= sleeps[1] <= 30.0 + 0.01  # floor capped at retry_after_cap_s


async def test_non_retryable_status_surfaces_at_once(scripted_server: ScriptedServer) -> None:
    scripted_server.script("400")
    ctl = RecordingController()
    async with make_sampler(scripted_server, ctl) as sampler:
        with pytest.raises(SamplingStatusError, match="scripted 400") as info:
            await sampler.sample_with_prompt_tokens(PROMPT)
    assert info.value.status == 400
    assert len(scripted_server.requests) == 1
    assert ctl.released == [None] and ctl.in_flight == 0


async def test_exhaustion_raises_typed_error_with_last_status(scripted_server: ScriptedServer) -> None:
    scripted_server.script(*["503"] * 7)
    async with make_sampler(scripted_server) as sampler:
        with pytest.raises(SamplingExhaustedError) as info:
            await sampler.sample_with_prompt_tokens(PROMPT)
    err = info.value
    assert (err.attempts, err.last_status, err.last_kind) == (7, 503, "http_status")
    assert "scripted 503" in str(err)
    assert len(scripted_server.requests) == 7
    assert len({r.headers["x-request-id"] for r in scripted_server.requests}) == 1


async def test_404_retried_briefly_then_fatal(scripted_server: ScriptedServer) -> None:
    scripted_server.script("404", "404")
    async with make_sampler(scripted_server) as sampler:
        [c] = await sampler.sample_with_prompt_tokens(PROMPT, max_tokens=16)
        check(c)
        scripted_server.script("404", "404", "404", "404")
        with pytest.raises(SamplingStatusError, match="scripted 404"):
            await sampler.sample_with_prompt_tokens(PROMPT)
    assert len(scripted_server.requests) == 3 + 3


async def test_attempt_timeout_is_retried(scripted_server: ScriptedServer) -> None:
    policy = SamplingRetryPolicy(backoff_initial_s=0.001, backoff_max_s=0.001, attempt_timeout_s=0.3)
    scripted_server.script("stall:30")
    async with make_sampler(scripted_server, policy=policy) as sampler:
        [c] = await sampler.sample_with_prompt_tokens(PROMPT, max_tokens=16)
        check(c)
        assert c.attempts == 2
        scripted_server.script("stall:30", "stall:30")
        short = SamplingRetryPolicy(max_attempts=2, backoff_initial_s=0.001, attempt_timeout_s=0.2)
        sampler.retry_policy = short
        with pytest.raises(SamplingTimeoutError):
            await sampler.sample_with_prompt_tokens(PROMPT)


async def test_idle_stream_is_cut_and_retried(scripted_server: ScriptedServer) -> None:
    policy = SamplingRetryPolicy(
        backoff_initial_s=0.001, backoff_max_s=0.001, attempt_timeout_s=30, idle_timeout_s=0.3
    )
    scripted_server.script("stall_mid:30")
    ctl = RecordingController()
    async with make_sampler(scripted_server, ctl, policy=policy) as sampler:
        [c] = await sampler.sample_with_prompt_tokens(PROMPT, max_tokens=16)
    check(c)
    assert c.attempts == 2
    stalled = ctl.released[0]
    assert stalled is not None and stalled.transport_error and stalled.error == "idle timeout"


async def test_cancellation_releases_the_slot(scripted_server: ScriptedServer) -> None:
    ctl = RecordingController(window=1)
    scripted_server.script("stall:30")
    async with make_sampler(scripted_server, ctl) as sampler:
        first = asyncio.create_task(sampler.sample_with_prompt_tokens(PROMPT))
        await asyncio.wait_for(scripted_server.arrived.wait(), 5)
        queued = asyncio.create_task(sampler.sample_with_prompt_tokens(PROMPT))  # waits on the gate
        await asyncio.sleep(0.05)
        assert ctl.in_flight == 1 and ctl.acquired == 1
        queued.cancel()
        first.cancel()
        for task in (first, queued):
            with pytest.raises(asyncio.CancelledError):
                await task
        assert ctl.in_flight == 0 and ctl.released == [None]
        [c] = await sampler.sample_with_prompt_tokens(PROMPT, max_tokens=16)  # the slot is usable again
        check(c)


async def test_failed_sibling_cancels_the_others(scripted_server: ScriptedServer) -> None:
    scripted_server.script("400", "stall:30", "stall:30")
    ctl = RecordingController()
    async with make_sampler(scripted_server, ctl) as sampler:
        with pytest.raises(SamplingStatusError):
            await sampler.sample_with_prompt_tokens(PROMPT, n=3)
    assert ctl.in_flight == 0 and len(ctl.released) == ctl.acquired


async def test_max_seq_len_and_no_snapshot(scripted_server: ScriptedServer) -> None:
    scripted_server.snapshot = None
    async with make_sampler(scripted_server) as sampler:
        assert await sampler.sample_with_prompt_tokens(PROMPT, max_seq_len=4) == []
        assert await sampler.sample_with_prompt_tokens(PROMPT, max_tokens=16, max_seq_len=5) == []
        [c] = await sampler.sample_with_prompt_tokens(PROMPT, max_tokens=16, max_seq_len=64)
    assert c.snapshot_identity is None and len(scripted_server.requests) == 2


async def test_sample_with_tokens_uses_the_chat_template(scripted_server: ScriptedServer) -> None:
    from engine.local.models import load_tokenizer

    tok = load_tokenizer("tiny")
    messages = [{"role": "user", "content": "hello there"}]
    ids = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=False)
    async with make_sampler(scripted_server, tokenizer=tok) as sampler:
        [c] = await sampler.sample_with_tokens(messages, max_tokens=16)
    check(c, prompt=list(ids))
    assert scripted_server.requests[0].body["prompt"] == list(ids)


async def test_stream_completion_timings(
    scripted_server: ScriptedServer, http_session: aiohttp.ClientSession
) -> None:
    sampler = make_sampler(scripted_server)
    payload = sampler.build_payload(PROMPT, max_tokens=16, temperature=1.0)
    result = await stream_completion(
        http_session, sampler.url, payload, sampler.headers("rid-1"), timeout_s=5.0
    )
    ids, _ = expected_tokens(PROMPT, 16)
    assert result.completion_token_ids == ids and result.status == 200
    assert result.client_ttft_s is not None and result.client_ttft_s <= result.latency_s
    # One gap per later network chunk with content; TCP may coalesce the server's per-token writes.
    assert 0 <= len(result.inter_chunk_s) <= len(ids)
    assert result.metrics.request_id == "rid-1" and result.metrics.client_latency == result.latency_s
