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
import itertools
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from engine.retry import NOT_READY_STATUSES, error_message, is_transient, parse_retry_after
from engine.sampling.errors import AttemptError, SamplingStatusError
from engine.sampling.metrics import SNAPSHOT_HEADER, ServerMetrics
from engine.sampling.sse import CompletionAccumulator, dumps

_CONNECTION_ERRORS = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, ConnectionError)
_ERROR_BODY_LIMIT = 4096


@functools.lru_cache(maxsize=16)
def _client_timeout(total_s: float) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=total_s)


class _IdleWatchdog:
    """Cancels the attempt when no bytes arrived for between ``idle_s`` and twice that.

    aiohttp's ``sock_read`` timeout re-arms a timer on every received chunk (~80 us per 17-chunk
    completion, measured); this timer re-arms once per ``idle_s`` and checks a chunk counter, so the
    per-chunk cost is one integer increment (``reads += 1``) by the reader.
    """

    __slots__ = ("fired", "handle", "idle_s", "loop", "reads", "seen", "task")

    def __init__(self, idle_s: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.task = asyncio.current_task()
        self.idle_s = idle_s
        self.reads = self.seen = 0
        self.fired = False
        self.handle = self.loop.call_later(idle_s, self._check)

    def _check(self) -> None:
        if self.reads != self.seen:
            self.seen = self.reads
            self.handle = self.loop.call_later(self.idle_s, self._check)
        elif self.task is not None:
            self.fired = True
            self.task.cancel()

    def close(self) -> bool:
        """Stop watching; True if it fired (the caller then owes the task one ``uncancel``)."""
        self.handle.cancel()
        return self.fired


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
    """Send to the first network chunk with content (text or token ids)."""
    inter_chunk_s: tuple[float, ...]
    """Gaps between successive network chunks with content (one may hold several events/tokens)."""
    latency_s: float
    """Send to end of stream."""


async def _error_message(resp: aiohttp.ClientResponse) -> str:
    try:
        raw = await resp.content.read(_ERROR_BODY_LIMIT)
    except (TimeoutError, *_CONNECTION_ERRORS):
        return resp.reason or ""
    return error_message(raw, resp.reason or "")


async def _raise_for_status(resp: aiohttp.ClientResponse, retry_attempt: int) -> None:
    status = resp.status
    if status < 400:
        return
    message = await _error_message(resp)
    if is_transient(status) or status in NOT_READY_STATUSES:
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
    idle_timeout_s: float | None = 300.0,
    retry_attempt: int = 1,
    clock: Callable[[], float] = time.perf_counter,
    accumulator: CompletionAccumulator | None = None,
) -> StreamResult:
    """POST ``payload`` (which must ask for ``stream: true``) and fold the stream into a result.

    ``accumulator`` reads the server's dialect (a fresh one per attempt; see engine.sampling.dialect);
    the default reads only the OpenAI-standard fields."""
    acc = accumulator if accumulator is not None else CompletionAccumulator()
    times: list[float] = []  # arrival of each network chunk that carried content
    status = 0
    resp_headers: Mapping[str, str] = {}
    if "Content-Type" not in headers:
        headers = {**headers, "Content-Type": "application/json"}
    body = dumps(payload)
    # aiohttp's total timeout bounds the whole attempt, body reads included (one timer, not two).
    timeout = _client_timeout(timeout_s)
    watchdog = _IdleWatchdog(idle_timeout_s) if idle_timeout_s is not None else None
    start = clock()
    try:
        async with session.post(url, data=body, headers=headers, timeout=timeout) as resp:
            status, resp_headers = resp.status, resp.headers
            await _raise_for_status(resp, retry_attempt)
            # Read to EOF even after [DONE] so the connection goes back to the pool.
            async for chunk in resp.content.iter_any():
                if watchdog is not None:
                    watchdog.reads += 1
                if not acc.done and acc.feed_bytes(chunk):
                    times.append(clock())
            if not acc.done and acc.finish_bytes():
                times.append(clock())
    except asyncio.CancelledError as exc:
        task = asyncio.current_task()
        if watchdog is None or not watchdog.close() or task is None or task.uncancel() > 0:
            raise  # cancelled from outside
        raise AttemptError(
            f"stream idle for over {idle_timeout_s:g} s",
            kind="timeout",
            metrics=ServerMetrics(transport_error=True, retry_attempt=retry_attempt, error="idle timeout"),
        ) from exc
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
    finally:
        if watchdog is not None:
            watchdog.close()
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
    first = times[0] - start if times else None
    snapshot = acc.snapshot_identity or resp_headers.get(SNAPSHOT_HEADER) or None
    metrics = ServerMetrics.from_headers(
        resp_headers,
        acc.perf_metrics,
        client_ttft=first,
        client_latency=latency,
        completion_tokens=int(completion_tokens) if completion_tokens is not None else len(tokens),
        http_status_code=status,
        retry_attempt=retry_attempt,
        snapshot_identity=snapshot,
    )
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
        metrics=metrics,
        status=status,
        client_ttft_s=first,
        inter_chunk_s=tuple(b - a for a, b in itertools.pairwise(times)),
        latency_s=latency,
    )
