"""One structured log line for every 4xx the trainer answers, unknown routes included.

The outermost middleware, so it sees the final response whatever produced it (a handler's
TrainerBadRequest, the router's 404/405, the API-key check's 401, aiohttp's 413). Values are
truncated: a client sending garbage must not be able to flood the log with it. The detail comes from
the error body the ``errors`` middleware writes (``{"detail": ...}``).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

from aiohttp import web

from engine.local.trainer.logs import LazyLogger

log = LazyLogger("trainer.app")
MAX_PATH_CHARS = 200
MAX_DETAIL_CHARS = 300
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _detail(response: web.StreamResponse) -> str:
    body = response.body if isinstance(response, web.Response) else None
    if not isinstance(body, bytes | bytearray):
        return ""
    try:
        if len(body) > 65536:  # not an error body of ours: do not parse it
            raise ValueError("large body")
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return bytes(body[:MAX_DETAIL_CHARS]).decode("utf-8", "replace")
    detail = parsed.get("detail") if isinstance(parsed, dict) else parsed
    return str(detail)[:MAX_DETAIL_CHARS]


@web.middleware
async def client_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:  # raised past the errors middleware (none should be)
        if 400 <= exc.status < 500:
            _log(request, exc.status, exc.text or exc.reason)
        raise
    if 400 <= response.status < 500:
        _log(request, response.status, _detail(response))
    return response


def _log(request: web.Request, status: int, detail: str) -> None:
    log.info(
        "client_error",
        method=request.method,
        path=request.path[:MAX_PATH_CHARS],
        status=status,
        detail=detail[:MAX_DETAIL_CHARS],
    )
