"""The tinker boundary: awaiting tinker's own future type from our loop, and error mapping."""

from __future__ import annotations

import concurrent.futures
import threading

import httpx
import pytest
import tinker
from tinker.lib.public_interfaces.api_future import AwaitableConcurrentFuture

from engine.backends.tinker import tinker_credentials
from engine.backends.tinker.edge import await_future, map_error
from engine.errors import ConfigError, FatalError, RetryableError, StuckError


async def test_await_future_returns_result_set_from_another_thread() -> None:
    cf: concurrent.futures.Future[int] = concurrent.futures.Future()
    threading.Timer(0.01, cf.set_result, args=(7,)).start()  # as tinker's loop thread would
    assert await await_future(AwaitableConcurrentFuture(cf), 30, "op") == 7


async def test_await_future_timeout_cancels_the_operation() -> None:
    cf: concurrent.futures.Future[int] = concurrent.futures.Future()
    with pytest.raises(StuckError, match=r"optim_step: no result within 0\.05s"):
        await await_future(AwaitableConcurrentFuture(cf), 0.05, "optim_step")
    assert cf.cancelled()


async def test_await_future_maps_errors() -> None:
    cf: concurrent.futures.Future[int] = concurrent.futures.Future()
    cf.set_exception(ValueError("Error retrieving result: bad datum"))
    with pytest.raises(FatalError, match="forward: Error retrieving result: bad datum"):
        await await_future(AwaitableConcurrentFuture(cf), 1, "forward")


def _status_error(status: int) -> tinker.APIStatusError:
    request = httpx.Request("POST", "http://127.0.0.1/api/v1/forward")
    response = httpx.Response(status, request=request, json={"detail": "nope"})
    return tinker.APIStatusError("server said nope", response=response, body={"detail": "nope"})


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, FatalError),
        (404, FatalError),
        (408, RetryableError),
        (429, RetryableError),
        (503, RetryableError),
    ],
)
def test_map_error_by_status(status: int, kind: type[Exception]) -> None:
    err = map_error(_status_error(status), "save_state")
    assert type(err) is kind and f"HTTP {status}" in str(err) and "save_state" in str(err)


def test_map_error_connection_and_passthrough() -> None:
    request = httpx.Request("POST", "http://127.0.0.1/x")
    assert isinstance(map_error(tinker.APIConnectionError(request=request), "op"), RetryableError)
    assert isinstance(map_error(ConnectionResetError("reset"), "op"), RetryableError)
    original = StuckError("already typed")
    assert map_error(original, "op") is original


def test_credentials_for_gateway_keys() -> None:
    assert tinker_credentials("tml-abc") == ("tml-abc", {})
    key, headers = tinker_credentials("hl-secret")
    assert key == "tml-hl-secret" and headers == {"Authorization": "Bearer hl-secret"}
    with pytest.raises(ConfigError, match="api_key"):
        tinker_credentials("")
