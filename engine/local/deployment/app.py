"""The embedded deployment's aiohttp app: completions (JSON or SSE), models, health, metrics, hot-load.

``DeploymentServer`` runs it on a real socket (``port=0`` picks a free one); the CLI and the tests
both use it. The model is loaded off the event loop at startup and all compute stays on the
scheduler's worker thread.
"""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from engine.local.deployment.batch_runner import BatchRunner
from engine.local.deployment.edge import auth, client_of, edge, longest_token_chars, request_id_of
from engine.local.deployment.edge import error as _error
from engine.local.deployment.hotload import HotLoadBusyError, HotLoader
from engine.local.deployment.metrics import DeploymentMetrics
from engine.local.deployment.protocol import (
    CompletionPlan,
    DeploymentBadRequest,
    parse_completion,
    parse_hot_load,
    parse_json,
)
from engine.local.deployment.responses import CompletionBuilder
from engine.local.deployment.scheduler import Scheduler
from engine.local.deployment.state import QueueFullError, RequestHandle, Update
from engine.local.http_server import OFF_LOOP_BYTES, ServerLimits, make_runner, new_app, read_body, start_site
from engine.log import get_logger

log = get_logger(__name__)
STATE: web.AppKey[Deployment] = web.AppKey("deployment")


@dataclass(frozen=True)
class DeploymentServerSettings:
    model: str = "tiny"
    bucket: Path | None = None
    max_batch: int = 32
    max_waiting: int = 512
    prefill_token_budget: int = 2048
    api_key: str | None = None
    reject_during_load: bool = False  # True: 425 while a hot-load runs; False: requests wait for it
    request_timeout_s: float = 600.0
    swap_timeout_s: float = 600.0
    seed: int = 0
    threads: int = 1  # torch intra-op threads of the engine thread
    prompt_cache_tokens: int = 8192  # LRU of prompt K/V, in prompt tokens (0 disables it)
    max_body_bytes: int = 16 * 1024 * 1024  # decoded request body (413 beyond)


class Deployment:
    """Everything one app serves with: model runner, scheduler, hot-loader, metrics."""

    def __init__(self, config: DeploymentServerSettings) -> None:
        self.config = config
        self.scheduler: Scheduler | None = None
        self.hotloader: HotLoader | None = None
        self.tokenizer: Any = None
        self.max_prompt_chars: int | None = None  # a longer text prompt cannot fit the context
        # Tokenizing and validating large requests runs here, never on the event loop.
        self.prep = ThreadPoolExecutor(2, thread_name_prefix="deployment-prep")
        self.metrics = DeploymentMetrics(
            waiting=lambda: self.scheduler.waiting if self.scheduler else 0,
            running=lambda: self.scheduler.running if self.scheduler else 0,
            hot_load_stage=lambda: 1.0 if self.hotloader and self.hotloader.loading else 0.0,
        )

    async def start(self) -> None:
        from engine.local.models import load_model, load_tokenizer

        model, self.tokenizer = await asyncio.to_thread(
            lambda: (load_model(self.config.model), load_tokenizer(self.config.model))
        )
        longest = await asyncio.to_thread(longest_token_chars, self.tokenizer)
        self.max_prompt_chars = int(model.config.max_position_embeddings) * longest
        runner = BatchRunner(
            model,
            pad_token_id=self.tokenizer.pad_token_id,
            prompt_cache_tokens=self.config.prompt_cache_tokens,
        )
        self.scheduler = Scheduler(
            runner,
            self.tokenizer,
            max_batch=self.config.max_batch,
            max_waiting=self.config.max_waiting,
            prefill_token_budget=self.config.prefill_token_budget,
            seed=self.config.seed,
            threads=self.config.threads,
        )
        self.scheduler.start()
        self.hotloader = HotLoader(
            self.scheduler,
            self.config.bucket,
            self.config.swap_timeout_s,
            on_outcome=lambda outcome: self.metrics.hot_loads.labels(outcome).inc(),
        )
        log.info("deployment ready", model=self.config.model, max_batch=self.config.max_batch)

    async def close(self) -> None:
        if self.hotloader is not None:
            await self.hotloader.close()
        if self.scheduler is not None:
            await asyncio.to_thread(self.scheduler.close)
        self.prep.shutdown(wait=False, cancel_futures=True)

    def plan(self, raw: bytes, data: dict[str, Any] | None) -> CompletionPlan:
        """Blocking when the prompt is text (tokenizing): the handler runs it on ``prep`` then."""
        assert self.scheduler is not None
        runner = self.scheduler.runner
        return parse_completion(
            data if data is not None else parse_json(raw),
            tokenizer=self.tokenizer,
            vocab_size=runner.vocab_size,
            max_positions=runner.max_positions,
            eos_token_id=self.tokenizer.eos_token_id,
            max_prompt_chars=self.max_prompt_chars,
        )


