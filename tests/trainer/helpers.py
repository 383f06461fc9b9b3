"""Protocol-level helpers for the trainer tests."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import numpy as np
from tinker import types
from tinker.proto.request_conv import forward_backward_request_to_proto

from engine.local.trainer import ServerThread

EXAMPLE = [5, 6, 7, 8, 9, 10, 11, 12]


def datum(tokens: list[int], weights: list[float] | None = None) -> types.Datum:
    n = len(tokens) - 1
    return types.Datum(
        model_input=types.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={
            "target_tokens": tokens[1:],
            "weights": weights if weights is not None else [1.0] * n,
        },
    )


def fwdbwd_body(model_id: str, seq_id: int, data: list[types.Datum], forward_only: bool = False) -> bytes:
    req = types.ForwardBackwardRequest(
        forward_backward_input=types.ForwardBackwardInput(data=data, loss_fn="cross_entropy"),
        model_id=model_id,
        seq_id=seq_id,
    )
    msg = forward_backward_request_to_proto(req)
    msg.forward_only = forward_only
    return msg.SerializeToString()


class Raw:
    """Protocol-level client: posts bodies as given and polls futures to their outcome."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url + "/api/v1", timeout=60, headers={"X-API-Key": "tml-test"})

    def post(self, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        return self.http.post(path, json=body or {})

    def proto(self, path: str, body: bytes) -> httpx.Response:
        return self.http.post(path, content=body, headers={"Content-Type": "application/x-protobuf"})

    def ok(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        r = self.post(path, body)
        assert r.status_code == 200, r.text
        data: dict[str, Any] = r.json()
        return data

    def result(self, request_id: str, deadline_s: float = 60.0) -> httpx.Response:
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            r = self.http.post(
                "/retrieve_future",
                json={"request_id": request_id, "allow_metadata_only": False},
                headers={"Accept": "application/x-protobuf"},
            )
            if r.status_code != 200 or r.headers["content-type"].startswith("application/x-protobuf"):
                return r
            if r.json().get("type") != "try_again":
                return r
        raise TimeoutError(request_id)

    def session(self) -> str:
        return str(
            self.ok("/create_session", {"tags": [], "sdk_version": "test", "type": "create_session"})[
                "session_id"
            ]
        )

    def model(self, session_id: str, rank: int, model_seq_id: int = 0) -> str:
        body = {
            "session_id": session_id,
            "model_seq_id": model_seq_id,
            "base_model": "tiny",
            "lora_config": {"rank": rank},
            "type": "create_model",
        }
        fut = self.ok("/create_model", body)
        out = self.result(fut["request_id"]).json()
        assert out["model_id"] == f"{session_id}:train:{model_seq_id}", out
        return str(out["model_id"])


def on_loop(thread: ServerThread, fn: Any) -> Any:
    """Run ``fn()`` on the server's loop (its state is loop-confined) and return its value."""

    async def call() -> Any:
        return fn()

    return asyncio.run_coroutine_threadsafe(call(), thread.loop).result(30)


def logprobs_of(out: types.ForwardBackwardOutput) -> np.ndarray:
    return np.asarray(out.loss_fn_outputs[0]["logprobs"].tolist(), dtype=np.float32)
