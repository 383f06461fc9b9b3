"""The trainer endpoint's transport for ``FireworksTrainingSession``: authenticated JSON POSTs with one
retry owner, and results long-polled from ``/api/v1/retrieve_future`` the way Fireworks' client does.

Polling (its ``_APIFuture``): ``{"type": "try_again"}`` polls again; ``{"status":
"complete_metadata"}`` (the result is large and was only announced) polls again without
``allow_metadata_only``; ``{"error", "category"}`` is the operation's failure; HTTP 408 polls again,
410 means the promise expired (retryable: the operation must be resubmitted), 429/5xx back off.
Everything is bounded by the caller's deadline.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp

from engine.backends.fireworks import trainer_wire as wire
from engine.backends.fireworks.rest import RestClient, RestRetryPolicy
from engine.errors import FatalError, RetryableError, StuckError
from engine.log import get_logger
from engine.retry import error_message, is_transient

log = get_logger("engine.backends.fireworks.trainer")
RETRIEVE_TIMEOUT_S = 90.0  # its header + body timeouts (45 s each): the server long-polls ~25 s
MAX_POLL_BACKOFF_S = 30.0


def idempotency_key() -> dict[str, str]:
    """A fresh key for one logical request (its retries reuse it), in the form Fireworks' client sends."""
    return {"X-Idempotency-Key": f"stainless-python-retry-{uuid.uuid4()}"}


class TrainerRest(RestClient):
    """``RestClient`` with the trainer's auth (``X-API-Key`` only) and a per-request idempotency key
    that stays the same across retries of that request."""

    def headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        return {**wire.headers(self._api_key), **(extra or {})}

    async def post(self, path: str, body: Mapping[str, Any], what: str, *, timeout_s: float) -> Any:
        result = await self.request(
            "POST",
            path,
            json_body=dict(body),
            headers=idempotency_key(),
            timeout_s=timeout_s,
        )
        if not isinstance(result.body, dict):
            raise FatalError(f"{what}: the trainer answered {str(result.body)[:200]!r}, not a JSON object")
        return result.body

    async def result(self, request_id: str, request_type: str, what: str, deadline: float) -> Any:
        """The finished operation's result (JSON dict, or the ``ForwardBackwardOutput`` when the trainer
        answered protobuf), polling until ``deadline`` (loop time)."""
        loop = asyncio.get_running_loop()
        allow_metadata_only = True
        backoff, iteration = 1.0, 0
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise StuckError(f"{what}: no result for {request_id} before the operation's deadline")
            headers = {
                **self.headers(idempotency_key()),
                "X-Tinker-Request-Iteration": str(iteration),
                "X-Tinker-Request-Type": request_type,
            }
            if request_type in wire.PROTO_RESULT_TYPES:
                headers["Accept"] = f"{wire.PROTO}, application/json"
            if iteration == 0:
                headers["X-Tinker-Create-Promise-Roundtrip-Time"] = "0.0"
            iteration += 1
            body = {"request_id": request_id, "allow_metadata_only": allow_metadata_only}
            try:
                async with (
                    asyncio.timeout(min(remaining, RETRIEVE_TIMEOUT_S)),
                    self._http().post(
                        self.url("/api/v1/retrieve_future"), data=json.dumps(body), headers=headers
                    ) as resp,
                ):
                    raw = await resp.read()
                    status, ctype = resp.status, resp.headers.get("Content-Type", "")
            except (TimeoutError, aiohttp.ClientError) as exc:
                log.info("retrieve_future retry", request_id=request_id, error=repr(exc))
                await asyncio.sleep(min(backoff, max(0.0, deadline - loop.time())))
                backoff = min(backoff * 2, MAX_POLL_BACKOFF_S)
                continue
            if status == 200 and wire.PROTO in ctype:
                return wire.forward_output_proto(raw, what)
            if status == 408:
                continue  # the server's own long-poll timeout: poll again at once
            if status == 410:
                raise RetryableError(f"{what}: the trainer expired the result of {request_id} (HTTP 410)")
            if status != 200:
                message = f"{what}: HTTP {status} polling {request_id}: {error_message(raw)}"
                if not is_transient(status):
                    raise FatalError(message)
                log.info("retrieve_future backoff", status=status, request_id=request_id)
                await asyncio.sleep(min(backoff, max(0.0, deadline - loop.time())))
                backoff = min(backoff * 2, MAX_POLL_BACKOFF_S)
                continue
            try:
                answer = json.loads(raw)
            except ValueError as exc:
                raise FatalError(f"{what}: retrieve_future answered non-JSON: {raw[:200]!r}") from exc
            if not isinstance(answer, dict):
                raise FatalError(f"{what}: retrieve_future answered {str(answer)[:200]}")
            if answer.get("type") == "try_again":
                continue
            if answer.get("status") == "complete_metadata":
                allow_metadata_only = False  # announced only: fetch the payload itself
                continue
            if "error" in answer:
                category = answer.get("category") or "unknown"
                raise FatalError(f"{what} failed on the trainer ({category} error): {answer['error']}")
            return answer


async def heartbeat(rest: TrainerRest, session_id: str, interval_s: Callable[[], float]) -> None:
    """``session_heartbeat`` every ``interval_s()`` seconds, as Fireworks' client does (one attempt
    each, bounded by the interval); a failing streak is logged once per two minutes, not per beat."""
    failing_since: float | None = None
    body = {"session_id": session_id, "type": "session_heartbeat"}
    while True:
        await asyncio.sleep(interval_s())
        try:
            async with (
                asyncio.timeout(max(1.0, interval_s())),
                rest._http().post(
                    rest.url("/api/v1/session_heartbeat"), json=body, headers=rest.headers(idempotency_key())
                ) as resp,
            ):
                await resp.read()
                ok = resp.status < 400
        except Exception:  # a missed beat is only counted
            ok = False
        now = time.monotonic()
        if ok:
            failing_since = None
        elif failing_since is None:
            failing_since = now
        elif now - failing_since > 120:
            log.warning(
                "session heartbeats failing", session_id=session_id, seconds=round(now - failing_since)
            )
            failing_since = now


def trainer_rest(base_url: str, api_key: str, retry_policy: RestRetryPolicy | None = None) -> TrainerRest:
    """The trainer's transport; Fireworks' client retries submissions for up to 300 s."""
    return TrainerRest(api_key, base_url, retry_policy=retry_policy or RestRetryPolicy(total_budget_s=300.0))
