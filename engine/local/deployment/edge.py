"""The deployment's request edge: error bodies, header/body refusals, auth, and who a request is from.

Pure helpers and middleware factories (no model, no scheduler), so the app module stays about routes.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from aiohttp import web

from engine.local.deployment.fairness import CLIENT_HEADER
from engine.local.http_server import check_head, key_matches
from engine.local.inputs import BadInput
from engine.log import truncate

OPEN_PATHS = ("/health", "/metrics")


def error(
    status: int, message: str, param: str | None = None, headers: dict[str, str] | None = None
) -> web.Response:
    """An OpenAI-style error body."""
    kind = "invalid_request_error" if 400 <= status < 500 else "server_error"
    # Messages quote request values; a bounded body must not become an unbounded answer.
    body = {"error": {"message": truncate(message, 2000), "type": kind, "param": param, "code": status}}
    return web.json_response(body, status=status, headers=headers)


def edge(on_reject: Callable[[int], None]) -> Any:
    """Header bytes and bodies (size, encoding, arrival time) refused with a 4xx naming the field."""

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            check_head(request)
            result: web.StreamResponse = await handler(request)
        except BadInput as exc:
            on_reject(exc.status)
            return error(exc.status, str(exc), exc.field)
        return result

    return middleware


def auth(api_key: str | None) -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        if api_key and request.path not in OPEN_PATHS and not key_matches(presented_key(request), api_key):
            return error(401, "missing or wrong API key (Authorization: Bearer ... or X-Api-Key)")
        result: web.StreamResponse = await handler(request)
        return result

    return middleware


def presented_key(request: web.Request) -> str:
    bearer = request.headers.get("Authorization", "")
    return bearer[7:] if bearer.lower().startswith("bearer ") else request.headers.get("X-Api-Key", "")


def client_of(request: web.Request, trust_forwarded: bool) -> str:
    """Whose share of the waiting queue a request uses (``fairness``): the caller's connection, as
    the gateway reports it (trusted only when a key is required, i.e. checked) or as seen here."""
    forwarded = request.headers.get(CLIENT_HEADER)
    if forwarded and trust_forwarded:
        return "gw:" + forwarded[:200]
    peer = request.transport.get_extra_info("peername") if request.transport is not None else None
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "unknown"


def request_id_of(request: web.Request) -> str:
    """The caller's ``x-request-id`` (echoed back in a header, so it must be plain), or a new one."""
    given = request.headers.get("x-request-id")
    if not given:
        return f"cmpl-{uuid.uuid4().hex}"
    if len(given) > 200 or not (given.isascii() and given.isprintable()):
        raise BadInput(400, "header x-request-id", "must be at most 200 printable ASCII characters")
    return given


def longest_token_chars(tokenizer: Any) -> int:
    """Characters of the longest vocabulary entry: a text longer than context x this cannot fit."""
    pieces = tokenizer.convert_tokens_to_string
    return max(8, max((len(pieces([t])) for t in tokenizer.get_vocab()), default=8))