async def completions(request: web.Request) -> web.StreamResponse:
    dep = request.app[STATE]
    assert dep.scheduler is not None and dep.hotloader is not None
    scheduler = dep.scheduler
    request_id = request_id_of(request)
    raw = await read_body(request)
    try:
        # Small bodies with a token-id prompt validate on the loop; text (tokenizing) or large ones
        # on the prep threads, so /health and every stream keep being served meanwhile.
        data = parse_json(raw) if len(raw) <= OFF_LOOP_BYTES else None
        if data is not None and not isinstance(data.get("prompt"), str):
            plan = dep.plan(raw, data)
        else:
            plan = await asyncio.get_running_loop().run_in_executor(dep.prep, dep.plan, raw, data)
    except DeploymentBadRequest as exc:
        dep.metrics.rejected.labels("400").inc()
        return _error(400, str(exc), exc.field)
    if dep.config.reject_during_load and dep.hotloader.loading:
        dep.metrics.rejected.labels("425").inc()
        return _error(425, "a hot-load is in progress; retry shortly", headers={"Retry-After": "1"})
    builder = CompletionBuilder(plan, dep.tokenizer, request_id, plan.model)
    handle = RequestHandle(
        len(plan.specs), client=client_of(request, trust_forwarded=bool(dep.config.api_key))
    )
    try:
        scheduler.submit(handle, plan.specs)
    except QueueFullError as exc:
        dep.metrics.rejected.labels("429").inc()
        retry = {"Retry-After": str(int(exc.retry_after_s))}
        return _error(429, "too many requests waiting; retry later", headers=retry)
    base_headers = {"x-request-id": request_id}
    deadline = asyncio.get_running_loop().time() + dep.config.request_timeout_s
    try:
        if plan.request.stream:
            return await _stream(request, dep, builder, handle, base_headers, deadline)
        async with asyncio.timeout_at(deadline):
            while not builder.done:
                for update in await _next(handle):
                    _observe(dep, builder, update)
                    builder.apply(update)
    except _EngineFailure as exc:
        return _error(500, str(exc))
    except TimeoutError:
        return _error(504, f"request did not finish within {dep.config.request_timeout_s:.0f}s")
    finally:
        if not builder.done:
            scheduler.cancel(handle)  # client gone, timeout or error: free the slot
    return web.json_response(builder.body(), headers={**base_headers, **builder.headers(final=True)})


class _EngineFailure(Exception):
    pass


async def _next(handle: RequestHandle) -> list[Update]:
    item = await handle.queue.get()
    if isinstance(item, BaseException):
        raise _EngineFailure(str(item))
    return item


def _observe(dep: Deployment, builder: CompletionBuilder, update: Update) -> None:
    m = dep.metrics
    t = update.timing
    if update.started and t is not None and t.scheduled is not None:
        m.queue_time.observe(t.scheduled - t.arrival)
        if t.prefill_done is not None:
            m.ttft.observe(t.prefill_done - t.arrival)
        m.prompt_tokens.inc(len(builder.plan.prompt_ids))
        m.cached_prompt_tokens.inc(t.cached_prompt_tokens)
    m.generation_tokens.inc(len(update.tokens))
    if update.finish_reason is not None:
        m.requests.labels(update.finish_reason).inc()
        if update.timing is not None and update.timing.finished is not None:
            m.e2e.observe(update.timing.finished - update.timing.arrival)


