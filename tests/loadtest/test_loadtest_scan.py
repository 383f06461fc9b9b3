"""The hot-path stream scanner agrees with engine.sampling's full decoder on every stream shape,
however the bytes are split across network reads."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.backends.fireworks.dialect import FireworksAccumulator
from engine.loadtest.scan import StreamScanner
from engine.sampling.errors import AttemptError
from engine.sampling.sse import CompletionAccumulator, SSEDecoder


def _data(obj: object) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def _choice(text: str, finish: str | None = None, **extra: object) -> dict[str, object]:
    return {"choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish, **extra}]}


VLLM = (
    b"".join(_data({**_choice(f" w{i}"), "usage": None, "id": "cmpl-1"}) for i in range(5))
    + _data({**_choice("", "length"), "usage": None})
    + _data({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}})
    + b"data: [DONE]\n\n"
)
FIREWORKS = (
    b": keep-alive comment\r\n\r\n"
    + _data(_choice("a", raw_output={"completion_token_ids": [7]}))
    + _data(_choice("", raw_output={"completion_token_ids": [8]}))  # ids only, no text: still content
    + _data(_choice('b \\"q\\"', None))
    + _data(
        {**_choice("c", "stop"), "perf_metrics": {"prefill-queue-duration": 0.25}, "snapshot_identity": "s1"}
    )
    + b"data: [DONE]\n\n"
)
NAMED_EVENTS = (
    _data(_choice("x"))
    + b"event: ping\ndata: {}\n\n"
    + _data(_choice("y"))
    + _data({**_choice("", "length"), "usage": {"completion_tokens": 2}})
    + b"data: [DONE]\n\n"
)
ERROR_EVENT = (
    _data(_choice("x")) + b'event: error\ndata: {"error": {"message": "overloaded", "code": 503}}\n\n'
)
TRUNCATED = _data(_choice("x")) + _data(_choice("y"))  # no finish reason, no [DONE]


def _reference(stream: bytes) -> tuple[int, CompletionAccumulator]:
    acc, dec, n = FireworksAccumulator(), SSEDecoder(), 0
    for event in [*dec.feed(stream), *dec.close()]:
        if acc.done:
            break
        n += acc.feed_event(event)
    return n, acc


def _scan(stream: bytes, cuts: list[int]) -> tuple[int, CompletionAccumulator]:
    scanner, n, last = StreamScanner(FireworksAccumulator()), 0, 0
    for cut in [*sorted(set(cuts)), len(stream)]:
        if not scanner.done:
            n += scanner.feed(stream[last:cut])
        last = cut
    if not scanner.done:
        n += scanner.close()
    return n, scanner.acc


@pytest.mark.parametrize(
    "stream", [VLLM, FIREWORKS, NAMED_EVENTS, TRUNCATED], ids=["vllm", "fw", "events", "cut"]
)
@settings(max_examples=40, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=12))
def test_scanner_matches_the_full_decoder(stream: bytes, cuts: list[int]) -> None:
    cuts = [c % (len(stream) + 1) for c in cuts]
    n_ref, ref = _reference(stream)
    n, acc = _scan(stream, cuts)
    assert n == n_ref
    assert (acc.finish_reason, acc.usage, acc.perf_metrics, acc.snapshot_identity, acc.done) == (
        ref.finish_reason,
        ref.usage,
        ref.perf_metrics,
        ref.snapshot_identity,
        ref.done,
    )
    assert acc.raw_chunks == ref.raw_chunks


def test_known_counts_and_errors() -> None:
    assert _scan(VLLM, [])[0] == 5 and _scan(FIREWORKS, [])[0] == 4 and _scan(NAMED_EVENTS, [])[0] == 2
    assert _scan(TRUNCATED, [])[1].finish_reason is None
    with pytest.raises(AttemptError, match="overloaded"):
        _scan(ERROR_EVENT, [10])
