"""The vLLM dialect without a server: the request body, and a recorded vLLM 0.32 stream parsed into
token ids, logprobs, the queue-time signal and (0.33's ``weight_versions``) the identity."""

from __future__ import annotations

import json
from typing import Any

import pytest

from engine.backends.vllm.dialect import MIXED_PREFIX, VllmAccumulator, VllmDialect, identity_of_spans
from engine.sampling.errors import AttemptError, SamplingProtocolError
from engine.sampling.metrics import ServerMetrics


def _chunk(
    text: str, token: int, logprob: float, finish: str | None = None, prompt: Any = None
) -> dict[str, Any]:
    return {
        "id": "cmpl-1",
        "object": "text_completion",
        "model": "small",
        "choices": [
            {
                "index": 0,
                "text": text,
                "logprobs": {
                    "text_offset": [0],
                    "token_logprobs": [logprob],
                    "tokens": [text],
                    "top_logprobs": [],
                },
                "finish_reason": finish,
                "stop_reason": None,
                "prompt_token_ids": prompt,
                "token_ids": [token],
            }
        ],
    }


# As vLLM 0.32 streams it (return_token_ids, logprobs 0, include_usage, --enable-per-request-metrics).
STREAM = [
    _chunk("ard", 343, -7.4765, prompt=[5, 6, 7, 8]),
    _chunk(" loop", 992, -6.5074),
    _chunk(" 26", 587, -6.4052, finish="length"),
    {
        "id": "cmpl-1",
        "object": "text_completion",
        "model": "small",
        "choices": [],
        "usage": {"prompt_tokens": 4, "total_tokens": 7, "completion_tokens": 3},
        "metrics": {
            "time_to_first_token_ms": 10.9,
            "generation_time_ms": 15.0,
            "queue_time_ms": 2003.5,
            "mean_itl_ms": 2.15,
            "tokens_per_second": 308.4,
        },
    },
]


def _sse(chunks: list[dict[str, Any]]) -> bytes:
    return b"".join(f"data: {json.dumps(c)}\n\n".encode() for c in chunks) + b"data: [DONE]\n\n"


def test_payload_asks_for_ids_logprobs_usage_and_no_truncation() -> None:
    body = VllmDialect().payload("small", [1, 2], max_tokens=5, temperature=1.0, extra={"seed": 3})
    assert body["return_token_ids"] is True and body["logprobs"] == 0 and body["top_k"] == 0
    assert body["stream_options"] == {"include_usage": True} and body["stream"] is True
    assert body["top_p"] == 1.0 and body["n"] == 1 and body["seed"] == 3
    assert "return_weight_versions" not in body and "perf_metrics_in_response" not in body
    assert VllmDialect(weight_versions=True).payload("m", [1], max_tokens=1, temperature=0.0, extra={})[
        "return_weight_versions"
    ]
    assert VllmDialect().payload("m", [1], max_tokens=1, temperature=1.0, extra={"top_k": 5})["top_k"] == 5
    assert VllmDialect().completions_path == "/v1/completions"


def test_recorded_stream_parses_into_ids_logprobs_and_queue_seconds() -> None:
    acc = VllmAccumulator()
    raw = _sse(STREAM)
    content = sum(acc.feed_bytes(raw[i : i + 37]) for i in range(0, len(raw), 37))  # arbitrary splits
    assert content == 3 and acc.done
    assert acc.completion_token_ids() == [343, 992, 587]
    assert acc.prompt_token_ids == [5, 6, 7, 8]
    assert acc.inference_logprobs() == [-7.4765, -6.5074, -6.4052]
    assert acc.sampling_logprobs() == [None, None, None]  # raw logprobs only: one entry per token
    assert acc.finish_reason == "length" and acc.usage is not None and acc.usage["completion_tokens"] == 3
    assert acc.snapshot_identity is None  # 0.32 says nothing per completion
    metrics = ServerMetrics.from_headers({}, acc.perf_metrics)
    assert metrics.prefill_queue_duration == pytest.approx(2.0035)
    assert metrics.prefill_duration == pytest.approx(0.0109)
    assert metrics.generation_duration == pytest.approx(0.015)
    assert metrics.server_time_to_first_token == pytest.approx(2.0144)
    assert metrics.prompt_tokens == 4


def test_stream_without_metrics_leaves_the_queue_signal_unknown() -> None:
    acc = VllmAccumulator()
    final = {k: v for k, v in STREAM[-1].items() if k != "metrics"}
    acc.feed_bytes(_sse([*STREAM[:-1], final]))
    assert acc.completion_token_ids() == [343, 992, 587]
    assert ServerMetrics.from_headers({}, acc.perf_metrics).prefill_queue_duration is None


def test_logprobs_absent_still_one_entry_per_token() -> None:
    acc = VllmAccumulator()
    chunks = [json.loads(json.dumps(c)) for c in STREAM]
    for c in chunks[:-1]:
        c["choices"][0]["logprobs"] = None
    acc.feed_bytes(_sse(chunks))
    assert acc.completion_token_ids() == [343, 992, 587]
    assert acc.inference_logprobs() == [None, None, None]


def test_abort_and_error_finishes_are_retryable_stream_errors() -> None:
    acc = VllmAccumulator()
    with pytest.raises(AttemptError, match="abort"):
        acc.feed_bytes(_sse([STREAM[0], _chunk("", 5, -1.0, finish="abort")]))


def test_weight_versions_name_the_identity() -> None:
    assert identity_of_spans([{"version": "step-3", "start": 0, "end": 8}]) == "step-3"
    assert identity_of_spans([{"version": "default", "start": 0, "end": 2}]) is None
    mixed = identity_of_spans(
        [{"version": "a", "start": 0, "end": 2}, {"version": "b", "start": 2, "end": 4}]
    )
    assert mixed == MIXED_PREFIX + "a+b"
    for bad in ([], "x", [{"start": 0}]):
        with pytest.raises(SamplingProtocolError):
            identity_of_spans(bad)
    acc = VllmAccumulator()
    last = json.loads(json.dumps(STREAM[2]))
    last["choices"][0]["weight_versions"] = [{"version": "step-3", "start": 0, "end": 3}]
    acc.feed_bytes(_sse([STREAM[0], STREAM[1], last, STREAM[3]]))
    assert acc.snapshot_identity == "step-3"


def test_loadtest_picks_the_dialect_from_the_endpoint() -> None:
    from engine.backends.fireworks.dialect import FireworksAccumulator
    from engine.loadtest.cli import _dialect, dialect_of
    from engine.loadtest.client import Target
    from engine.loadtest.prompts import Prompt

    assert dialect_of("http://h:8000/v1/completions", None) == "vllm"
    assert dialect_of("http://h:1/inference/v1/completions", None) == "fireworks"
    assert dialect_of("http://h:8000/v1/completions", "fireworks") == "fireworks"
    acc, body = _dialect("vllm")
    assert acc is VllmAccumulator and body == {}
    payload = Target("u", "m", accumulator=acc, dialect_body=body).payload(Prompt([5], 2))
    assert "perf_metrics_in_response" not in payload and payload["stream_options"] == {"include_usage": True}
    acc, body = _dialect("fireworks")
    assert acc is FireworksAccumulator and body == {"perf_metrics_in_response": True}
