"""The edge between hotloop and the tinker 0.38 client: building its clients (keys, blocking creation
off the loop), awaiting its futures, mapping its errors, and its one extension.

tinker runs its HTTP on a background loop thread and hands back ``APIFuture``s; we await them from
the caller's loop through ``asyncio.wrap_future`` (never ``.result()``, which would block the loop),
bounded by a timeout, and map its exceptions to hotloop's retryable/fatal taxonomy here, once.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, TypeVar

import pydantic
import tinker
from tinker import types
from tinker._base_client import make_request_options
from tinker._compat import model_dump
from tinker.lib.api_future_impl import _APIFuture
from tinker.lib.client_connection_pool_type import ClientConnectionPoolType
from tinker.lib.public_interfaces.api_future import APIFuture
from tinker.lib.retryable_exception import RetryableException
from tinker.types.shared.untyped_api_future import UntypedAPIFuture

from engine.errors import ConfigError, FatalError, HotloopError, RetryableError, StuckError
from engine.retry import is_transient

T = TypeVar("T")


def map_error(exc: BaseException, what: str) -> HotloopError:
    """A tinker/OS exception as a hotloop error whose message names the operation."""
    if isinstance(exc, HotloopError):
        return exc
    if isinstance(exc, TimeoutError):
        return StuckError(f"{what}: timed out")
    if isinstance(exc, tinker.APIStatusError):
        status = exc.status_code
        msg = f"{what}: HTTP {status}: {exc.message}"
        if is_transient(status):
            return RetryableError(msg)
        return FatalError(msg)
    if isinstance(exc, tinker.APIConnectionError | RetryableException | ConnectionError):
        return RetryableError(f"{what}: {exc}")
    return FatalError(f"{what}: {exc}")


async def await_future(fut: APIFuture[T], timeout_s: float, what: str) -> T:
    """Await a tinker future from any event loop, bounded; errors mapped to hotloop's types.

    On timeout the underlying operation is cancelled (tinker treats that as poisoning the training
    client's queue, which is right: the caller can no longer know what the server applied).
    """
    cf = fut.future()
    try:
        async with asyncio.timeout(timeout_s):
            return await asyncio.wrap_future(cf)
    except TimeoutError as exc:
        cf.cancel()
        raise StuckError(f"{what}: no result within {timeout_s:g}s") from exc
    except asyncio.CancelledError:
        cf.cancel()
        raise
    except Exception as exc:
        raise map_error(exc, what) from exc


class SamplerSaveResult(pydantic.BaseModel):
    """The extended ``save_weights_for_sampler`` result (tinker's own type drops the extra fields)."""

    model_config = pydantic.ConfigDict(extra="ignore")

    path: str
    snapshot_name: str | None = None
    checkpoint_type: str | None = None
    parent_snapshot_identity: str | None = None
    size_bytes: int | None = None
    encode_seconds: float | None = None
    # hotloop's trainer names the encoding it wrote (engine.weights.snapshot's manifest fields).
    compression_format: str | None = None
    checksum_format: str | None = None


def save_weights_for_sampler_ext(
    client: tinker.TrainingClient,
    name: str,
    extra_body: dict[str, Any],
) -> APIFuture[SamplerSaveResult]:
    """``TrainingClient.save_weights_for_sampler(name)`` plus extra body fields.

    tinker's method has no ``checkpoint_type``/``parent_snapshot_identity`` parameters and its
    request model forbids extra fields, so this re-does what its ``_save_weights_for_sampler_impl``
    does for a named save -- reserve a request id now, send in turn with ``seq_id = id + 1`` through
    the holder's TRAIN pool and retry owner -- but posts the validated request with Stainless'
    ``extra_body``, and parses the result into a model that keeps the extended fields. Ordering
    with the client's other calls is therefore exactly tinker's.
    """
    request_id = client._get_request_id()
    holder = client.holder
    model_id = client._guaranteed_model_id()

    async def _run() -> SamplerSaveResult:
        start = time.time()

        async def _send() -> UntypedAPIFuture:
            request = types.SaveWeightsForSamplerRequest(model_id=model_id, path=name, seq_id=request_id + 1)
            body = model_dump(request, exclude_unset=False, exclude_none=True, mode="json")
            options = make_request_options(extra_body=extra_body)
            # One retry owner: the holder's execute_with_retries, as in tinker's own save path.
            options["max_retries"] = 0
            with holder.aclient(ClientConnectionPoolType.TRAIN) as api:
                result: UntypedAPIFuture = await api.weights._post(
                    "/api/v1/save_weights_for_sampler", body=body, options=options, cast_to=UntypedAPIFuture
                )
                return result

        async with client._take_turn(request_id):
            untyped = await holder.execute_with_retries(_send)
        return await _APIFuture(
            SamplerSaveResult,
            holder,
            untyped,
            request_start_time=start,
            request_type="SaveWeightsForSampler",
            queue_state_observer=client._queue_state_logger,
        )

    return holder.run_coroutine_threadsafe(_run())


def tinker_credentials(api_key: str) -> tuple[str, dict[str, str]]:
    """The key tinker accepts and extra headers for a hotloop/Fireworks key.

    tinker refuses keys without the ``tml-`` prefix and sends its key as ``X-API-Key``. A gateway
    key (hotloop's ``hl-...`` bearer token, a Fireworks key) goes as ``Authorization: Bearer`` and
    tinker gets a prefixed copy for its own header, as Fireworks' client does.
    """
    if not api_key:
        raise ConfigError("api_key: empty")
    if api_key.startswith(("tml-", "eyJ")):
        return api_key, {}
    return f"tml-{api_key}", {"Authorization": f"Bearer {api_key}"}


def service_client(base_url: str, api_key: str) -> tinker.ServiceClient:
    """tinker's ServiceClient for a trainer at ``base_url`` with a hotloop or Fireworks key."""
    if not base_url.startswith(("http://", "https://")):
        raise ConfigError(f"base_url: must be an http(s) URL, got {base_url!r}")
    key, headers = tinker_credentials(api_key)
    return tinker.ServiceClient(base_url=base_url.rstrip("/"), api_key=key, default_headers_overrides=headers)


async def create_client(service: tinker.ServiceClient, submit: Any, timeout_s: float, what: str) -> Any:
    """Run ``submit`` (tinker's blocking client creation) in a thread and await the client it returns."""
    try:
        try:
            async with asyncio.timeout(timeout_s):
                fut = await asyncio.to_thread(submit)
        except Exception as exc:
            raise map_error(exc, what) from exc
        return await await_future(fut, timeout_s, what)
    except BaseException:
        # Stop the half-built session's heartbeat; closing never blocks (it only schedules).
        service.close("errored")
        raise
