"""The contract: hotloop's Fireworks adapter sends what Fireworks' own SDK sends.

The same operations (tests/fireworks/fw_flows.py) run once through ``fireworks-ai`` 1.2.30 and once
through hotloop's adapter (``ControlPlaneTrainer(dialect="fireworks")``, ``ControlPlaneDeployment``,
``WeightSyncer``), concurrently against one ``hotloop up``, each behind its own recording proxy. The
recorded requests must agree: operations in order, polls as sets (fw_contract.py says which is
which), compared on method, route, query, JSON body (field names and values, ids normalised) and
the auth headers. What may differ is listed below, each with why it is harmless. No network: the
embedded stack plays Fireworks, and Fireworks' SDK is the oracle of what Fireworks is sent.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest
from fw_contract import Shape, diff, split
from fw_flows import MODEL, fireworks_flow, hotloop_flow
from fw_proxy import Recorded, RecordingProxy

from engine.backends.fireworks import trainer_session

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="session")]

# ---- the allow-list -------------------------------------------------------------------------------

# Header names one client sends and the other does not, none of them about auth or content:
# Stainless' SDK telemetry (x-stainless-*), and httpx's explicit keep-alive, which HTTP/1.1 implies.
HEADERS_ALLOWED_TO_DIFFER = ("x-stainless-", "connection")

# Polls whose presence depends on timing, not on the client: a heartbeat is due only once a session
# has lived 10 s, and the inference probe runs only while a deployment still reports CREATING.
# Where both clients sent one, the shapes must still agree.
TIMING_DEPENDENT_POLLS = {
    ("POST", "/training/v1/rlorTrainerJobs/local/<job>/api/v1/session_heartbeat"),
    ("POST", "/inference/v1/completions"),
}

# A delta hot-load announces the encoding of the delta. Fireworks' SDK always names Fireworks'
# trainer's (arc_v2 / alder32, hard-coded in its WeightSyncer); hotloop names what the trainer said
# it wrote. The embedded trainer writes hotloop's format and says so (zstd / sha256), and its
# deployment reads the manifest, so both load; against Fireworks' trainer, which names no format,
# hotloop sends arc_v2 / alder32 (tests/fireworks/test_adapter_units.py). Asserted, then equalised.
DELTA_FORMAT = {"hotloop": ("zstd", "sha256"), "fireworks": ("arc_v2", "alder32")}


def _equalise_delta_format(ops: list[Shape], who: str) -> list[Shape]:
    compression, checksum = DELTA_FORMAT[who]
    named = f"'checksum_format': '{checksum}', 'compression_format': '{compression}'"
    out = []
    for s in ops:
        if s.route == "/hot_load/v1/models/hot_load" and "incremental_snapshot_metadata" in s.body:
            assert named in s.body, f"{who}'s delta hot-load should name {compression}/{checksum}: {s}"
            s = replace(s, body=s.body.replace(named, "<delta format>"))
        out.append(s)
    return out


def _header_names(records: list[Recorded], ids: dict[str, str]) -> dict[tuple[str, str], set[str]]:
    from fw_contract import shape

    names: dict[tuple[str, str], set[str]] = {}
    for rec in records:
        s = shape(rec, ids)
        kept = {h for h in rec.header_names if not h.startswith(HEADERS_ALLOWED_TO_DIFFER)}
        names.setdefault((s.method, s.route), set()).update(kept)
    return names


async def test_hotloop_adapter_sends_what_fireworks_sdk_sends(
    fw_stack: Any, tiny_tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # hotloop's session beats every 10 s like Fireworks'; sooner here, so its heartbeat is recorded.
    monkeypatch.setattr(trainer_session, "HEARTBEAT_S", 0.5)
    theirs = await RecordingProxy(fw_stack.base_url).start()
    ours = await RecordingProxy(fw_stack.base_url).start()
    try:
        fw_loaded, hl_loaded = await asyncio.gather(
            asyncio.to_thread(
                fireworks_flow, theirs.url, fw_stack.api_key, "fw-job", "fw-dep", tiny_tokenizer
            ),
            hotloop_flow(ours.url, fw_stack.api_key, "hl-job", "hl-dep", tiny_tokenizer),
        )
    finally:
        await theirs.stop()
        await ours.stop()
    assert len(fw_loaded) == len(hl_loaded) == 2

    fw_ids = {"fw-job": "<job>", "fw-dep": "<dep>"}
    hl_ids = {"hl-job": "<job>", "hl-dep": "<dep>"}
    fw_ops, fw_polls = split(theirs.records, fw_ids)
    hl_ops, hl_polls = split(ours.records, hl_ids)

    # Operations: the same requests in the same order.
    fw_ops = _equalise_delta_format(fw_ops, "fireworks")
    hl_ops = _equalise_delta_format(hl_ops, "hotloop")
    assert fw_ops == hl_ops, diff(hl_ops, fw_ops)
    assert any("<delta format>" in s.body for s in hl_ops), "the flow must hot-load a delta"

    # Polls: the same distinct requests (how often each is sent is timing).
    def by_route(polls: set[Shape]) -> dict[tuple[str, str], set[Shape]]:
        out: dict[tuple[str, str], set[Shape]] = {}
        for s in polls:
            out.setdefault((s.method, s.route), set()).add(s)
        return out

    fw_by, hl_by = by_route(fw_polls), by_route(hl_polls)
    for route in sorted(set(fw_by) | set(hl_by)):
        if route in fw_by and route in hl_by:
            assert fw_by[route] == hl_by[route], (route, fw_by[route] ^ hl_by[route])
        else:
            assert route in TIMING_DEPENDENT_POLLS, f"only one client sent {route}"
    assert ("POST", "/training/v1/rlorTrainerJobs/local/<job>/api/v1/session_heartbeat") in hl_by

    # Header names, route by route, beyond the allow-list (auth headers are also inside each Shape).
    assert _header_names(ours.records, hl_ids) == {
        k: v
        for k, v in _header_names(theirs.records, fw_ids).items()
        if k in _header_names(ours.records, hl_ids)
    }

    # What the issue named as wrong, explicitly: no tinker transport, no tml- key, no client/config.
    trainer = [r for r in ours.records if "/api/v1/" in r.path]
    assert trainer and not any(r.path.endswith("/client/config") for r in trainer)
    assert all(r.headers.get("X-API-Key") == fw_stack.api_key for r in trainer if r.method == "POST")
    assert not any("protobuf" in r.headers.get("Content-Type", "") for r in trainer)
    assert not any("authorization" in r.header_names for r in trainer if not r.path.endswith("/healthz"))

    # Both deployments serve what their client hot-loaded last.
    from engine.backends.fireworks import DeploymentManager

    async with DeploymentManager(fw_stack.api_key, fw_stack.base_url) as deployments:
        await deployments.resolve_account_id()
        for dep, loaded in (("fw-dep", fw_loaded), ("hl-dep", hl_loaded)):
            status = await deployments.hotload_check_status(dep, MODEL)
            assert status["replicas"][0]["current_snapshot_identity"] == loaded[-1]
