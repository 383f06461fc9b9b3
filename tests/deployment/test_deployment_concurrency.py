"""Many clients at once, clients that go away, and a full waiting queue."""

from __future__ import annotations

import asyncio

import aiohttp
from deployment_helpers import MakeServer, complete, merge_stream, metric, stream, until

from engine.local.deployment.app import DeploymentServer

PROMPT = [1, 30, 31, 32]


async def test_200_concurrent_streaming_clients_all_complete(
    server: DeploymentServer, session: aiohttp.ClientSession
) -> None:
    async def client(i: int) -> dict:
        chunks, _ = await stream(
            session,
            server.url,
            prompt=[*PROMPT, 4 + i % 900],
            max_tokens=3,
            temperature=1.0,
            seed=i,
            ignore_eos=True,
            raw_output=True,
            perf_metrics_in_response=True,
        )
        return merge_stream(chunks)

    results = await asyncio.gather(*(client(i) for i in range(200)))
    assert all(r["choices"][0]["finish_reason"] == "length" for r in results)
    assert all(len(r["choices"][0]["raw_output"]["completion_token_ids"]) == 3 for r in results)
    # the batch really was shared: some requests saw many concurrent ones, and queued
    assert max(r["perf_metrics"]["num-concurrent-requests"] for r in results) > 1
    assert server.deployment.scheduler is not None
    assert server.deployment.scheduler.running == 0 and server.deployment.scheduler.waiting == 0
    assert await metric(session, server.url, "hotloop_deployment_request_success_total") == 200


async def test_disconnected_clients_free_their_slots(make_server: MakeServer) -> None:
    server = await make_server(max_batch=1)
    scheduler = server.deployment.scheduler
    body = {"prompt": PROMPT, "max_tokens": 900, "ignore_eos": True, "stream": True}
    running_session = aiohttp.ClientSession()
    waiting_session = aiohttp.ClientSession()
    try:
        running = await running_session.post(server.url + "/v1/completions", json=body)
        assert running.status == 200
        await running.content.readline()  # it is generating
        waiting = asyncio.create_task(waiting_session.post(server.url + "/v1/completions", json=body))
        await until(lambda: scheduler.waiting == 1, what="the second request to queue")
        assert scheduler.running == 1
        waiting.cancel()
        await waiting_session.close()  # the queued client goes away
        await until(lambda: scheduler.waiting == 0, what="the queued request to be dropped")
        running.close()
        await running_session.close()  # the streaming client goes away mid-stream
        await until(lambda: scheduler.running == 0, what="the running request to be dropped")
    finally:
        await running_session.close()
        await waiting_session.close()
    async with aiohttp.ClientSession() as session:
        assert await metric(session, server.url, "hotloop_deployment_num_requests_running") == 0
        assert await metric(session, server.url, "hotloop_deployment_num_requests_waiting") == 0
        # neither ran to completion: they were dropped, not finished
        assert await metric(session, server.url, "hotloop_deployment_request_success_total") == 0
        status, body2, _ = await complete(session, server.url, prompt=PROMPT, max_tokens=2)
        assert status == 200 and body2["choices"][0]["finish_reason"] in ("length", "stop")


async def test_full_waiting_queue_answers_429_with_retry_after(make_server: MakeServer) -> None:
    server = await make_server(max_batch=1, max_waiting=1)
    scheduler = server.deployment.scheduler
    body = {"prompt": PROMPT, "max_tokens": 400, "ignore_eos": True}
    async with aiohttp.ClientSession() as session:
        first = asyncio.create_task(complete(session, server.url, **body))
        await until(lambda: scheduler.running == 1, what="the first request to run")
        second = asyncio.create_task(complete(session, server.url, **body))
        await until(lambda: scheduler.waiting == 1, what="the second request to queue")
        status, error, headers = await complete(session, server.url, **body)
        assert status == 429
        assert int(headers["Retry-After"]) >= 1
        assert "retry" in error["error"]["message"]
        first.cancel()
        second.cancel()
        await asyncio.gather(first, second, return_exceptions=True)


async def test_requests_past_their_deadline_are_ended_and_free_their_slots(make_server: MakeServer) -> None:
    server = await make_server(request_timeout_s=0.5)
    body = {"prompt": PROMPT, "max_tokens": 1000, "ignore_eos": True}
    async with aiohttp.ClientSession() as session:
        status, error, _ = await complete(session, server.url, **body)
        assert status == 504 and "did not finish" in error["error"]["message"]
        async with session.post(server.url + "/v1/completions", json={**body, "stream": True}) as resp:
            text = await resp.text()
        # either it was not even scheduled in time (504) or the stream ends with an in-band error event
        assert resp.status == 504 or (resp.status == 200 and "event: error" in text and "[DONE]" not in text)
        await until(lambda: server.deployment.scheduler.running == 0, what="the slots to be freed")
        assert await metric(session, server.url, "hotloop_deployment_request_success_total") == 0
