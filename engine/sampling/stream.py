"""One streamed completion attempt: POST, parse the SSE stream, time it, classify any failure.

``stream_completion`` is public and reusable on its own (``hotloop loadtest`` calls it): it does no
admission control and no retries, so a caller can wrap it in its own. It returns a ``StreamResult`` with
token ids, logprobs, finish reason, the merged ``ServerMetrics`` and client timings (TTFT, gaps between
content chunks, end-to-end latency), or raises:

* ``AttemptError`` (retryable): 408/429/5xx (``kind="http_status"``), 404/425 (``"not_ready"``), a
  dropped connection (``"connection"``), the per-attempt deadline (``"timeout"``), a stream that ended
  without a finish reason (``"sse_truncation"``), an in-stream error event (``"upstream_stream"``).
  ``.metrics`` is what a concurrency controller should observe for the attempt.
* ``SamplingStatusError`` (fatal): any other 4xx, with the server's message.
* ``SamplingProtocolError`` (fatal): a stream that breaks the completions contract.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from engine.sampling.errors import AttemptError, SamplingStatusError
from engine.sampling.metrics import SNAPSHOT_HEADER, ServerMetrics
from engine.sampling.retry import NOT_READY_STATUSES, RETRYABLE_STATUSES, parse_retry_after
from engine.sampling.sse import CompletionAccumulator, SSEDecoder

_CONNECTION_ERRORS = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, ConnectionError)
_ERROR_BODY_LIMIT = 4096


@functools.lru_cache(maxsize=16)
def _client_timeout(idle_timeout_s: float | None) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=None, sock_read=idle_timeout_s)


@dataclass(frozen=True, slots=True)
class StreamResult:
    """One successful n=1 streamed completion."""

    text: str
    completion_token_ids: list[int]
    prompt_token_ids: list[int] | None
    """The server's (possibly expanded) prompt ids when it returned them."""
    finish_reason: str
    inference_logprobs: list[float | None]
    sampling_logprobs: list[float | None]
    usage: dict[str, Any] | None
    snapshot_identity: str | None
    response_id: str | None
    metrics: ServerMetrics
    status: int
    client_ttft_s: float | None
    """Send to the first chunk with content (text or token ids)."""
    inter_chunk_s: tuple[float, ...]
    """Gaps between successive content chunks (a chunk may hold several tokens)."""
    latency_s: float
    """Send to end of stream."""


async def _error_message(resp: aiohttp.ClientResponse) -> str:
    try:
        raw = await resp.content.read(_ERROR_BODY_LIMIT)
    except (TimeoutError, *_CONNECTION_ERRORS):
        return resp.reason or ""
    text = raw.decode("utf-8", errors="replace").strip()
    try:
        body = json.loads(text)
    except json.JSONDecodeError:
        return text or (resp.reason or "")
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            return str(err.get("message") or err.get("detail") or err)
        return str(err if err is not None else body.get("message") or body)
    return text


async def _raise_for_status(resp: aiohttp.ClientResponse, retry_attempt: int) -> None:
    status = resp.status
    if status < 400:
        return
    message = await _error_message(resp)
    if status in RETRYABLE_STATUSES or status in NOT_READY_STATUSES:
        metrics = ServerMetrics.from_headers(
            resp.headers, http_status_code=status, retry_attempt=retry_attempt, error=message[:500]
        )
        raise AttemptError(
            f"HTTP {status}: {message}",
            kind="not_ready" if status in NOT_READY_STATUSES else "http_status",
            status=status,
            retry_after_s=parse_retry_after(resp.headers.get("Retry-After")),
            metrics=metrics,
        )
    raise SamplingStatusError(status, message, request_id=resp.headers.get("x-request-id"))


async def stream_completion(
    session: aiohttp.ClientSession,
    url: str,
    payload: Mapping[str, Any],
    headers: Mapping[str, str],
    *,
    timeout_s: float = 600.0,
    idle_timeout_s: float | None = 120.0,
    retry_attempt: int = 1,
    clock: Callable[[], float] = time.perf_counter,
) -> StreamResult:
    """POST ``payload`` (which must ask for ``stream: true``) and fold the stream into a result."""
    start = clock()
    acc = CompletionAccumulator()
    decoder = SSEDecoder()
    first: float | None = None
    last_content: float | None = None
    gaps: list[float] = []
    status = 0
    resp_headers: Mapping[str, str] = {}

    def note(content: bool) -> None:
        nonlocal first, last_content
        if not content:
            return
        now = clock()
        if first is None:
            first = now - start
        else:
            assert last_content is not None
            gaps.append(now - last_content)
        last_content = now

    timeout = _client_timeout(idle_timeout_s)
    try:
        async with asyncio.timeout(timeout_s):
            async with session.post(url, json=payload, headers=headers, timeout=timeout) as resp:
                status, resp_headers = resp.status, resp.headers
                await _raise_for_status(resp, retry_attempt)
                # Read to EOF even after [DONE] so the connection goes back to the pool.
                async for chunk in resp.content.iter_any():
                    if not acc.done:
                        for event in decoder.feed(chunk):
                            note(acc.feed_event(event))
                if not acc.done:
                    for event in decoder.close():
                        note(acc.feed_event(event))
    except AttemptError as exc:
        if exc.kind == "upstream_stream" and exc.metrics is not None:
            exc.metrics = exc.metrics.with_client(retry_attempt=retry_attempt)
        raise
    except TimeoutError as exc:
        raise AttemptError(
            f"attempt timed out (deadline {timeout_s:g} s, idle limit {idle_timeout_s} s)",
            kind="timeout",
            metrics=ServerMetrics(transport_error=True, retry_attempt=retry_attempt, error="timeout"),
        ) from exc
    except _CONNECTION_ERRORS as exc:
        raise AttemptError(
            f"connection failed: {type(exc).__name__}: {exc}",
            kind="connection",
            metrics=ServerMetrics(
                transport_error=True, retry_attempt=retry_attempt, error=type(exc).__name__
            ),
        ) from exc
    latency = clock() - start
    if acc.finish_reason is None:
        raise AttemptError(
            "stream ended without a finish_reason (truncated)" + ("" if acc.done else " and without [DONE]"),
            kind="sse_truncation",
            status=status,
        )
    tokens = acc.completion_token_ids()
    usage = acc.usage
    completion_tokens = usage.get("completion_tokens") if usage else None
    metrics = ServerMetrics.from_headers(
        resp_headers,
        acc.perf_metrics,
        client_ttft=first,
        client_latency=latency,
        completion_tokens=int(completion_tokens) if completion_tokens is not None else len(tokens),
        http_status_code=status,
        retry_attempt=retry_attempt,
    )
    snapshot = acc.snapshot_identity or resp_headers.get(SNAPSHOT_HEADER) or None
    return StreamResult(
        text=acc.text,
        completion_token_ids=tokens,
        prompt_token_ids=acc.prompt_token_ids,
        finish_reason=acc.finish_reason,
        inference_logprobs=acc.inference_logprobs(),
        sampling_logprobs=acc.sampling_logprobs(),
        usage=usage,
        snapshot_identity=snapshot,
        response_id=acc.response_id,
        metrics=metrics
        if metrics.snapshot_identity == snapshot
        else metrics.with_client(snapshot_identity=snapshot),
        status=status,
        client_ttft_s=first,
        inter_chunk_s=tuple(gaps),
        latency_s=latency,
    )
