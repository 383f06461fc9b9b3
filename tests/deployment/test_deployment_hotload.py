"""Hot-loading base and delta snapshots into a serving deployment (Fireworks' API shape)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
from deployment_helpers import (
    HOT_LOAD,
    MakeServer,
    complete,
    hot_load,
    reference_model,
    stream,
    until,
    wait_settled,
    write_chain,
)

from engine.local.deployment.app import DeploymentServer
from engine.local.deployment.batch_runner import sequence_logprobs

PROMPT = [1, 44, 91, 300, 7, 250]


async def _check_logprobs(
    session: aiohttp.ClientSession,
    server: DeploymentServer,
    model: object,
    identity: str | None,
    cached: int | None = None,
) -> list[int]:
    status, body, headers = await complete(
        session,
        server.url,
        prompt=PROMPT,
        max_tokens=8,
        temperature=1.0,
        seed=11,
        logprobs=True,
        raw_output=True,
        ignore_eos=True,
        perf_metrics_in_response=True,
    )
    assert status == 200
    assert body["snapshot_identity"] == identity
    assert headers["x-hotloop-snapshot-identity"] == (identity or "")
    choice = body["choices"][0]
    completion = choice["raw_output"]["completion_token_ids"]
    ref = sequence_logprobs(model, PROMPT + completion, start=len(PROMPT))
    got = [c["logprob"] for c in choice["logprobs"]["content"]]
    assert max(abs(a - b) for a, b in zip(got, ref, strict=True)) <= 1e-4
    if cached is not None:
        assert body["perf_metrics"]["cached-prompt-tokens"] == cached
    return list(completion)


async def test_base_then_two_deltas_serve_exactly_those_weights(
    server: DeploymentServer, session: aiohttp.ClientSession, tiny_model_dir: Path, tmp_path: Path
) -> None:
    chain = write_chain(tmp_path / "bucket", tiny_model_dir)
    replica = await wait_settled(session, server.url)
    assert replica["current_snapshot_identity"] is None and replica["readiness"] is True
    previous: str | None = None
    for identity, state in chain:
        replica = await hot_load(session, server.url, identity, previous=previous)
        assert replica["loading_state"]["stage"] == "idle", replica
        assert replica["current_snapshot_identity"] == identity
        model = reference_model(tiny_model_dir, state)
        # the swap emptied the prompt cache: computed once with the new weights, then reused
        first = await _check_logprobs(session, server, model, identity, cached=0)
        assert await _check_logprobs(session, server, model, identity, cached=len(PROMPT)) == first
        previous = identity
    replica = await hot_load(session, server.url, "step-2", previous="step-1")  # a retry: no-op
    assert replica["loading_state"]["stage"] == "idle" and replica["current_snapshot_identity"] == "step-2"
    assert [e["identity"] for e in replica["ledger"]] == ["step-0", "step-1", "step-2"]
    assert [e["kind"] for e in replica["ledger"]] == ["base", "delta", "delta"]


async def test_failed_loads_leave_the_previous_weights_serving(
    server: DeploymentServer, session: aiohttp.ClientSession, tiny_model_dir: Path, tmp_path: Path
) -> None:
    bucket = tmp_path / "bucket"
    chain = write_chain(bucket, tiny_model_dir)
    await hot_load(session, server.url, "step-0")
    model0 = reference_model(tiny_model_dir, chain[0][1])
    before = await _check_logprobs(session, server, model0, "step-0")

    # delta whose parent is not what is served (step-2's parent is step-1)
    replica = await hot_load(session, server.url, "step-2")
    assert replica["loading_state"]["stage"] == "error"
    assert replica["loading_state"]["target_snapshot_identity"] == "step-2"
    assert "parent 'step-1'" in replica["loading_state"]["error_message"]
    assert replica["current_snapshot_identity"] == "step-0"
    # the caller's previous_snapshot_identity disagrees with what is served
    replica = await hot_load(session, server.url, "step-1", previous="step-9")
    assert replica["loading_state"]["stage"] == "error"
    assert "previous_snapshot_identity" in replica["loading_state"]["error_message"]
    # corrupt payload: checksum mismatch
    payload = bucket / "step-1" / "delta.zst"
    data = bytearray(payload.read_bytes())
    data[len(data) // 2] ^= 0xFF
    payload.write_bytes(bytes(data))
    replica = await hot_load(session, server.url, "step-1", previous="step-0")
    assert replica["loading_state"]["stage"] == "error"
    assert "checksum mismatch" in replica["loading_state"]["error_message"]
    # missing snapshot, and a name that is not a safe identity
    replica = await hot_load(session, server.url, "nope", previous="step-0")
    assert "not found" in replica["loading_state"]["error_message"]
    # an identity that cannot name a snapshot is refused before the 200 (issue 13), no load starts
    async with session.post(server.url + HOT_LOAD, json={"identity": "../etc"}) as resp:
        assert resp.status == 400 and (await resp.json())["error"]["param"] == "identity"
        assert "invalid snapshot name" in (await resp.json())["error"]["message"]

    assert replica["current_snapshot_identity"] == "step-0"
    assert await _check_logprobs(session, server, model0, "step-0") == before
    async with session.get(server.url + "/metrics") as resp:
        assert 'hotloop_deployment_hot_loads_total{outcome="error"} 4.0' in await resp.text()


async def test_sync_transition_in_flight_finish_on_old_weights_new_ones_wait(
    make_server: MakeServer, session: aiohttp.ClientSession, tiny_model_dir: Path, tmp_path: Path
) -> None:
    server = await make_server(max_batch=1)
    write_chain(tmp_path / "bucket", tiny_model_dir)
    long_body = {"prompt": PROMPT, "max_tokens": 150, "ignore_eos": True, "temperature": 0}
    long_task = asyncio.create_task(stream(session, server.url, **long_body))
    await until(lambda: server.deployment.scheduler.running > 0, what="the long request to run")
    await hot_load(session, server.url, "step-0", wait=False)
    # the loader has read the snapshot and waits for the batch to drain
    await until(lambda: server.deployment.scheduler.swap_pending, what="the swap to be pending")
    new_request = asyncio.create_task(complete(session, server.url, prompt=PROMPT, max_tokens=2))
    chunks, _ = await long_task
    _, body, _ = await new_request
    assert chunks[-1]["snapshot_identity"] is None  # finished on the weights it started with
    assert body["snapshot_identity"] == "step-0"  # waited for the swap
    assert (await wait_settled(session, server.url))["current_snapshot_identity"] == "step-0"


async def test_reject_mode_answers_425_while_loading(
    make_server: MakeServer, session: aiohttp.ClientSession, tiny_model_dir: Path, tmp_path: Path
) -> None:
    server = await make_server(max_batch=1, reject_during_load=True)
    write_chain(tmp_path / "bucket", tiny_model_dir)
    long_task = asyncio.create_task(
        stream(session, server.url, prompt=PROMPT, max_tokens=150, ignore_eos=True, temperature=0)
    )
    await until(lambda: server.deployment.scheduler.running > 0, what="the long request to run")
    await hot_load(session, server.url, "step-0", wait=False)
    status, body, headers = await complete(session, server.url, prompt=PROMPT, max_tokens=2)
    async with session.post(server.url + HOT_LOAD, json={"identity": "step-1"}) as resp:
        busy = resp.status
    await long_task
    assert status == 425 and headers["Retry-After"] == "1"
    assert busy == 425  # one load at a time
    assert (await wait_settled(session, server.url))["current_snapshot_identity"] == "step-0"
    status, body, _ = await complete(session, server.url, prompt=PROMPT, max_tokens=2)
    assert status == 200 and body["snapshot_identity"] == "step-0"
