"""The gateway: trainer API, inference and hot-load requests streamed through to the child processes.

Bodies stream both ways and reads have no deadline (tinker's retrieve_future long-polls); only the
connect is bounded. The caller's credentials stop here: each child has its own key, which only the
gateway holds, so nobody reaches a child on its 127.0.0.1 port without going through this auth.
A caller that disconnects cancels its handler, which closes the upstream request (the deployment
then frees the sequence's slot). A body the gateway had to read (to route it) is forwarded decoded,
without its Content-Encoding; the caller's connection is passed on as ``X-Hotloop-Client`` for the
deployment's per-client fairness.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

from engine.local.controlplane.plane import PLANE, ControlPlane
from engine.local.controlplane.resources import ACCOUNT, ApiError, DeploymentRecord, parse_deployment_ref
from engine.local.deployment.fairness import CLIENT_HEADER
from engine.local.http_server import read_body
from engine.local.inputs import BadInput, parse_json_object
from engine.log import get_logger

log = get_logger("controlplane.proxy")
SESSION: web.AppKey[aiohttp.ClientSession] = web.AppKey("proxy_session", aiohttp.ClientSession)
# Hop-by-hop headers, and the caller's credentials, never cross the gateway.
_DROP_REQUEST = {
    "connection",
    "keep-alive",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
}
_DROP_REQUEST |= {"host", "authorization", "x-api-key", CLIENT_HEADER.lower()}
_DROP_RESPONSE = {"connection", "keep-alive", "transfer-encoding", "upgrade", "trailer"}


async def _session_ctx(app: web.Application) -> AsyncIterator[None]:
    session = aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        auto_decompress=False,
        connector=aiohttp.TCPConnector(limit=0),
    )
    app[SESSION] = session
    yield
    await session.close()


async def forward(
    request: web.Request,
    target: str,
    *,
    body: bytes | None = None,
    what: str,
    extra: dict[str, str] | None = None,
) -> web.StreamResponse:
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _DROP_REQUEST}
    headers.update(extra or {})
    data: Any = None
    if body is not None:  # read (and decoded) here: what goes on is plain bytes
        data = body
        stale = ("content-encoding", "content-length")
        headers = {k: v for k, v in headers.items() if k.lower() not in stale}
        headers["Content-Length"] = str(len(body))
    elif request.body_exists:
        data = request.content.iter_chunked(1 << 16)
    else:
        headers.pop("Content-Length", None)
    url = URL(target + (f"?{request.query_string}" if request.query_string else ""), encoded=True)
    response: web.StreamResponse | None = None
    try:
        async with request.app[SESSION].request(
            request.method, url, data=data, headers=headers, allow_redirects=False
        ) as upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for key, value in upstream.headers.items():
                if key.lower() not in _DROP_RESPONSE:
                    response.headers.add(key, value)
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
        if response is None:
            raise ApiError(502, f"{what} unreachable: {exc!r}") from exc
        # Mid-stream: the status is already sent, so cut the connection and let the client see truncation.
        log.warning("upstream broke mid-stream", what=what, error=repr(exc))
        raise


def _check_lora(job_lora_rank: int, raw: bytes, job_id: str) -> None:
    """A create_model whose LoRA rank differs from the job's is a config error, not a trainer crash."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        return  # let the trainer explain its own parse error
    lora = body.get("lora_config") if isinstance(body, dict) else None
    rank = lora.get("rank", 0) if isinstance(lora, dict) else 0
    if isinstance(rank, bool) or not isinstance(rank, int):  # int() here would make it a bare 500
        raise ApiError(400, f"lora_config.rank: must be an integer, got {rank!r}")
    if rank != job_lora_rank:
        raise ApiError(
            400,
            f"lora_rank mismatch: trainer job {job_id!r} was created with loraRank={job_lora_rank} but "
            f"create_model asked for lora rank {rank}; use the job's rank",
        )


async def trainer_proxy(request: web.Request) -> web.StreamResponse:
    plane: ControlPlane = request.app[PLANE]
    account, job_id, tail = (request.match_info[k] for k in ("account", "job", "tail"))
    if account != ACCOUNT:
        raise ApiError(404, f"account {account!r} not found (this control plane serves account {ACCOUNT!r})")
    job = plane.job(job_id)
    if job.state != "JOB_STATE_RUNNING" or not job.url:
        raise ApiError(503, f"trainer job {job_id!r} is {job.state}: {job.message}")
    body = None
    if request.method == "POST" and tail.strip("/") == "api/v1/create_model":
        body = await read_body(request)
        _check_lora(job.lora_rank, body, job_id)
    return await forward(
        request,
        f"{job.url}/{tail}",
        body=body,
        what=f"trainer job {job_id!r}",
        extra={"X-API-Key": job.child_key or ""},
    )


def _serving(plane: ControlPlane, deployment_id: str) -> DeploymentRecord:
    dep = plane.deployment(deployment_id)
    if dep.state not in ("READY", "UPDATING") or not dep.url:
        raise ApiError(503, f"deployment {deployment_id!r} is not serving ({dep.state}: {dep.message})")
    return dep


def _child_headers(request: web.Request, dep: DeploymentRecord) -> dict[str, str]:
    peer = request.transport.get_extra_info("peername") if request.transport is not None else None
    caller = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "unknown"
    return {"X-Api-Key": dep.child_key or "", CLIENT_HEADER: caller}


async def inference_proxy(request: web.Request) -> web.StreamResponse:
    raw = await read_body(request)
    try:
        body = parse_json_object(raw)
    except BadInput as exc:
        raise ApiError(400, f"request body: must be a JSON object with a 'model' field ({exc})") from exc
    dep_id = parse_deployment_ref(body.get("model"), "model")
    dep = _serving(request.app[PLANE], dep_id)
    return await forward(
        request,
        f"{dep.url}{request.path}",
        body=raw,
        what=f"deployment {dep_id!r}",
        extra=_child_headers(request, dep),
    )


async def hotload_proxy(request: web.Request) -> web.StreamResponse:
    header = request.headers.get("fireworks-deployment")
    if not header:
        raise ApiError(400, "fireworks-deployment header: required ('accounts/local/deployments/<id>')")
    dep_id = parse_deployment_ref(header, "fireworks-deployment header")
    dep = _serving(request.app[PLANE], dep_id)
    return await forward(
        request,
        f"{dep.url}/hot_load/v1/models/hot_load",
        what=f"deployment {dep_id!r}",
        extra=_child_headers(request, dep),
    )


def add_routes(app: web.Application, plane: ControlPlane) -> None:
    app.cleanup_ctx.append(_session_ctx)
    app.router.add_route("*", "/training/v1/rlorTrainerJobs/{account}/{job}/{tail:.*}", trainer_proxy)
    app.router.add_post("/inference/v1/completions", inference_proxy)
    app.router.add_route("*", "/hot_load/v1/models/hot_load", hotload_proxy)
