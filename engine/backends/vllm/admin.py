"""``VllmAdminClient``: vLLM's health, model, pause/resume and weight endpoints over aiohttp.

The weight endpoints exist only when the server runs with ``VLLM_SERVER_DEV_MODE=1``. Every call is
bounded by its own timeout and maps failures at this boundary: no answer, a timeout or a transient
status (429, 502-504) is ``VllmUnavailableError`` (retryable); any other error status, including a
500 from a worker method (``reload_weights`` raised), is ``VllmAdminError`` (fatal). Both name the
endpoint and quote vLLM's message. The client never retries: its callers own their retry budgets.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any, Literal

import aiohttp

from engine.backends.vllm.errors import VllmAdminError, VllmUnavailableError
from engine.errors import ConfigError
from engine.retry import error_message

PauseMode = Literal["abort", "wait", "keep"]
PAUSE_MODES: tuple[PauseMode, ...] = ("abort", "wait", "keep")
INITIAL_VERSION = "default"
"""What ``/weight_info`` reports before anyone set a version: the weights the server started with."""

_RETRYABLE = frozenset({408, 425, 429, 502, 503, 504})
_BODY_LIMIT = 4096
_READ_LIMIT = 1 << 20
"""The most of one answer's body read (vLLM's admin answers are small JSON)."""


async def read_capped(content: aiohttp.StreamReader, limit: int = _READ_LIMIT) -> bytes:
    """The whole body up to ``limit`` bytes: ``StreamReader.read(n)`` returns only what is buffered,
    which for a chunked or slow answer is a prefix of it."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in content.iter_chunked(64 * 1024):
        chunks.append(chunk[: limit - size])
        size += len(chunks[-1])
        if size >= limit:
            break
    return b"".join(chunks)


class VllmAdminClient:
    """One vLLM server's admin surface. ``api_key`` (if any) is sent as ``Authorization: Bearer``."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 30.0,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"base_url: expected http:// or https://, got {base_url!r}")
        if timeout_s <= 0:
            raise ConfigError(f"timeout_s: must be > 0, got {timeout_s}")
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._user_session = session
        self._own_session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:  # never the key
        return f"VllmAdminClient({self.base_url!r})"

    def _session(self) -> aiohttp.ClientSession:
        if self._user_session is not None:
            return self._user_session
        if self._own_session is None or self._own_session.closed:
            self._own_session = aiohttp.ClientSession()
        return self._own_session

    async def aclose(self) -> None:
        if self._own_session is not None and not self._own_session.closed:
            await self._own_session.close()
        self._own_session = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> Any:
        """One call; returns the decoded JSON (or text) body of a 2xx answer, raises typed errors."""
        endpoint = f"{method} {path}"
        limit = timeout_s if timeout_s is not None else self.timeout_s
        try:
            async with asyncio.timeout(limit):
                async with self._session().request(
                    method,
                    self.base_url + path,
                    json=body,
                    params=params,
                    headers=self._headers,
                    timeout=aiohttp.ClientTimeout(total=limit),
                ) as resp:
                    raw = await read_capped(resp.content)
                    status = resp.status
        except TimeoutError as exc:
            raise VllmUnavailableError(
                f"vLLM {endpoint} at {self.base_url}: no answer within {limit:g} s", endpoint=endpoint
            ) from exc
        except aiohttp.ClientError as exc:
            raise VllmUnavailableError(
                f"vLLM {endpoint} at {self.base_url}: {type(exc).__name__}: {exc}", endpoint=endpoint
            ) from exc
        if status >= 400:
            message = error_message(raw[:_BODY_LIMIT], f"HTTP {status}")
            text = f"vLLM {endpoint} answered HTTP {status}: {message}"
            if status in _RETRYABLE:
                raise VllmUnavailableError(text, endpoint=endpoint, status=status)
            raise VllmAdminError(text, endpoint=endpoint, status=status)
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode("utf-8", "replace")

    # ---- health and identity ---------------------------------------------------------------------

    async def health(self) -> bool:
        """True when the server answers ``/health`` with 200 (False: not up yet, or its engine died)."""
        try:
            await self.request("GET", "/health", timeout_s=min(self.timeout_s, 5.0))
        except (VllmUnavailableError, VllmAdminError):
            return False
        return True

    async def version(self) -> str:
        data = await self.request("GET", "/version")
        if not isinstance(data, dict) or not isinstance(data.get("version"), str):
            raise VllmAdminError(
                f"GET /version: unexpected answer {data!r:.200}", endpoint="GET /version", status=200
            )
        return str(data["version"])

    async def models(self) -> list[dict[str, Any]]:
        """The ``/v1/models`` cards: the served model (``root`` = its launch directory) and adapters."""
        data = await self.request("GET", "/v1/models")
        cards = data.get("data") if isinstance(data, dict) else None
        if not isinstance(cards, list):
            raise VllmAdminError(
                f"GET /v1/models: unexpected answer {data!r:.200}", endpoint="GET /v1/models", status=200
            )
        return [c for c in cards if isinstance(c, dict)]

    async def weight_version(self) -> str:
        """The label ``/update_weight_version`` last set (``"default"`` on a fresh server)."""
        data = await self.request("GET", "/weight_info")
        if not isinstance(data, dict) or not isinstance(data.get("weight_version"), str):
            raise VllmAdminError(
                f"GET /weight_info: unexpected answer {data!r:.200} (is VLLM_SERVER_DEV_MODE=1 set?)",
                endpoint="GET /weight_info",
                status=200,
            )
        return str(data["weight_version"])

    async def update_weight_version(self, version: str) -> None:
        await self.request("POST", "/update_weight_version", body={"new_version": version})

    # ---- pause, reload, caches -------------------------------------------------------------------

    async def pause(self, mode: PauseMode, *, timeout_s: float | None = None) -> None:
        if mode not in PAUSE_MODES:
            raise ConfigError(f"pause mode: expected one of {PAUSE_MODES}, got {mode!r}")
        await self.request("POST", "/pause", params={"mode": mode}, timeout_s=timeout_s)

    async def resume(self) -> None:
        await self.request("POST", "/resume")

    async def is_paused(self) -> bool:
        data = await self.request("GET", "/is_paused")
        return bool(data.get("is_paused")) if isinstance(data, dict) else False

    async def collective_rpc(
        self, method: str, kwargs: Mapping[str, str] | None = None, *, timeout_s: float | None = None
    ) -> list[Any]:
        """Call a worker method on every worker; vLLM passes only string arguments."""
        body: dict[str, Any] = {"method": method, "kwargs": dict(kwargs or {})}
        limit = timeout_s if timeout_s is not None else self.timeout_s
        body["timeout"] = limit
        data = await self.request("POST", "/collective_rpc", body=body, timeout_s=limit + 5.0)
        results = data.get("results") if isinstance(data, dict) else None
        return list(results) if isinstance(results, list) else []

    async def reload_weights(self, weights_path: str, *, timeout_s: float | None = None) -> None:
        """Re-read the model's weights from ``weights_path`` (a directory of ``*.safetensors``)."""
        await self.collective_rpc("reload_weights", {"weights_path": weights_path}, timeout_s=timeout_s)

    async def reset_prefix_cache(self) -> bool:
        """False while blocks are still held (vLLM says: retry)."""
        data = await self.request("POST", "/reset_prefix_cache")
        return bool(data.get("success", True)) if isinstance(data, dict) else True
