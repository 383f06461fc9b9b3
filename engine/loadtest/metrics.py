"""Per-request records and the metrics computed from them (pure functions, no I/O).

Definitions:
- origin: the request's *intended* start in open-loop runs, its actual send in closed-loop runs;
  open-loop rows also carry the from-send variants so the two can be compared.
- TTFT = first non-empty content chunk - origin.
- E2E = last byte of the stream - origin.
- TPOT = (E2E - TTFT) / (output_tokens - 1); 0 for one-token outputs (as vllm bench serve).
- ITL = gaps between successive non-empty chunks (a chunk may carry several tokens).
- dispatch lag = actual send - intended start (open loop only): the client's own delay.
- goodput = completed requests per second meeting *all* given targets (DistServe definition).
All times in a record are seconds from the cell's start; derived values are milliseconds.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

PERCENTILES: tuple[int, ...] = (50, 90, 95, 99)


@dataclass
class RequestRecord:
    index: int
    cell: str
    sent_s: float
    intended_s: float | None = None
    first_token_s: float | None = None
    end_s: float | None = None
    chunk_s: list[float] = field(default_factory=list)
    input_tokens: int = 0
    output_tokens: int | None = None
    output_tokens_source: str | None = None  # "usage" | "raw_output" | "chunks"
    ok: bool = False
    error_kind: str | None = None
    error: str | None = None
    http_status: int | None = None
    finish_reason: str | None = None
    prefill_queue_s: float | None = None
    server_ttft_s: float | None = None
    window: int | None = None
    in_flight: int | None = None
    snapshot_identity: str | None = None

    @property
    def origin_s(self) -> float:
        return self.intended_s if self.intended_s is not None else self.sent_s


@dataclass(frozen=True)
class GoodputTargets:
    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2e_ms: float | None = None

    def any(self) -> bool:
        return any(v is not None for v in (self.ttft_ms, self.tpot_ms, self.e2e_ms))

    def as_dict(self) -> dict[str, float | None]:
        return asdict(self)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0


def ttft_ms(rec: RequestRecord) -> float | None:
    if rec.first_token_s is None:
        return None
    return (rec.first_token_s - rec.origin_s) * 1000.0


def e2e_ms(rec: RequestRecord) -> float | None:
    if rec.end_s is None:
        return None
    return (rec.end_s - rec.origin_s) * 1000.0


def tpot_ms(rec: RequestRecord) -> float | None:
    if not rec.ok or rec.first_token_s is None or rec.end_s is None or not rec.output_tokens:
        return None
    if rec.output_tokens <= 1:
        return 0.0
    return (rec.end_s - rec.first_token_s) * 1000.0 / (rec.output_tokens - 1)


def itl_ms(rec: RequestRecord) -> list[float]:
    c = rec.chunk_s
    return [(c[i] - c[i - 1]) * 1000.0 for i in range(1, len(c))]


def dispatch_lag_ms(rec: RequestRecord) -> float | None:
    if rec.intended_s is None:
        return None
    return (rec.sent_s - rec.intended_s) * 1000.0


def is_good(rec: RequestRecord, targets: GoodputTargets) -> bool:
    """A request is good when it completed and meets every target that is set."""
    if not rec.ok:
        return False
    checks = ((targets.ttft_ms, ttft_ms(rec)), (targets.tpot_ms, tpot_ms(rec)), (targets.e2e_ms, e2e_ms(rec)))
    return all(not (limit is not None and (value is None or value > limit)) for limit, value in checks)


def row(rec: RequestRecord, targets: GoodputTargets | None = None) -> dict[str, Any]:
    """The requests.jsonl row: raw timestamps plus the derived per-request metrics."""
    out: dict[str, Any] = {
        "cell": rec.cell,
        "index": rec.index,
        "ok": rec.ok,
        "intended_s": rec.intended_s,
        "sent_s": rec.sent_s,
        "first_token_s": rec.first_token_s,
        "end_s": rec.end_s,
        "dispatch_lag_ms": dispatch_lag_ms(rec),
        "ttft_ms": ttft_ms(rec),
        "ttft_from_send_ms": _ms(None if rec.first_token_s is None else rec.first_token_s - rec.sent_s),
        "tpot_ms": tpot_ms(rec),
        "e2e_ms": e2e_ms(rec),
        "e2e_from_send_ms": _ms(None if rec.end_s is None else rec.end_s - rec.sent_s),
        "itl_ms": [round(v, 3) for v in itl_ms(rec)],
        "input_tokens": rec.input_tokens,
        "output_tokens": rec.output_tokens,
        "output_tokens_source": rec.output_tokens_source,
        "finish_reason": rec.finish_reason,
        "http_status": rec.http_status,
        "error_kind": rec.error_kind,
        "error": rec.error,
        "prefill_queue_ms": _ms(rec.prefill_queue_s),
        "server_ttft_ms": _ms(rec.server_ttft_s),
        "window": rec.window,
        "in_flight": rec.in_flight,
        "snapshot_identity": rec.snapshot_identity,
    }
    if targets is not None and targets.any():
        out["good"] = is_good(rec, targets)
    return out


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method), q in [0, 100]."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be in [0, 100], got {q}")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def distribution(values: Iterable[float | None]) -> dict[str, float | int | None]:
    """count, mean, min, max and p50/p90/p95/p99 of the non-None values (None fields when empty)."""
    vals = sorted(v for v in values if v is not None)
    out: dict[str, float | int | None] = {"count": len(vals)}
    if not vals:
        out.update({"mean": None, "min": None, "max": None})
        out.update({f"p{p}": None for p in PERCENTILES})
        return out
    out["mean"] = sum(vals) / len(vals)
    out["min"] = vals[0]
    out["max"] = vals[-1]
    for p in PERCENTILES:
        out[f"p{p}"] = percentile(vals, p)
    return out


def max_concurrent(records: Sequence[RequestRecord]) -> int:
    """Most requests in flight at once, by a sweep over [sent, end) intervals."""
    events: list[tuple[float, int]] = []
    for r in records:
        end = r.end_s if r.end_s is not None else r.sent_s
        events.append((r.sent_s, 1))
        events.append((end, -1))
    events.sort(key=lambda e: (e[0], e[1]))  # ends before starts at the same instant
    best = cur = 0
    for _, delta in events:
        cur += delta
        best = max(best, cur)
    return best


def window_summary(series: Sequence[tuple[float, int, int]]) -> dict[str, Any]:
    """series: (t_s, window, in_flight) samples from the controller, in time order."""
    if not series:
        return {"samples": 0, "min": None, "max": None, "mean": None, "final": None}
    windows = [w for _, w, _ in series]
    # time-weighted mean: each sample holds until the next one
    total = weighted = 0.0
    for (t0, w, _), (t1, _, _) in itertools.pairwise(series):
        weighted += w * (t1 - t0)
        total += t1 - t0
    mean = weighted / total if total > 0 else float(windows[-1])
    return {
        "samples": len(series),
        "min": min(windows),
        "max": max(windows),
        "mean": mean,
        "final": windows[-1],
        "max_in_flight": max(i for _, _, i in series),
    }


def downsample(series: Sequence[Any], limit: int = 500) -> list[Any]:
    """At most ``limit`` evenly spaced items, keeping the first and last."""
    n = len(series)
    if n <= limit:
        return list(series)
    step = (n - 1) / (limit - 1)
    return [series[round(i * step)] for i in range(limit)]


def summarize_cell(
    records: Sequence[RequestRecord],
    *,
    label: str,
    load: dict[str, Any],
    targets: GoodputTargets,
    window_series: Sequence[tuple[float, int, int]] = (),
) -> dict[str, Any]:
    """Everything summary.json says about one load cell. Counts are over ``records`` exactly."""
    ok = [r for r in records if r.ok]
    failed = [r for r in records if not r.ok]
    open_loop = any(r.intended_s is not None for r in records)
    starts = [r.origin_s for r in records]
    ends = [r.end_s for r in records if r.end_s is not None]
    duration = (max(ends) - min(starts)) if ends and starts else 0.0
    in_tokens = sum(r.input_tokens for r in ok)
    out_tokens = sum(r.output_tokens or 0 for r in ok)
    good = [r for r in ok if is_good(r, targets)] if targets.any() else list(ok)
    sent = sorted(r.sent_s for r in records)
    achieved_rate = (len(sent) - 1) / (sent[-1] - sent[0]) if len(sent) > 1 and sent[-1] > sent[0] else None

    def per_s(n: float) -> float | None:
        return n / duration if duration > 0 else None

    itl_all: list[float] = []
    for r in ok:
        itl_all.extend(itl_ms(r))
    return {
        "label": label,
        "load": load,
        "loop": "open" if open_loop else "closed",
        "latency_origin": "intended_start" if open_loop else "send",
        "requests": len(records),
        "completed": len(ok),
        "failed": len(failed),
        "errors_by_kind": dict(Counter(r.error_kind or "unknown" for r in failed)),
        "duration_s": duration,
        "request_throughput": per_s(len(ok)),
        "input_tokens": in_tokens,
        "output_tokens": out_tokens,
        "output_token_throughput": per_s(out_tokens),
        "total_token_throughput": per_s(in_tokens + out_tokens),
        "achieved_send_rate": achieved_rate,
        "max_concurrent": max_concurrent(records),
        "goodput": {
            "targets": targets.as_dict(),
            "good_requests": len(good),
            "requests_per_s": per_s(len(good)),
            "fraction": len(good) / len(records) if records else None,
        },
        "ttft_ms": distribution(ttft_ms(r) for r in ok),
        "tpot_ms": distribution(tpot_ms(r) for r in ok),
        "itl_ms": distribution(itl_all),
        "e2e_ms": distribution(e2e_ms(r) for r in ok),
        "ttft_from_send_ms": distribution(
            (r.first_token_s - r.sent_s) * 1000.0 for r in ok if r.first_token_s is not None
        ),
        "e2e_from_send_ms": distribution((r.end_s - r.sent_s) * 1000.0 for r in ok if r.end_s is not None),
        "dispatch_lag_ms": distribution(dispatch_lag_ms(r) for r in records) if open_loop else None,
        "server": {
            "reported": sum(
                1 for r in records if r.prefill_queue_s is not None or r.server_ttft_s is not None
            ),
            "prefill_queue_ms": distribution(_ms(r.prefill_queue_s) for r in records),
            "server_ttft_ms": distribution(_ms(r.server_ttft_s) for r in records),
        },
        "window": {**window_summary(window_series), "series": [list(s) for s in downsample(window_series)]},
    }


def passes(cell: dict[str, Any], min_good_fraction: float) -> bool:
    """Does a cell's summary meet the goodput targets (enough good requests, some completed)?"""
    frac = cell["goodput"]["fraction"]
    return bool(cell["completed"]) and frac is not None and frac >= min_good_fraction
