"""Fixtures for control-plane tests: a fake clock and a scripted Fireworks-shaped server with faults."""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from aiohttp import web

KEY = "fw-test-key-123456"
# Routes on which Fireworks' SDK also sends "Authorization: Bearer" (control-plane calls do not).
BEARER_ROUTES = {"healthz", "completions", "hot_load"}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class FakeClock:
    """Monotonic time that only moves when someone sleeps: waits run instantly and deterministically."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


class Script:
    """Successive answers; the last one repeats."""

    def __init__(self, *items: Any) -> None:
        self.items = list(items)

    def next(self) -> Any:
        return self.items.pop(0) if len(self.items) > 1 else self.items[0]


class ScriptedServer:
    """Fireworks' REST shape on 127.0.0.1 with per-route fault queues.

    Fault specs: "500"/"503"/"408" (status), "429:7" (429 with Retry-After: 7), "drop" (connection
    closed without an answer), "400:text" (a non-retryable error whose message is ``text``).
    """

    def __init__(self) -> None:
        self.faults: dict[str, list[str]] = defaultdict(list)
        self.calls: dict[str, int] = defaultdict(int)
        self.jobs: dict[str, dict[str, Any]] = {}
        self.job_states: dict[str, Script] = {}
        self.resume_states: Script = Script("JOB_STATE_CREATING", "JOB_STATE_RUNNING")
        self.healthz = Script(200)
        self.deployments: dict[str, dict[str, Any]] = {}
        self.deployment_states = Script("CREATING", "READY")
        self.probe = Script(503)
        self.hotload_status: Script = Script({"replicas": []})
        self.hotload_posts: list[dict[str, Any]] = []
        self.resumes = 0
        self.checkpoints = [{"name": f"c{i}", "promotable": True} for i in range(5)]
        self.url = ""

    def _route(self, name: str, handler: Handler) -> Handler:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            self.calls[name] += 1
            # Fireworks' SDK: X-Api-Key on every call, Bearer too on inference, hot-load and health.
            bearer = name in BEARER_ROUTES
            if request.headers.get("X-Api-Key") != KEY or bearer != ("Authorization" in request.headers):
                return web.json_response({"error": {"message": "invalid api key"}}, status=401)
            if bearer and request.headers["Authorization"] != f"Bearer {KEY}":
                return web.json_response({"error": {"message": "invalid api key"}}, status=401)
            if self.faults[name]:
                spec = self.faults[name].pop(0)
                if spec == "drop":
                    assert request.transport is not None
                    request.transport.abort()
                    await asyncio.sleep(0.01)
                    return web.Response()
                code, _, arg = spec.partition(":")
                if code == "429":
                    return web.json_response(
                        {"message": "slow down"}, status=429, headers={"Retry-After": arg}
                    )
                return web.json_response({"error": {"message": arg or f"injected {code}"}}, status=int(code))
            return await handler(request)

        return wrapped

    async def accounts(self, request: web.Request) -> web.Response:
        return web.json_response({"accounts": [{"name": "accounts/acct"}]})

    async def create_job(self, request: web.Request) -> web.Response:
        job_id = request.query["rlorTrainerJobId"]
        if job_id in self.jobs:
            return web.json_response({"error": {"message": "already exists"}}, status=409)
        body = await request.json()
        self.jobs[job_id] = {"name": f"accounts/acct/rlorTrainerJobs/{job_id}", **body}
        self.job_states.setdefault(
            job_id, Script("JOB_STATE_PENDING", "JOB_STATE_CREATING", "JOB_STATE_RUNNING")
        )
        return web.json_response({**self.jobs[job_id], "state": "JOB_STATE_PENDING"})

    async def job(self, request: web.Request) -> web.Response:
        job_id, _, verb = request.match_info["job"].partition(":")
        if job_id not in self.jobs:
            return web.json_response({"error": {"message": f"job {job_id} not found"}}, status=404)
        if verb == "resume":
            self.resumes += 1
            self.job_states[job_id] = self.resume_states
            return web.json_response({**self.jobs[job_id], "state": "JOB_STATE_CREATING"})
        state = self.job_states[job_id].next()
        state, _, message = state.partition(":")
        return web.json_response({**self.jobs[job_id], "state": state, "status": {"message": message}})

    async def checkpoints_page(self, request: web.Request) -> web.Response:
        start = int(request.query.get("pageToken") or 0)
        size = 2
        rows = self.checkpoints[start : start + size]
        token = str(start + size) if start + size < len(self.checkpoints) else ""
        return web.json_response({"checkpoints": rows, "nextPageToken": token})

    async def trainer_healthz(self, request: web.Request) -> web.Response:
        return web.json_response({}, status=self.healthz.next())

    async def create_deployment(self, request: web.Request) -> web.Response:
        dep_id = request.query["deploymentId"]
        body = await request.json()
        self.deployments[dep_id] = {"name": f"accounts/acct/deployments/{dep_id}", **body}
        return web.json_response({**self.deployments[dep_id], "state": "CREATING"})

    async def deployment(self, request: web.Request) -> web.Response:
        dep_id = request.match_info["dep"]
        if dep_id not in self.deployments:
            return web.json_response({"error": {"message": "deployment not found"}}, status=404)
        if request.method == "DELETE":
            del self.deployments[dep_id]
            return web.json_response({})
        if request.method == "PATCH":
            self.deployments[dep_id].update(await request.json())
        state, _, message = self.deployment_states.next().partition(":")
        return web.json_response({**self.deployments[dep_id], "state": state, "status": {"message": message}})

    async def completions(self, request: web.Request) -> web.Response:
        return web.json_response({"choices": []}, status=self.probe.next())

    async def hot_load(self, request: web.Request) -> web.Response:
        if request.method == "POST":
            self.hotload_posts.append({"body": await request.json(), "headers": dict(request.headers)})
            return web.json_response({})
        return web.json_response(self.hotload_status.next())

    def app(self) -> web.Application:
        app = web.Application()
        r = app.router
        jobs = "/v1/accounts/acct/rlorTrainerJobs"
        r.add_get("/v1/accounts", self._route("accounts", self.accounts))
        r.add_post(jobs, self._route("create_job", self.create_job))
        r.add_route("*", jobs + "/{job}", self._route("job", self.job))
        r.add_get(jobs + "/{job}/checkpoints", self._route("checkpoints", self.checkpoints_page))
        r.add_get(
            "/training/v1/rlorTrainerJobs/acct/{job}/api/v1/healthz",
            self._route("healthz", self.trainer_healthz),
        )
        r.add_post("/v1/accounts/acct/deployments", self._route("create_deployment", self.create_deployment))
        r.add_route("*", "/v1/accounts/acct/deployments/{dep}", self._route("deployment", self.deployment))
        r.add_post("/inference/v1/completions", self._route("completions", self.completions))
        r.add_route("*", "/hot_load/v1/models/hot_load", self._route("hot_load", self.hot_load))
        return app


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def scripted() -> AsyncIterator[ScriptedServer]:
    server = ScriptedServer()
    runner = web.AppRunner(server.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield server
    finally:
        await runner.cleanup()


@pytest.fixture
def scripted_url_server() -> Iterator[str]:
    """The scripted server on its own thread and loop, for tests that run several event loops."""
    server = ScriptedServer()
    ready = threading.Event()
    loop = asyncio.new_event_loop()
    holder: dict[str, web.AppRunner] = {}

    async def start() -> None:
        runner = web.AppRunner(server.app())
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        server.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        holder["runner"] = runner
        ready.set()

    thread = threading.Thread(
        target=lambda: (loop.run_until_complete(start()), loop.run_forever()), daemon=True
    )
    thread.start()
    assert ready.wait(10)
    try:
        yield server.url
    finally:
        asyncio.run_coroutine_threadsafe(holder["runner"].cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
