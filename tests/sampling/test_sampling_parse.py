"""ServerMetrics parsing, the SSE decoder, the stream accumulator and the retry policy value."""

from __future__ import annotations

import email.utils
import json
import random

import pytest

from engine.backends.fireworks.dialect import FireworksAccumulator
from engine.errors import ConfigError, FatalError, RetryableError
from engine.sampling import SamplingRetryPolicy, ServerMetrics, parse_retry_after
from engine.sampling.errors import AttemptError, SamplingProtocolError
from engine.sampling.sse import CompletionAccumulator, SSEDecoder, SSEEvent


def test_metrics_case_insensitive_prefix_and_perf_metrics_win() -> None:
    headers = {
        "Fireworks-Prefill-Queue-Duration": "2.5",
        "NUM-CONCURRENT-REQUESTS": "7",
        "prompt-tokens": "11",
        "fireworks-prompt-tokens": "99",  # bare key is looked up first
        "X-Request-Id": "abc",
        "x-hotloop-snapshot-identity": "snap-1",
        "generation-queue-duration": "not-a-number",
    }
    m = ServerMetrics.from_headers(
        headers, {"prefill-queue-duration": 0.25}, client_ttft=0.1, retry_attempt=2
    )
    assert m.prefill_queue_duration == 0.25
    assert m.num_concurrent_requests == 7
    assert m.prompt_tokens == 11
    assert m.request_id == "abc"
    assert m.snapshot_identity == "snap-1"
    assert m.generation_queue_duration is None
    assert (m.client_ttft, m.retry_attempt) == (0.1, 2)
    fw = ServerMetrics.from_headers({"fireworks-prefill-queue-duration": "0.5", "cf-ray": "r1"})
    assert (fw.prefill_queue_duration, fw.request_id) == (0.5, "r1")
    assert ServerMetrics.from_headers(None).prefill_queue_duration is None


def _events(*chunks: bytes) -> list[SSEEvent]:
    dec = SSEDecoder()
    out = [e for c in chunks for e in dec.feed(c)]
    return out + list(dec.close())


def test_sse_decoder_framing() -> None:
    stream = (
        b'data: {"a": 1}\n\n: comment\n\nevent: ping\ndata: {}\n\nevent: error\ndata: {"x":\ndata: 2}\n\n'
    )
    # Split at every byte boundary: framing must not depend on how the network cuts the stream.
    whole = _events(stream)
    assert whole == [SSEEvent("message", '{"a": 1}'), SSEEvent("error", '{"x":\n2}')]
    assert _events(*[stream[i : i + 1] for i in range(len(stream))]) == whole
    assert _events(b"data: [DONE]\r\n\r\n") == [SSEEvent("message", "[DONE]")]
    assert _events(b"data: tail-without-newline") == [SSEEvent("message", "tail-without-newline")]


def _chunk(text: str, tok: int, finish: str | None = None, **extra: object) -> SSEEvent:
    choice: dict[str, object] = {"index": 0, "text": text, "finish_reason": finish}
    choice["logprobs"] = {"content": [{"token_id": tok, "logprob": -1.0, "sampling_logprob": -2.0}]}
    return SSEEvent("message", json.dumps({"choices": [choice], **extra}))


def test_accumulator_builds_completion_and_ignores_after_done() -> None:
    acc = FireworksAccumulator()
    assert acc.feed_event(_chunk("a", 5))
    assert acc.feed_event(_chunk("b", 6, "length", usage={"completion_tokens": 2}, snapshot_identity="s"))
    assert not acc.feed_event(SSEEvent("message", "[DONE]"))
    assert not acc.feed_event(_chunk("zzz", 9))
    assert (acc.text, acc.finish_reason, acc.snapshot_identity) == ("ab", "length", "s")
    assert acc.completion_token_ids() == [5, 6]
    assert acc.inference_logprobs() == [-1.0, -1.0]
    assert acc.sampling_logprobs() == [-2.0, -2.0]