async def _stream(
    request: web.Request,
    dep: Deployment,
    builder: CompletionBuilder,
    handle: RequestHandle,
    headers: dict[str, str],
    deadline: float,
) -> web.StreamResponse:
    try:
        async with asyncio.timeout_at(deadline):
            updates = await _next(handle)  # wait until scheduled: headers then carry up-front timings
    except TimeoutError:
        return _error(504, "request was not scheduled before its deadline")
    for u in updates:
        _observe(dep, builder, u)
    response = web.StreamResponse(
        headers={
            **headers,
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
        }
    )
    first = builder.chunks(updates)
    response.headers.update(builder.headers(final=False))
    await response.prepare(request)
    await _write(response, first)
    try:
        async with asyncio.timeout_at(deadline):
            while not builder.done:
                updates = await _next(handle)
                for u in updates:
                    _observe(dep, builder, u)
                await _write(response, builder.chunks(updates))
    except (
        _EngineFailure,
        TimeoutError,
    ) as exc:  # headers are out: report in-band, as OpenAI-style servers do
        message = str(exc) or "request did not finish before its deadline"
        error = {"error": {"message": message, "type": "server_error", "code": 500}}
        await response.write(f"event: error\ndata: {json.dumps(error)}\n\n".encode())
        await response.write_eof()
        return response
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


async def _write(response: web.StreamResponse, chunks: list[dict[str, Any]]) -> None:
    if chunks:
        payload = "".join(f"data: {json.dumps(c, separators=(',', ':'))}\n\n" for c in chunks)
        await response.write(payload.encode())


async def hot_load_post(request: web.Request) -> web.Response:
    dep = request.app[STATE]
    assert dep.hotloader is not None
    try:
        req = parse_hot_load(parse_json(await read_body(request)))
    except DeploymentBadRequest as exc:
        return _error(400, str(exc), exc.field)
    try:
        dep.hotloader.begin(req)
    except HotLoadBusyError as exc:
        return _error(425, str(exc), headers={"Retry-After": "1"})
    log.info("hot-load accepted", identity=req.identity, serving=dep.hotloader.current_identity)
    return web.json_response({"accepted": True, "identity": req.identity, **dep.hotloader.status()})


async def hot_load_get(request: web.Request) -> web.Response:
    dep = request.app[STATE]
    assert dep.hotloader is not None
    return web.json_response(dep.hotloader.status())


async def models(request: web.Request) -> web.Response:
    dep = request.app[STATE]
    identity = dep.scheduler.identity if dep.scheduler else None
    entry = {"id": dep.config.model, "object": "model", "owned_by": "hotloop", "snapshot_identity": identity}
    return web.json_response({"object": "list", "data": [entry]})


async def health(request: web.Request) -> web.Response:
    dep = request.app[STATE]
    ready = dep.scheduler is not None
    body = {
        "status": "ok" if ready else "starting",
        "snapshot_identity": dep.scheduler.identity if dep.scheduler else None,
        "hot_load_stage": dep.hotloader.stage if dep.hotloader else None,
    }
    return web.json_response(body, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    dep = request.app[STATE]
    return web.Response(body=dep.metrics.render(), content_type="text/plain", charset="utf-8")


def create_app(config: DeploymentServerSettings) -> web.Application:
    dep = Deployment(config)
    middlewares = [edge(lambda status: dep.metrics.rejected.labels(str(status)).inc()), auth(config.api_key)]
    app = new_app(ServerLimits(max_body_bytes=config.max_body_bytes), middlewares=middlewares)
    app[STATE] = dep

    async def on_startup(_: web.Application) -> None:
        await dep.start()

    async def on_cleanup(_: web.Application) -> None:
        await dep.close()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    app.router.add_post("/inference/v1/completions", completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/hot_load/v1/models/hot_load", hot_load_post)
    app.router.add_get("/hot_load/v1/models/hot_load", hot_load_get)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    return app


class DeploymentServer:
    """``async with DeploymentServer(config, port=0) as srv: srv.url`` runs the app on a real socket."""

    def __init__(self, config: DeploymentServerSettings, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = create_app(config)
        self.host, self.port = host, port
        self._runner: web.AppRunner | None = None

    @property
    def deployment(self) -> Deployment:
        return self.app[STATE]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        # handler_cancellation (make_runner's default): a client that disconnects cancels its
        # handler, which frees its slot.
        self._runner = make_runner(self.app)
        await self._runner.setup()  # runs on_startup: the model is loaded, the engine thread started
        try:
            self.port = await start_site(self._runner, self.host, self.port)
        except BaseException:  # e.g. the port is taken: stop the engine thread, do not leak it
            await self.stop()
            raise

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> DeploymentServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
