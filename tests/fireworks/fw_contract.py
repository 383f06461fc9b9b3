"""Normalising recorded requests so that two clients' traffic can be compared (the contract test).

A record becomes ``(method, route, query, body, auth headers)`` with every id that a run chooses or
the server assigns replaced by a placeholder: job and deployment ids, session and model ids,
request ids, the 8-hex session tag of snapshot names. Floats are rounded to 6 significant digits
(two trainer processes compute the same gradients, up to float32 summation order).

Requests are split in two kinds. *Operations* (what changes state: creating resources, training
calls, saves, hot-loads) must agree in order. *Polls* (reads and waits whose count depends on
timing: GET job/deployment/hot-load status, healthz, retrieve_future, heartbeats, the deployment
wait's inference probe) must agree as a set of distinct request shapes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from fw_proxy import Recorded

AUTH_HEADERS = ("x-api-key", "authorization")
_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_SUBS = [
    (re.compile(rf"{_UUID}:train:\d+"), "<model>"),
    (re.compile(_UUID), "<session>"),
    (re.compile(r"\b[a-z_]+-[0-9a-f]{32}\b"), "<request>"),  # the trainer's request ids
    (re.compile(r"(step_\d+|ckpt-[a-z])-[0-9a-f]{8}\b"), r"\1-<tag>"),  # session-qualified snapshots
]
POLLS = {
    ("GET", "/v1/accounts"),
    ("GET", "/v1/accounts/local/rlorTrainerJobs/<job>"),
    ("GET", "/v1/accounts/local/deployments/<dep>"),
    ("GET", "/hot_load/v1/models/hot_load"),
    ("GET", "/training/v1/rlorTrainerJobs/local/<job>/api/v1/healthz"),
    ("POST", "/training/v1/rlorTrainerJobs/local/<job>/api/v1/retrieve_future"),
    ("POST", "/training/v1/rlorTrainerJobs/local/<job>/api/v1/session_heartbeat"),
    # The deployment wait's inference probe (the flows sample nothing else).
    ("POST", "/inference/v1/completions"),
}


@dataclass(frozen=True)
class Shape:
    method: str
    route: str
    query: str
    body: str
    auth: tuple[str, ...]

    def __str__(self) -> str:
        q = f"?{self.query}" if self.query else ""
        return f"{self.method} {self.route}{q} auth={list(self.auth)} body={self.body}"


def _text(value: str, ids: dict[str, str]) -> str:
    for raw, placeholder in ids.items():
        value = value.replace(raw, placeholder)
    for pattern, repl in _SUBS:
        value = pattern.sub(repl, value)
    return value


def _norm(value: Any, ids: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: _norm(v, ids) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [_norm(v, ids) for v in value]
    if isinstance(value, str):
        return _text(value, ids)
    if isinstance(value, float):
        return float(f"{value:.6g}")
    return value


def shape(rec: Recorded, ids: dict[str, str]) -> Shape:
    query = "&".join(f"{k}={_text(v, ids)}" for k, v in sorted(rec.query.items()))
    auth = tuple(sorted(h for h in rec.header_names if h in AUTH_HEADERS))
    return Shape(rec.method, _text(rec.path, ids), query, repr(_norm(rec.body, ids)), auth)


def split(records: list[Recorded], ids: dict[str, str]) -> tuple[list[Shape], set[Shape]]:
    ops: list[Shape] = []
    polls: set[Shape] = set()
    for rec in records:
        s = shape(rec, ids)
        (polls.add(s) if (s.method, s.route) in POLLS else ops.append(s))
    return ops, polls


def diff(ours: list[Shape], theirs: list[Shape]) -> str:
    """A readable first difference of two operation sequences."""
    for i, (a, b) in enumerate(zip(ours, theirs, strict=False)):
        if a != b:
            return f"operation {i} differs:\n  hotloop:   {a}\n  fireworks: {b}"
    if len(ours) != len(theirs):
        longer, name = (ours, "hotloop") if len(ours) > len(theirs) else (theirs, "fireworks")
        extra = "\n    ".join(str(s) for s in longer[min(len(ours), len(theirs)) :])
        return f"{name} sent {abs(len(ours) - len(theirs))} more operations:\n    {extra}"
    return ""