def test_accumulator_raw_output_cumulative_and_errors() -> None:
    acc = FireworksAccumulator()
    for i, tok in enumerate([5, 6]):
        ev = json.loads(_chunk("x", tok).data)
        ev["choices"][0]["raw_output"] = {"completion_token_ids": [5, 6][: i + 1]}
        acc.feed_chunk(ev)
    assert acc.completion_token_ids() == [5, 6]  # repeated cumulative lists are not concatenated
    with pytest.raises(AttemptError) as transient:
        FireworksAccumulator().feed_event(SSEEvent("error", '{"error": {"message": "busy", "code": 503}}'))
    assert transient.value.kind == "upstream_stream" and transient.value.status == 503
    with pytest.raises(SamplingProtocolError):
        FireworksAccumulator().feed_event(SSEEvent("error", '{"error": {"message": "bad", "code": 400}}'))
    with pytest.raises(SamplingProtocolError, match="not JSON"):
        FireworksAccumulator().feed_event(SSEEvent("message", "{oops"))
    with pytest.raises(SamplingProtocolError, match="finish_reason"):
        FireworksAccumulator().feed_event(_chunk("a", 1, "weird"))
    no_ids = FireworksAccumulator()
    no_ids.feed_chunk({"choices": [{"index": 0, "text": "a", "finish_reason": "stop"}]})
    with pytest.raises(SamplingProtocolError, match="raw_output"):
        no_ids.completion_token_ids()


def test_retry_policy_backoff_jitter_and_retry_after_floor() -> None:
    policy = SamplingRetryPolicy()
    rng = random.Random(0)
    for attempt, base in [(1, 2.0), (2, 4.0), (3, 8.0), (5, 30.0), (6, 30.0)]:
        delays = [policy.backoff(attempt, None, rng) for _ in range(200)]
        assert base * 0.5 <= min(delays) and max(delays) < base * 1.5
    assert policy.backoff(1, 20.0, rng) >= 20.0
    assert policy.backoff(1, 500.0, rng) <= 45.0  # Retry-After floor capped at 30 s, jittered base < 3 s
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("garbage") is None
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 10, usegmt=True)
    assert parse_retry_after(date, now=now) == pytest.approx(10.0, abs=1.0)
    with pytest.raises(ConfigError, match="max_attempts"):
        SamplingRetryPolicy(max_attempts=0)


def test_error_taxonomy() -> None:
    from engine.sampling import SamplingExhaustedError, SamplingStatusError

    assert issubclass(AttemptError, RetryableError)
    assert issubclass(SamplingStatusError, FatalError)
    assert issubclass(SamplingExhaustedError, FatalError)


def test_fused_feed_bytes_matches_decoder_at_any_split() -> None:
    chunks = [_chunk("a", 5).data, _chunk("b", 6, "length", snapshot_identity="s").data]
    stream = (
        b": keepalive\r\n\r\nevent: ping\r\ndata: {}\r\n\r\n"
        + b"".join(b"data: " + c.encode() + b"\r\n\r\n" for c in chunks)
        + b"data: [DONE]\n\ndata: {ignored after done}\n\n"
    )

    def summary(acc: CompletionAccumulator) -> tuple[object, ...]:
        return (acc.text, acc.completion_token_ids(), acc.finish_reason, acc.snapshot_identity, acc.done)

    reference = FireworksAccumulator()
    for event in _events(stream):
        reference.feed_event(event)
    for step in (1, 3, 7, len(stream)):
        fused = FireworksAccumulator()
        content = sum(fused.feed_bytes(stream[i : i + step]) for i in range(0, len(stream), step))
        content += fused.finish_bytes()
        assert summary(fused) == summary(reference) == ("ab", [5, 6], "length", "s", True)
        assert content == 2
    unterminated = FireworksAccumulator()
    unterminated.feed_bytes(b"data: " + chunks[1].encode())
    assert unterminated.finish_reason is None and unterminated.finish_bytes() == 1
    assert unterminated.finish_reason == "length"
    with pytest.raises(AttemptError):
        FireworksAccumulator().feed_bytes(
            b'event: error\ndata: {"error": {"message": "x", "code": 503}}\n\n'
        )
