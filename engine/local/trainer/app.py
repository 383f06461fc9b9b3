"""aiohttp routes of the Tinker wire protocol (paths under /api/v1), plus hotloop's extensions and
Fireworks' JSON dialect and routes (engine.local.trainer.fireworks_routes).

Errors: a bad request is a 4xx with ``{"detail": message}`` (the client raises it at once), found
while executing it is a future result ``{"error", "category"}``. Retried POSTs carrying the same
``X-Idempotency-Key`` get the first answer back instead of a duplicate submission.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from engine.local.http_server import (
    ServerLimits,
    check_head,
    key_matches,
    new_app,
    read_body,
    read_json,
)
from engine.local.inputs import BadInput
from engine.local.trainer import external, fireworks_routes, runs
from engine.local.trainer.client_errors import client_errors
from engine.local.trainer.config import TrainerBadRequest
from engine.local.trainer.limits import MAX_JSON_BYTES
from engine.local.trainer.logs import LazyLogger
from engine.local.trainer.proto import decode_forward_backward
from engine.local.trainer.service import TrainerService
from engine.log import truncate

log = LazyLogger("trainer.app")
SERVICE: web.AppKey[TrainerService] = web.AppKey("service", TrainerService)
PROTO = "application/x-protobuf"
MAX_DETAIL_CHARS = 2000
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, message: str) -> web.Response:
    # Messages quote request values; a bounded body must not become an unbounded answer.
    return web.json_response({"detail": truncate(message, MAX_DETAIL_CHARS)}, status=status)


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        check_head(request)
        return await handler(request)
    except TrainerBadRequest as exc:  # logged by client_errors, with every other 4xx
        return _error(exc.status, str(exc))
    except BadInput as exc:  # logged by client_errors too
        too_large = "request body too large: " if exc.status == 413 else ""
        return _error(exc.status, f"{too_large}{exc}")
    except web.HTTPRequestEntityTooLarge as exc:
        limit = request.app[SERVICE].config.max_body_bytes
        return _error(413, f"request body too large: the limit is {limit} bytes ({exc.text})")
    except web.HTTPException as exc:
        if exc.status >= 400:
            return _error(exc.status, exc.text or exc.reason)
        raise
    except Exception as exc:  # a bug must not take the server down; the client retries 5xx
        log.exception("handler_failed", path=request.path)
        return _error(500, f"internal error: {type(exc).__name__}: {exc}")


def auth(api_key: str | None) -> Any:
    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if api_key and request.path.startswith("/api/v1/") and request.path != "/api/v1/healthz":
            given = request.headers.get("X-API-Key") or request.headers.get("Authorization", "").removeprefix(
                "Bearer "
            )
            if not key_matches(given, api_key):  # constant-time
                return _error(401, "missing or wrong X-API-Key")
        return await handler(request)

    return check


async def _json(request: web.Request) -> dict[str, Any]:
    return await read_json(request, max_bytes=min(MAX_JSON_BYTES, request.app[SERVICE].config.max_body_bytes))


class Idempotency:
    """Answers of recent POSTs by X-Idempotency-Key (the client reuses the key across retries)."""

    def __init__(self, capacity: int = 10_000) -> None:
        self._seen: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._capacity = capacity

    def get(self, request: web.Request) -> dict[str, Any] | None:
        key = request.headers.get("X-Idempotency-Key")
        return self._seen.get(f"{request.path}|{key}") if key else None

    def put(self, request: web.Request, answer: dict[str, Any]) -> None:
        key = request.headers.get("X-Idempotency-Key")
        if key:
            self._seen[f"{request.path}|{key}"] = answer
            while len(self._seen) > self._capacity:
                self._seen.popitem(last=False)


def build_app(service: TrainerService) -> web.Application:
    limits = ServerLimits(max_body_bytes=service.config.max_body_bytes)
    app = new_app(limits, middlewares=[client_errors, errors, auth(service.config.api_key)])
    app[SERVICE] = service
    idem = Idempotency()
    svc = service
    signer = external.UrlSigner()

    def work(fn: Callable[[dict[str, Any]], dict[str, Any]]) -> Handler:
        async def handler(request: web.Request) -> web.Response:
            if (seen := idem.get(request)) is not None:
                return web.json_response(seen)
            answer = fn(await _json(request))
            idem.put(request, answer)
            return web.json_response(answer)

        return handler

    json_forward_backward = fireworks_routes.add_routes(app, svc, idem)

    async def load_weights(request: web.Request) -> web.Response:
        if (seen := idem.get(request)) is not None:
            return web.json_response(seen)
        body = await _json(request)
        # Finding the checkpoint reads the disk (a bare name globs the state dir): off the loop.
        answer = svc.load_weights(body, await asyncio.to_thread(svc.resolve_load, body))
        idem.put(request, answer)
        return web.json_response(answer)

    async def forward_backward(request: web.Request) -> web.StreamResponse:
        if fireworks_routes.is_json(request):  # Fireworks' client: the same call in JSON
            return await json_forward_backward(request)
        if (seen := idem.get(request)) is not None:
            return web.json_response(seen)
        body = await read_body(request)  # zstd/gzip decoded off the loop, bounded by max_body_bytes
        # Parsing tens of MB is CPU work: off the loop (submitting stays on it).
        req = await asyncio.to_thread(decode_forward_backward, body)
        answer = svc.forward_backward(req)
        idem.put(request, answer)
        return web.json_response(answer)

    async def retrieve_future(request: web.Request) -> web.Response:
        body = await _json(request)
        rid = body.get("request_id")
        if not isinstance(rid, str):
            raise TrainerBadRequest("request_id is required")
        outcome = await svc.store.wait(rid, svc.config.poll_timeout_s)
        if outcome is None:
            return web.json_response({"type": "try_again", "request_id": rid, "queue_state": "active"})
        if outcome.proto is not None:
            return web.Response(body=outcome.proto, content_type=PROTO)
        return web.json_response(outcome.json)

    async def create_sampling_session(request: web.Request) -> web.Response:
        if (seen := idem.get(request)) is not None:
            return web.json_response(seen)
        answer = await svc.sampler.create_session(await _json(request))
        idem.put(request, answer)
        return web.json_response(answer)

    async def finish(request: web.Request) -> web.Response:
        return web.json_response(svc.finish(request.match_info["session_id"], await _json(request)))

    async def static(request: web.Request) -> web.Response:
        path = request.path.removeprefix("/api/v1/")
        if path == "healthz":
            return web.json_response({"status": "ok"})
        if path == "get_server_capabilities":
            # One entry per name served (the model, then its aliases); tokenizer_id is hotloop's
            # extension: the local directory holding this model's tokenizer.
            names = [svc.config.model, *svc.config.aliases]
            entry = {"max_context_length": svc.max_length, "trainable": True, "sampleable": True}
            models = [{"model_name": n, **entry, "tokenizer_id": str(svc.base_path)} for n in names]
            return web.json_response({"supported_models": models})
        if path == "client/config":
            # Stay on the client's simple paths: no JWT exchange, no session pollers, no joins.
            return web.json_response(
                {
                    "pjwt_auth_enabled": False,
                    "use_pyqwest_transport": False,
                    "proto_compress_fwdbwd": False,
                    "sample_use_retrieve_futures": False,
                    "sample_join_sampling_session": False,
                    "custom_loss_server_side": False,
                    "parallel_fwdbwd_chunks": True,
                }
            )
        return web.json_response({"status": "accepted"})  # telemetry

    async def get_sampler(request: web.Request) -> web.Response:
        return web.json_response(svc.sampler.get(request.match_info["sampler_id"]))

    # Run and checkpoint views read the disk: off the loop.
    async def training_run(request: web.Request) -> web.Response:
        return web.json_response(await asyncio.to_thread(runs.get_run, svc, request.match_info["run_id"]))

    async def run_checkpoints(request: web.Request) -> web.Response:
        listed = await asyncio.to_thread(runs.list_checkpoints, svc, request.match_info["run_id"])
        return web.json_response(listed)

    async def delete_checkpoint(request: web.Request) -> web.Response:
        m = request.match_info
        answer = await asyncio.to_thread(runs.delete_checkpoint, svc, m["run_id"], m["kind"], m["name"])
        return web.json_response(answer)

    async def checkpoint_ttl(request: web.Request) -> web.Response:
        m, body = request.match_info, await _json(request)
        answer = await asyncio.to_thread(runs.set_ttl, svc, m["run_id"], m["kind"], m["name"], body)
        return web.json_response(answer)

    async def external_urls(request: web.Request) -> web.Response:
        m = request.match_info
        root = external.export_dir(svc.state_dir, m["run_id"], m["name"])
        origin = str(request.url.origin())
        return web.json_response(await asyncio.to_thread(signer.urls, origin, root, m["run_id"], m["name"]))

    async def external_file(request: web.Request) -> web.StreamResponse:
        q = request.query
        path = await asyncio.to_thread(
            signer.resolve, svc.state_dir, request.match_info["path"], q.get("expires", ""), q.get("sig", "")
        )
        return web.FileResponse(path)

    async def dynamic_config(request: web.Request) -> web.Response:
        # No server-side sample cancels: abandoned samples finish and are dropped unread.
        return web.json_response(
            {"refresh_interval_sec": 300, "sample_cancel_enabled": False, "sample_cancel_max_batch_size": 64}
        )

    async def hotloop_model(request: web.Request) -> web.Response:
        return web.json_response(svc.hotloop_model(request.match_info["model_id"]))

    async def sweeper(app: web.Application) -> Any:
        async def loop() -> None:
            while True:
                await asyncio.sleep(30)
                svc.store.sweep(time.monotonic())

        task = asyncio.get_running_loop().create_task(loop())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await svc.close()

    r = app.router
    r.add_post("/api/v1/client/config", static)
    r.add_post("/api/v1/client/dynamic_config", dynamic_config)
    r.add_post("/api/v1/telemetry", static)
    r.add_get("/api/v1/healthz", static)
    r.add_get("/api/v1/get_server_capabilities", static)
    r.add_post("/api/v1/create_session", work(svc.create_session))
    r.add_post("/api/v1/session_heartbeat", work(svc.heartbeat))
    r.add_post("/api/v1/sessions/{session_id}/finish", finish)
    r.add_post("/api/v1/create_model", work(svc.create_model))
    r.add_post("/api/v1/get_info", work(svc.get_info))
    r.add_post("/api/v1/forward_backward", forward_backward)
    r.add_post("/api/v1/optim_step", work(svc.optim_step))
    r.add_post("/api/v1/save_weights", work(svc.save_weights))
    r.add_post("/api/v1/load_weights", load_weights)
    r.add_post("/api/v1/save_weights_for_sampler", work(svc.save_weights_for_sampler))
    r.add_post("/api/v1/save_weights_external", work(svc.save_weights_external))
    r.add_post("/api/v1/create_sampling_session", create_sampling_session)
    r.add_get("/api/v1/samplers/{sampler_id}", get_sampler)
    r.add_post("/api/v1/asample", work(svc.sampler.asample))
    r.add_post("/api/v1/retrieve_future", retrieve_future)
    r.add_get("/api/v1/hotloop/models/{model_id}", hotloop_model)
    r.add_get("/api/v1/training_runs/{run_id}", training_run)
    r.add_get("/api/v1/training_runs/{run_id}/checkpoints", run_checkpoints)
    r.add_delete("/api/v1/training_runs/{run_id}/checkpoints/{kind}/{name}", delete_checkpoint)
    r.add_put("/api/v1/training_runs/{run_id}/checkpoints/{kind}/{name}/ttl", checkpoint_ttl)
    r.add_get(
        "/api/v1/training_runs/{run_id}/checkpoints/external_weights/{name}/external_weights_urls",
        external_urls,
    )
    r.add_get("/hotloop/files/{path:.+}", external_file)  # signed URLs: no API key
    app.cleanup_ctx.append(sweeper)
    return app
