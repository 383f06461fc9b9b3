"""The REST base of both managers: one aiohttp session, one retry owner (tenacity).

Retry rule (Fireworks' control-plane layer, plus jitter and Retry-After): 408/425/429/5xx and
connection errors are retried with capped, jittered exponential backoff, a ``Retry-After`` header
being a floor; every other 4xx fails at once with the server's own message as a typed error.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type

from engine.backends.fireworks.errors import (
    AuthenticationError,
    ConflictError,
    ControlPlaneError,
    NotFoundError,
    RetriesExhaustedError,
)
from engine.clock import SYSTEM_CLOCK, Clock
from engine.errors import ConfigError, RetryableError
from engine.log import get_logger
from engine.retry import backoff_delay, error_message, is_transient, parse_retry_after

log = get_logger("control.rest")


@dataclass(frozen=True)
class RestRetryPolicy:
    """The control-plane client's retry budget: attempts, backoff and a total wall-clock budget."""

    max_attempts: int = 8
    initial_backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    max_retry_after_s: float = 60.0
    total_budget_s: float = 300.0

    def delay(self, attempt: int, retry_after_s: float | None, jitter: float) -> float:
        """Sleep before retry number ``attempt`` (1-based). ``jitter`` is drawn from U[0.5, 1.5)."""
        return backoff_delay(
            attempt,
            initial_s=self.initial_backoff_s,
            multiplier=2.0,
            max_s=self.max_backoff_s,
            jitter=jitter,
            retry_after_s=retry_after_s,
            max_retry_after_s=self.max_retry_after_s,
        )


class _RetryableHTTP(RetryableError):
    def __init__(self, message: str, *, status: int | None, retry_after_s: float | None = None) -> None:
        super().__init__(message, retry_after_s=retry_after_s)
        self.status = status


_STATUS_ERRORS: Mapping[int, type[ControlPlaneError]] = {
    401: AuthenticationError,
    403: AuthenticationError,
    404: NotFoundError,
    409: ConflictError,
}
"""The typed error of a fatal status; any other 4xx is a plain ControlPlaneError."""


@dataclass(frozen=True)
class HttpResult:
    status: int
    body: Any
    headers: Mapping[str, str]


