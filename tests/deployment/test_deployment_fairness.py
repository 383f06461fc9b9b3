"""Per-client fairness of the waiting queue (policy in ``engine.local.deployment.fairness``)."""

from __future__ import annotations

import asyncio

import aiohttp
from deployment_helpers import MakeServer, complete, until


async def test_a_client_that_fills_the_queue_does_not_starve_another(
    make_server: MakeServer, session: aiohttp.ClientSession
) -> None:
    server = await make_server(max_batch=1)
    scheduler = server.deployment.scheduler
    flood_body = {"prompt": [5, 6, 7], "n": 8, "max_tokens": 10, "ignore_eos": True, "temperature": 0}
    async with aiohttp.ClientSession() as flooder:  # its own connection: another client
        flood = asyncio.create_task(complete(flooder, server.url, **flood_body))
        await until(lambda: scheduler.waiting >= 7, what="the flood to fill the queue")
        status, body, _ = await complete(session, server.url, prompt=[8, 9], max_tokens=4, temperature=0)
        assert status == 200 and body["choices"][0]["finish_reason"] == "length"
        # Admitted after one of the flood's sequences, not after all eight (FIFO would finish them
        # all first: the flood's request would be complete by now).
        assert not flood.done() and scheduler.waiting > 0
        status, flooded, _ = await flood
    assert status == 200 and len(flooded["choices"]) == 8
