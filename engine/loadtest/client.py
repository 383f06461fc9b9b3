"""One streamed completion, timed chunk by chunk, into a RequestRecord.

The sampler's attempt function reports totals; a load test needs the time of every content chunk
(TTFT, ITL) and must never retry (a retry would hide the failure and distort the schedule), so this
module owns the timing loop and leaves event decoding and server-metrics parsing to engine.sampling
(through engine.loadtest.scan, which only fast-paths plain content deltas).
(engine.sampling.stream_completion is not used as is: it requires token ids in the stream, which
vLLM and SGLang do not send, and treats 404 as retryable "not ready", while a load test wants
"wrong model" to stop the run.)
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from engine.loadtest.metrics import RequestRecord
from engine.loadtest.prompts import Prompt
from engine.loadtest.scan import StreamScanner
from engine.retry import TRANSIENT_STATUSES, error_message
from engine.sampling.errors import AttemptError, SamplingProtocolError
from engine.sampling.metrics import SNAPSHOT_HEADER, ServerMetrics
from engine.sampling.sse import CompletionAccumulator

# Statuses a healthy server uses to push back; they never abort a run.
PUSHBACK_STATUSES = TRANSIENT_STATUSES
DEFAULT_ENDPOINT = "/inference/v1/completions"
FIREWORKS_BODY = {"perf_metrics_in_response": True}
"""Fireworks and the embedded deployment put queue/TTFT timings in the final chunk when asked."""


@dataclass(frozen=True)
class Target:
    """Where and how to send completions. ``secret`` is only used to redact error texts."""

    url: str
    model: str
    headers: dict[str, str] = field(default_factory=dict)
    extra_body: dict[str, Any] = field(default_factory=dict)
    temperature: float = 1.0
    ignore_eos: bool = False
    request_timeout_s: float = 600.0
    secret: str | None = field(default=None, repr=False)
    accumulator: Callable[[], CompletionAccumulator] = CompletionAccumulator
    """Reads the server's stream dialect (token ids, server metrics); see engine.sampling.dialect."""
    dialect_body: Mapping[str, Any] = field(default_factory=lambda: dict(FIREWORKS_BODY))
    """Fields the dialect adds to every body (what makes its server report timings)."""

    def redact(self, text: str) -> str:
        return text.replace(self.secret, "***") if self.secret else text

    def payload(self, prompt: Prompt) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": prompt.token_ids,
            "max_tokens": prompt.max_tokens,
            "temperature": self.temperature,
            "stream": True,
            # OpenAI-compatible servers include usage (and vLLM its per-request metrics) on request.
            "stream_options": {"include_usage": True},
            **self.dialect_body,
        }
        if self.ignore_eos:
            body["ignore_eos"] = True
        body.update(self.extra_body)
        # null in --extra-body removes a default field, for servers that reject unknown ones
        return {k: v for k, v in body.items() if v is not None}


@dataclass(frozen=True)
class PreparedRequest:
    """A request body serialized before the run (no JSON encoding on the hot path)."""

    body: bytes
    input_tokens: int


def prepare(target: Target, prompts: Sequence[Prompt]) -> list[PreparedRequest]:
    return [PreparedRequest(json.dumps(target.payload(p)).encode(), p.input_tokens) for p in prompts]


def completions_url(base: str, endpoint: str | None) -> str:
    """Join a base URL and an endpoint path; a URL that already names a completions path is kept."""
    base = base.rstrip("/")
    if endpoint is None:
        if base.endswith("/completions"):
            return base
        endpoint = DEFAULT_ENDPOINT
    return base + "/" + endpoint.lstrip("/")


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def _error_message(body: str) -> str:
    """The server's error message from a JSON error body, else the body itself."""
    return _short(error_message(body, body))


def is_fatal(rec: RequestRecord) -> bool:
    """A failure that repeating cannot fix (wrong model, bad URL, auth, unreachable host)."""
    if rec.ok or rec.error_kind is None:
        return False
    if rec.error_kind.startswith("http_"):
        return rec.http_status not in PUSHBACK_STATUSES
    return rec.error_kind in ("connection", "protocol_error")


