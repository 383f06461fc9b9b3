"""Per-attempt server metrics: response headers merged with the final SSE chunk's ``perf_metrics``.

A deployment sends the part of its timings known up front as response headers and the complete set in
the final chunk when asked with ``perf_metrics_in_response: true``. Fireworks' SDK merges
``{**headers, **perf_metrics}`` (the final chunk wins) and looks every key up case-insensitively, bare
first, then with a ``fireworks-`` prefix; hotloop does the same so it reads Fireworks, the embedded
deployment and anything in between.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

SNAPSHOT_HEADER = "x-hotloop-snapshot-identity"
"""Response header naming the weights snapshot that served the request (hotloop contract)."""

_REQUEST_ID_KEYS = ("x-request-id", "x-fireworks-request-id", "cf-ray")


def _lower(mapping: Mapping[str, Any] | None) -> dict[str, Any]:
    return {str(k).lower(): v for k, v in (mapping or {}).items()}


def _lookup(merged: Mapping[str, Any], key: str) -> Any:
    value = merged.get(key)
    if value is None:
        value = merged.get("fireworks-" + key)
    return value


def _as_float(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if out == out else None  # NaN is no measurement


def _as_int(value: Any) -> int | None:
    out = _as_float(value)
    return None if out is None else int(out)


def _as_str(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


@dataclass(frozen=True, slots=True)
class ServerMetrics:
    """Timings and counters of one sampling attempt. Seconds as floats, counts as ints, None = unknown."""

    prefill_queue_duration: float | None = None
    generation_queue_duration: float | None = None
    num_concurrent_requests: int | None = None
    server_time_to_first_token: float | None = None
    cached_prompt_tokens: int | None = None
    prompt_tokens: int | None = None
    server_processing_time: float | None = None
    tokenizer_queue_duration: float | None = None
    tokenizer_duration: float | None = None
    prefill_duration: float | None = None
    generation_duration: float | None = None
    backend_host: str | None = None
    deployment: str | None = None
    pod_template_hash: str | None = None
    request_id: str | None = None
    snapshot_identity: str | None = None
    # Client side.
    client_ttft: float | None = None
    client_latency: float | None = None
    completion_tokens: int | None = None
    http_status_code: int | None = None
    transport_error: bool = False
    retry_attempt: int = 1
    error: str | None = None

    @classmethod
    def from_headers(
        cls,
        headers: Mapping[str, Any] | None,
        perf_metrics: Mapping[str, Any] | None = None,
        **client: Any,
    ) -> ServerMetrics:
        """Parse headers merged with ``perf_metrics`` (which wins); ``client`` sets client-side fields."""
        merged = {**_lower(headers), **_lower(perf_metrics)}
        request_id = next((str(merged[k]) for k in _REQUEST_ID_KEYS if merged.get(k) is not None), None)
        return cls(
            prefill_queue_duration=_as_float(_lookup(merged, "prefill-queue-duration")),
            generation_queue_duration=_as_float(_lookup(merged, "generation-queue-duration")),
            num_concurrent_requests=_as_int(_lookup(merged, "num-concurrent-requests")),
            server_time_to_first_token=_as_float(_lookup(merged, "server-time-to-first-token")),
            cached_prompt_tokens=_as_int(_lookup(merged, "cached-prompt-tokens")),
            prompt_tokens=_as_int(_lookup(merged, "prompt-tokens")),
            server_processing_time=_as_float(_lookup(merged, "server-processing-time")),
            tokenizer_queue_duration=_as_float(_lookup(merged, "tokenizer-queue-duration")),
            tokenizer_duration=_as_float(_lookup(merged, "tokenizer-duration")),
            prefill_duration=_as_float(_lookup(merged, "prefill-duration")),
            generation_duration=_as_float(_lookup(merged, "generation-duration")),
            backend_host=_as_str(_lookup(merged, "backend-host")),
            deployment=_as_str(_lookup(merged, "deployment")),
            pod_template_hash=_as_str(_lookup(merged, "pod-template-hash")),
            request_id=request_id,
            snapshot_identity=_as_str(merged.get(SNAPSHOT_HEADER)),
            **client,
        )

    def with_client(self, **client: Any) -> ServerMetrics:
        """A copy with client-side fields set (``client_ttft``, ``retry_attempt``, ...)."""
        return replace(self, **client)