def _decode(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")


class RestClient:
    """Shared by TrainerJobManager and DeploymentManager. Use as ``async with`` or call ``aclose()``."""

    def __init__(
        self,
        api_key: str,
        base_url: str = "https://api.fireworks.ai",
        *,
        additional_headers: Mapping[str, str] | None = None,
        clock: Clock | None = None,
        retry_policy: RestRetryPolicy | None = None,
        account_id: str | None = None,
    ) -> None:
        if not api_key:
            raise ConfigError("api_key: must be set (the control plane's bearer token)")
        self._api_key = api_key
        self.base_url = base_url.rstrip("/")
        self._extra_headers = dict(additional_headers or {})
        self.clock: Clock = clock or SYSTEM_CLOCK
        self.retry_policy = retry_policy or RestRetryPolicy()
        self._account_id = account_id
        self._session: aiohttp.ClientSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None
        self._rng = random.Random()

    async def __aenter__(self) -> RestClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if (
            self._session is not None
            and not self._session.closed
            and self._session_loop is asyncio.get_running_loop()
        ):
            await self._session.close()
        self._session = None

    def _http(self) -> aiohttp.ClientSession:
        # Created lazily: an aiohttp session must be born inside the running loop that uses it. A
        # caller that drives the manager from a new loop (asyncio.run per call) gets a new session;
        # the old one belongs to a loop that is gone and cannot be closed from here.
        loop = asyncio.get_running_loop()
        if self._session is not None and self._session_loop is not loop:
            self._session = None
        if self._session is None or self._session.closed:
            self._session_loop = loop
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=256),
                timeout=aiohttp.ClientTimeout(total=None),
            )
        return self._session

    def bearer(self) -> dict[str, str]:
        """What Fireworks' SDK adds to inference, hot-load and trainer-health calls (control-plane
        calls carry ``X-Api-Key`` only)."""
        return {"Authorization": f"Bearer {self._api_key}"}

    def headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        merged: dict[str, str] = {"Content-Type": "application/json", "X-Api-Key": self._api_key}
        for source in (self._extra_headers, extra or {}):
            for key, value in source.items():  # caller headers override defaults case-insensitively
                for existing in [k for k in merged if k.lower() == key.lower()]:
                    del merged[existing]
                merged[key] = value
        return merged

    @property
    def account_id(self) -> str:
        if self._account_id is None:
            raise RuntimeError("account_id is not resolved yet: await resolve_account_id() first")
        return self._account_id

    async def resolve_account_id(self) -> str:
        """``GET /v1/accounts?pageSize=2``; exactly one account must be visible to the key."""
        if self._account_id is None:
            result = await self.request("GET", "/v1/accounts", params={"pageSize": "2"})
            accounts = (result.body or {}).get("accounts") or []
            if len(accounts) != 1:
                raise ConfigError(f"api_key: expected exactly one account, the server lists {len(accounts)}")
            self._account_id = str(accounts[0]["name"]).removeprefix("accounts/")
        return self._account_id

    def url(self, path_or_url: str) -> str:
        return path_or_url if "://" in path_or_url else f"{self.base_url}{path_or_url}"

    async def _attempt(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None,
        json_body: Any,
        headers: Mapping[str, str] | None,
        timeout_s: float,
        none_on_404: bool,
    ) -> HttpResult:
        try:
            async with asyncio.timeout(timeout_s):
                async with self._http().request(
                    method, url, params=params, json=json_body, headers=self.headers(headers)
                ) as resp:
                    raw = await resp.read()
                    status, resp_headers = resp.status, resp.headers
        except TimeoutError as exc:
            raise _RetryableHTTP(f"{method} {url} timed out after {timeout_s:g}s", status=None) from exc
        except aiohttp.ClientError as exc:
            raise _RetryableHTTP(f"{method} {url}: connection error: {exc!r}", status=None) from exc
        body = _decode(raw)
        if 200 <= status < 300 or (status == 404 and none_on_404):
            return HttpResult(status, body, resp_headers)
        message = f"HTTP {status} from {method} {url}: {error_message(body, resp.reason or '')}"
        if is_transient(status):
            raise _RetryableHTTP(
                message, status=status, retry_after_s=parse_retry_after(resp_headers.get("Retry-After"))
            )
        error_type = _STATUS_ERRORS.get(status, ControlPlaneError)
        raise error_type(message, status=status, url=url, body=body)

    async def request(
        self,
        method: str,
        path_or_url: str,
        *,
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
        timeout_s: float = 60.0,
        none_on_404: bool = False,
    ) -> HttpResult:
        """One logical request; the only place that retries. Fatal answers raise at once."""
        url = self.url(path_or_url)
        policy = self.retry_policy
        started = self.clock.monotonic()

        def stop(state: RetryCallState) -> bool:
            if state.attempt_number >= policy.max_attempts:
                return True
            return self.clock.monotonic() - started >= policy.total_budget_s

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            retry_after = exc.retry_after_s if isinstance(exc, RetryableError) else None
            return policy.delay(state.attempt_number, retry_after, self._rng.uniform(0.5, 1.5))

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.info("retrying", method=method, url=url, attempt=state.attempt_number, error=str(exc))

        retrying = AsyncRetrying(
            retry=retry_if_exception_type(RetryableError),
            stop=stop,
            wait=wait,
            sleep=self.clock.sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        attempts = 0
        try:
            async for attempt in retrying:
                with attempt:
                    attempts += 1
                    return await self._attempt(
                        method,
                        url,
                        params=params,
                        json_body=json_body,
                        headers=headers,
                        timeout_s=timeout_s,
                        none_on_404=none_on_404,
                    )
        except _RetryableHTTP as exc:
            raise RetriesExhaustedError(
                f"{exc} (gave up after {attempts} attempts)", attempts=attempts, last_status=exc.status
            ) from exc
        raise AssertionError("unreachable: tenacity either returns or raises")

    async def probe(
        self, method: str, url: str, *, json_body: Any = None, timeout_s: float = 10.0, headers: Any = None
    ) -> tuple[int | None, str]:
        """One unretried attempt for readiness checks (inference and trainer health, so with the
        bearer header too): (status or None, short detail)."""
        try:
            async with asyncio.timeout(timeout_s):
                async with self._http().request(
                    method, url, json=json_body, headers=self.headers({**self.bearer(), **(headers or {})})
                ) as resp:
                    raw = await resp.read()
                    return resp.status, error_message(_decode(raw), resp.reason or "")[:300]
        except TimeoutError:
            return None, f"timed out after {timeout_s:g}s"
        except aiohttp.ClientError as exc:
            return None, f"connection error: {exc!r}"

    async def request_once(
        self, method: str, path_or_url: str, *, timeout_s: float = 10.0, none_on_404: bool = False
    ) -> HttpResult:
        """One unretried attempt (health checks: a failure is an answer, not something to wait out);
        raises the same typed errors as one attempt of ``request``."""
        return await self._attempt(
            method,
            self.url(path_or_url),
            params=None,
            json_body=None,
            headers=None,
            timeout_s=timeout_s,
            none_on_404=none_on_404,
        )
