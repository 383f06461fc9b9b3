"""Per-attempt server metrics: response headers merged with the final SSE chunk's ``perf_metrics``.

A deployment sends the part of its timings known up front as response headers and the complete set in
the final chunk when asked with ``perf_metrics_in_response: true``. Fireworks' SDK merges
``{**headers, **perf_metrics}`` (the final chunk wins) and looks every key up case-insensitively, bare
first, then with a ``fireworks-`` prefix; hotloop does the same so it reads Fireworks, the embedded
deployment and anything in between.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

SNAPSHOT_HEADER = "x-hotloop-snapshot-identity"
"""Response header naming the weights snapshot that served the request (hotloop contract)."""

_REQUEST_ID_KEYS = ("x-request-id", "x-fireworks-request-id", "cf-ray")


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


_FIELDS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "prefill-queue-duration": ("prefill_queue_duration", _as_float),
    "generation-queue-duration": ("generation_queue_duration", _as_float),
    "num-concurrent-requests": ("num_concurrent_requests", _as_int),
    "server-time-to-first-token": ("server_time_to_first_token", _as_float),
    "cached-prompt-tokens": ("cached_prompt_tokens", _as_int),
    "prompt-tokens": ("prompt_tokens", _as_int),
    "server-processing-time": ("server_processing_time", _as_float),
    "tokenizer-queue-duration": ("tokenizer_queue_duration", _as_float),
    "tokenizer-duration": ("tokenizer_duration", _as_float),
    "prefill-duration": ("prefill_duration", _as_float),
    "generation-duration": ("generation_duration", _as_float),
    "backend-host": ("backend_host", _as_str),
    "deployment": ("deployment", _as_str),
    "pod-template-hash": ("pod_template_hash", _as_str),
}
_PREFIX = "fireworks-"


def _collect(mapping: Mapping[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """One pass over a mapping: (bare metric keys, fireworks- prefixed ones, other keys), lowercased."""
    bare: dict[str, Any] = {}
    prefixed: dict[str, Any] = {}
    other: dict[str, Any] = {}
    for key, value in (mapping or {}).items():
        if value is None:
            continue
        k = str(key).lower()
        if k in _FIELDS:
            bare[k] = value
        elif k.startswith(_PREFIX) and k[len(_PREFIX) :] in _FIELDS:
            prefixed[k[len(_PREFIX) :]] = value
        else:
            other[k] = value
    return bare, prefixed, other


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
        h_bare, h_prefixed, h_other = _collect(headers)
        p_bare, p_prefixed, p_other = _collect(perf_metrics)
        # Same precedence as merging {**headers, **perf_metrics} and then looking each key up bare first,
        # then with the prefix: any bare key beats any prefixed one; within a kind perf_metrics wins.
        found = {**h_prefixed, **p_prefixed, **h_bare, **p_bare}
        other = {**h_other, **p_other}
        fields: dict[str, Any] = {}
        for key, value in found.items():
            name, convert = _FIELDS[key]
            fields[name] = convert(value)
        fields["request_id"] = next(
            (str(other[k]) for k in _REQUEST_ID_KEYS if other.get(k) is not None), None
        )
        fields["snapshot_identity"] = _as_str(other.get(SNAPSHOT_HEADER))
        fields.update(client)  # explicit client-side values win (e.g. the body's snapshot identity)
        return cls(**fields)

    def with_client(self, **client: Any) -> ServerMetrics:
        """A copy with client-side fields set (``client_ttft``, ``retry_attempt``, ...)."""
        return replace(self, **client)
