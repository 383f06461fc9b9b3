"""hotloop as a guest in a host's event loop: user code never runs on the loop, and the host's logging
configuration is left as the host made it."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import sleepy_reward
import structlog
from aiohttp import web
from support.fakes import planes

from engine.run.orchestrator import run


def sleepy_config(tmp_path: Path, executor: str) -> dict[str, Any]:
    return {
        "model": "tiny", "run_dir": str(tmp_path / "run"), "max_steps": 2,
        "reward": "sleepy_reward:reward",  # sleeps 0.5 s per call (tests/states/sleepy_reward.py)
        "intervals": {"sync_every": 1, "eval_every": 0, "checkpoint_every": 2},
        "rl": {"prompts_per_step": 2, "group_size": 2},
        "user_code": {"executor": executor, "workers": 4},
    }  # fmt: skip


@pytest.mark.parametrize("executor", ["thread", "process"])
async def test_a_sleeping_reward_never_blocks_the_host_loop(
    tmp_path: Path, executor: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop = asyncio.get_running_loop()
    loop.set_debug(True)
    where = tmp_path / "reward-calls.txt"
    monkeypatch.setenv(sleepy_reward.CALLS_ENV, str(where))  # process workers inherit it

    # The host serves HTTP on the same loop while the run goes.
    app = web.Application()
    app.router.add_get("/ping", lambda _: web.json_response({"ok": True}))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    answered: list[int] = []

    async def probe() -> None:
        async with aiohttp.ClientSession() as http:
            while True:
                async with http.get(f"http://127.0.0.1:{port}/ping") as resp:
                    answered.append(resp.status)
                await asyncio.sleep(0.05)

    prober = asyncio.create_task(probe())
    try:
        summary = await run(sleepy_config(tmp_path, executor), planes=planes())
    finally:
        prober.cancel()
        await runner.cleanup()
    assert summary.status == "done" and summary.steps == 2
    # Every reward call (2 steps x 4 samples, 0.5 s each) ran where no event loop runs -- a worker
    # thread, or a worker process -- and never on the host's thread; the host kept answering.
    calls = [line.split() for line in where.read_text().splitlines()]
    assert len(calls) == 8
    host = (str(os.getpid()), str(threading.get_ident()))
    assert all(loop_running == "no-loop" and (pid, thread) != host for pid, thread, loop_running in calls)
    if executor == "process":
        assert all(pid != host[0] for pid, _, _ in calls)
    assert len(answered) >= 5 and set(answered) == {200}


async def test_a_run_leaves_the_hosts_logging_configuration_untouched(tmp_path: Path) -> None:
    seen: list[dict[str, Any]] = []

    def host_processor(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
        seen.append(dict(event))
        return event

    structlog.configure(processors=[host_processor, structlog.processors.JSONRenderer()])
    host_handler = logging.NullHandler()
    root = logging.getLogger()
    root.addHandler(host_handler)
    before = (
        structlog.get_config(),
        list(root.handlers),
        root.level,
        logging.getLogger("hotloop").handlers[:],
    )
    try:
        import engine  # noqa: F401  # importing configures nothing either

        summary = await run(
            {"model": "tiny", "run_dir": str(tmp_path / "run"), "max_steps": 1,
             "rl": {"prompts_per_step": 1, "group_size": 2}, "intervals": {"eval_every": 0}},
            planes=planes(),
        )  # fmt: skip
        after = (
            structlog.get_config(),
            list(root.handlers),
            root.level,
            logging.getLogger("hotloop").handlers[:],
        )
    finally:
        root.removeHandler(host_handler)
        structlog.reset_defaults()
    assert summary.status == "done"
    assert after == before
    assert not any(e.get("component", "").startswith("engine") for e in seen)  # ours go to stdlib logging