async def stream_one(
    session: aiohttp.ClientSession,
    target: Target,
    prepared: PreparedRequest,
    rec: RequestRecord,
    t0: float,
    clock: Callable[[], float] = time.perf_counter,
) -> ServerMetrics | None:
    """Send one streamed completion and fill ``rec`` (never raises except CancelledError).

    Returns the server metrics for the concurrency controller: parsed ones on success or on a
    push-back status, a transport-error record on connection failures, None otherwise.
    """
    rec.input_tokens = prepared.input_tokens
    rec.sent_s = clock() - t0
    try:
        async with asyncio.timeout(target.request_timeout_s):
            return await _exchange(session, target, prepared, rec, t0, clock)
    except TimeoutError:
        rec.error_kind, rec.error = "timeout", f"no complete response within {target.request_timeout_s:g}s"
        return None
    except aiohttp.ClientConnectorError as exc:
        rec.error_kind, rec.error = "connection", f"cannot connect to {target.url}: {exc.os_error or exc}"
        return ServerMetrics(transport_error=True)
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError) as exc:
        rec.error_kind, rec.error = "disconnected", f"stream cut: {type(exc).__name__}: {exc}"
        return ServerMetrics(transport_error=True)
    except aiohttp.ClientError as exc:
        rec.error_kind, rec.error = "client_error", target.redact(f"{type(exc).__name__}: {exc}")
        return ServerMetrics(transport_error=True)
    finally:
        if rec.end_s is None and rec.error_kind is not None:
            rec.end_s = clock() - t0


async def _exchange(
    session: aiohttp.ClientSession,
    target: Target,
    prepared: PreparedRequest,
    rec: RequestRecord,
    t0: float,
    clock: Callable[[], float],
) -> ServerMetrics | None:
    headers = {**target.headers, "Content-Type": "application/json"}
    async with session.post(target.url, data=prepared.body, headers=headers) as resp:
        rec.http_status = resp.status
        if resp.status >= 400:
            body = await resp.text(errors="replace")
            rec.end_s = clock() - t0
            rec.error_kind = f"http_{resp.status}"
            rec.error = target.redact(f"HTTP {resp.status} from {target.url}: {_error_message(body)}")
            if resp.status in PUSHBACK_STATUSES:
                return ServerMetrics.from_headers(resp.headers, http_status_code=resp.status)
            return None
        scanner = StreamScanner(target.accumulator())
        acc = scanner.acc
        chunks = rec.chunk_s
        try:
            # Read to EOF even after [DONE] so the connection goes back to the pool.
            async for data in resp.content.iter_any():
                if scanner.done:
                    continue
                n = scanner.feed(data)
                if n:
                    now = clock() - t0
                    chunks.extend([now] * n)  # events completed by the same read arrived together
            if not scanner.done:
                n = scanner.close()
                if n:
                    chunks.extend([clock() - t0] * n)
        except AttemptError as exc:  # an error event inside the stream
            rec.end_s = clock() - t0
            rec.error_kind, rec.error = "stream_error", target.redact(str(exc))
            return exc.metrics
        except SamplingProtocolError as exc:
            rec.end_s = clock() - t0
            rec.error_kind, rec.error = "protocol_error", target.redact(str(exc))
            return None
        rec.end_s = clock() - t0
        rec.first_token_s = chunks[0] if chunks else None
        rec.finish_reason = acc.finish_reason
        rec.snapshot_identity = acc.snapshot_identity or resp.headers.get(SNAPSHOT_HEADER)
        usage_tokens = (acc.usage or {}).get("completion_tokens")
        if isinstance(usage_tokens, int):
            rec.output_tokens, rec.output_tokens_source = usage_tokens, "usage"
        elif acc.raw_chunks:
            rec.output_tokens = sum(len(c) for c in acc.raw_chunks)
            rec.output_tokens_source = "raw_output"
        else:  # neither usage nor ids: chunks are the best count there is (chunk != token)
            rec.output_tokens, rec.output_tokens_source = len(chunks), "chunks"
        metrics = ServerMetrics.from_headers(resp.headers, acc.perf_metrics, http_status_code=resp.status)
        rec.prefill_queue_s = metrics.prefill_queue_duration
        rec.server_ttft_s = metrics.server_time_to_first_token
        if acc.finish_reason is None:
            rec.error_kind, rec.error = "truncated", "the stream ended without a finish_reason"
            return None
        rec.ok = True
        return metrics
