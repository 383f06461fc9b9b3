"""The control plane's HTTP app: auth, the Fireworks REST subset (jobs, deployments, and the catalog of
training shapes, models and promotion in engine.local.controlplane.catalog), and the gateway routes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from engine.local.controlplane import catalog, proxy
from engine.local.controlplane.plane import PLANE, ControlPlane
from engine.local.controlplane.resources import ACCOUNT, ApiError, list_checkpoints
from engine.local.http_server import ServerLimits, check_head, key_matches, new_app, read_json
from engine.local.inputs import INT64_MIN, BadInput, ascii_int
from engine.log import get_logger, truncate

log = get_logger("controlplane.http")
API_KEY: web.AppKey[str] = web.AppKey("api_key", str)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# The control plane's own bodies are small JSON; 413 past this (the trainer gateway streams bodies
# through to the trainer, which applies its own limit).
MAX_BODY_BYTES = 4 * 1024 * 1024


def error_response(exc: ApiError) -> web.Response:
    headers = {"Retry-After": "1"} if exc.status == 503 else None
    exc.message = truncate(exc.message, 2000)  # messages quote request values
    return web.json_response(exc.body(), status=exc.status, headers=headers)


def presented_keys(request: web.Request) -> list[str]:
    keys: list[str] = []
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        keys.append(auth[7:].strip())
    x_key = request.headers.get("X-API-Key", "").strip()
    if x_key:
        # The tinker client insists on a 'tml-' prefix, so 'tml-<stack key>' is accepted as well.
        keys += [x_key, x_key.removeprefix("tml-")]
    return keys


@web.middleware
async def auth_and_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    expected = request.app[API_KEY]
    try:
        check_head(request)
    except BadInput as exc:
        return error_response(ApiError(exc.status, str(exc)))
    if not any(key_matches(k, expected) for k in presented_keys(request)):
        reason = "missing" if not presented_keys(request) else "invalid"
        return error_response(
            ApiError(
                401,
                f"{reason} API key: send 'Authorization: Bearer <HOTLOOP_API_KEY>' (or X-API-Key) "
                "with the key that `hotloop up` printed for this stack",
            )
        )
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc)
    except BadInput as exc:
        return error_response(ApiError(exc.status, f"request {exc}"))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        # aiohttp's own 404/405 become Fireworks-shaped JSON errors that say what was asked.
        return error_response(
            ApiError(exc.status, f"{exc.reason}: no route for {request.method} {request.path}")
        )


async def json_body(request: web.Request) -> dict[str, Any]:
    """Strict JSON (no NaN/Infinity, bounded depth, valid Unicode) under the body limit."""
    if not request.can_read_body:
        return {}
    return await read_json(request)


def check_account(request: web.Request) -> None:
    account = request.match_info["account"]
    if account != ACCOUNT:
        raise ApiError(404, f"account {account!r} not found (this control plane serves account {ACCOUNT!r})")


def _account_json() -> dict[str, Any]:
    return {"name": f"accounts/{ACCOUNT}", "displayName": "hotloop embedded stack", "state": "READY"}


async def list_accounts(request: web.Request) -> web.Response:
    return web.json_response({"accounts": [_account_json()], "totalSize": 1})


async def get_account(request: web.Request) -> web.Response:
    check_account(request)
    return web.json_response(_account_json())


def _requested_id(request: web.Request, body: dict[str, Any], key: str) -> str:
    """The client-chosen id: ``?key=``, ``body[key]``, or the last segment of ``body["name"]``."""
    value = request.query.get(key) or body.get(key)
    if not value and isinstance(body.get("name"), str):
        value = body["name"].rsplit("/", 1)[-1]
    if not value:
        raise ApiError(400, f"{key}: required (query parameter ?{key}=<id>)")
    return str(value)


def _created(status: int, kind: str, resource: Any) -> web.Response:
    """Create is idempotent: 409 carries the existing resource so a retried create can adopt it."""
    if status == 409:
        message = f"{kind} {resource.name!r} already exists"
        return web.json_response(ApiError(409, message, extra=resource.to_json()).body(), status=409)
    return web.json_response(resource.to_json())


async def create_job(request: web.Request) -> web.Response:
    check_account(request)
    body = await json_body(request)
    if shape := request.query.get("trainingShape"):  # Fireworks' shape path
        catalog.check_job_shape(shape, body)
    status, job = request.app[PLANE].create_job(_requested_id(request, body, "rlorTrainerJobId"), body)
    return _created(status, "rlorTrainerJob", job)


async def list_jobs(request: web.Request) -> web.Response:
    check_account(request)
    jobs = [j.to_json() for j in request.app[PLANE].jobs.values()]
    return web.json_response({"rlorTrainerJobs": jobs, "totalSize": len(jobs)})


async def job_item(request: web.Request) -> web.Response:
    check_account(request)
    plane = request.app[PLANE]
    job_id, _, verb = request.match_info["job"].partition(":")
    if request.method == "GET" and not verb:
        return web.json_response(plane.job(job_id).to_json())
    if request.method == "DELETE" and not verb:
        plane.delete_job(job_id)
        return web.json_response({})
    if request.method == "POST" and verb == "resume":
        return web.json_response(plane.resume_job(job_id).to_json())
    raise ApiError(404, f"no method {request.method} {request.path}")


async def job_checkpoints(request: web.Request) -> web.Response:
    check_account(request)
    job = request.app[PLANE].job(request.match_info["job"])
    rows = list_checkpoints(job)
    try:
        size = max(1, min(ascii_int(request.query.get("pageSize", "200"), "pageSize"), 1000))
        start = ascii_int(request.query.get("pageToken") or "0", "pageToken", INT64_MIN)
    except BadInput as exc:
        raise ApiError(400, str(exc)) from exc
    if start < 0:  # a negative slice start would page from the end
        raise ApiError(400, f"pageToken: must be a token from nextPageToken, got {start}")
    page = rows[start : start + size]
    token = str(start + size) if start + size < len(rows) else ""
    return web.json_response({"checkpoints": page, "nextPageToken": token, "totalSize": len(rows)})


async def create_deployment(request: web.Request) -> web.Response:
    check_account(request)
    body = await json_body(request)
    status, dep = request.app[PLANE].create_deployment(_requested_id(request, body, "deploymentId"), body)
    return _created(status, "deployment", dep)


async def list_deployments(request: web.Request) -> web.Response:
    check_account(request)
    deps = [d.to_json() for d in request.app[PLANE].deployments.values()]
    return web.json_response({"deployments": deps, "totalSize": len(deps)})


async def deployment_item(request: web.Request) -> web.Response:
    check_account(request)
    plane = request.app[PLANE]
    dep_id = request.match_info["deployment"]
    if request.method == "GET":
        return web.json_response(plane.deployment(dep_id).to_json())
    if request.method == "DELETE":
        plane.delete_deployment(dep_id)
        return web.json_response({})
    mask = [m.strip() for m in request.query.get("updateMask", "").split(",") if m.strip()]
    return web.json_response(plane.patch_deployment(dep_id, await json_body(request), mask).to_json())


def build_app(plane: ControlPlane, api_key: str) -> web.Application:
    app = new_app(ServerLimits(max_body_bytes=MAX_BODY_BYTES), middlewares=[auth_and_errors])
    app[PLANE] = plane
    app[API_KEY] = api_key
    jobs = "/v1/accounts/{account}/rlorTrainerJobs"
    deps = "/v1/accounts/{account}/deployments"
    app.router.add_get("/v1/accounts", list_accounts)
    app.router.add_get("/v1/accounts/{account}", get_account)
    app.router.add_post(jobs, create_job)
    app.router.add_get(jobs, list_jobs)
    app.router.add_route("*", jobs + "/{job}", job_item)
    app.router.add_get(jobs + "/{job}/checkpoints", job_checkpoints)
    app.router.add_post(deps, create_deployment)
    app.router.add_get(deps, list_deployments)
    app.router.add_route("GET", deps + "/{deployment}", deployment_item)
    app.router.add_route("DELETE", deps + "/{deployment}", deployment_item)
    app.router.add_route("PATCH", deps + "/{deployment}", deployment_item)
    catalog.add_routes(app, plane.root)
    proxy.add_routes(app, plane)
    return app
