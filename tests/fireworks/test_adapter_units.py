"""hotloop's Fireworks trainer client against a scripted trainer that answers as Fireworks' does
(no hotloop extensions): call order and seq ids, the futures protocol's answers, poisoning, the
delta format a Fireworks snapshot names, and how a run picks the dialect."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import tinker
from aiohttp import web

from engine.backends.base import HOTLOOP_DELTA_FORMAT
from engine.backends.fireworks import trainer_wire as wire
from engine.backends.fireworks.hotload import incremental_metadata
from engine.backends.fireworks.planes import trainer_dialect
from engine.backends.fireworks.trainer_session import FireworksTrainingSession
from engine.errors import FatalError, RetryableError

KEY = "fw-raw-key"


class ScriptedTrainer:
    """Answers every op at once with a future; ``retrieve_future`` plays ``script[request_id]``."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict[str, Any]]] = []
        self.polls: list[dict[str, Any]] = []
        self.script: dict[str, list[tuple[int, Any]]] = {}
        self.refuse: set[str] = set()
        self.results: dict[str, Any] = {}
        self.url = ""

    def result_of(self, path: str, body: dict[str, Any]) -> Any:
        if path == "create_model":
            return {"model_id": "s1:train:0", "type": "create_model"}
        if path in ("forward", "forward_backward"):
            key = "forward_input" if path == "forward" else "forward_backward_input"
            n = len(body[key]["data"][0]["loss_fn_inputs"]["target_tokens"]["data"])
            out = {"logprobs": {"data": [-1.0] * n, "dtype": "float32", "shape": [n]}}
            return {
                "loss_fn_output_type": "ArrayRecord",
                "loss_fn_outputs": [out],
                "metrics": {"loss:sum": 1.0},
            }
        if path == "optim_step":
            return {"type": "optim_step", "metrics": {}}  # Fireworks reports no step counter
        if path == "save_weights_for_sampler":
            return {"path": body["path"], "type": "save_weights_for_sampler"}  # no format named
        return {"type": path, "path": body.get("path", "")}

    async def handle(self, request: web.Request) -> web.Response:
        assert request.headers["X-API-Key"] == KEY and "Authorization" not in request.headers
        path = request.match_info["path"]
        body = await request.json()
        if path == "retrieve_future":
            self.polls.append(body)
            steps = self.script.get(body["request_id"], [])
            status, answer = steps.pop(0) if steps else (200, self.results[body["request_id"]])
            return web.json_response(answer, status=status)
        if path == "session_heartbeat":
            return web.json_response({"type": "session_heartbeat"})
        self.posts.append((path, body))
        if path in self.refuse:
            return web.json_response({"detail": f"{path} refused"}, status=400)
        if path == "create_session":
            return web.json_response({"session_id": "s1", "type": "create_session"})
        rid = f"{path}-{len(self.posts)}"
        self.results[rid] = self.result_of(path, body)
        return web.json_response({"request_id": rid})


@pytest.fixture
async def scripted() -> AsyncIterator[ScriptedTrainer]:
    trainer = ScriptedTrainer()
    app = web.Application()
    app.router.add_post("/api/v1/{path:.*}", trainer.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    trainer.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield trainer
    await runner.cleanup()


def _datum() -> tinker.Datum:
    return tinker.Datum(
        model_input=tinker.ModelInput.from_ints([1, 2, 3]),
        loss_fn_inputs={"target_tokens": [2, 3, 4], "weights": [0.0, 1.0, 1.0]},
    )


def _loss(data: list[Any], logprobs: list[Any]) -> tuple[Any, dict[str, float]]:
    loss = -sum((lp * 2.0).sum() for lp in logprobs)
    return loss, {"custom": 7.0}


async def _connect(scripted: ScriptedTrainer) -> FireworksTrainingSession:
    return await FireworksTrainingSession.connect(
        scripted.url, KEY, "accounts/fireworks/models/tiny", session_tag="t1"
    )


async def test_calls_go_in_call_order_with_fireworks_bodies(scripted: ScriptedTrainer) -> None:
    session = await _connect(scripted)
    custom = session.forward_backward_custom([_datum()], _loss)
    step = session.optim_step(tinker.AdamParams(learning_rate=1e-3))  # called before custom finished
    out, _ = await asyncio.gather(custom, step)
    assert out.metrics["custom"] == 7.0 and out.metrics["response_tokens"] == 3.0
    assert session.optimizer_steps == 1  # counted per optim_step when the trainer reports none
    ops = [(p, b.get("seq_id")) for p, b in scripted.posts]
    assert ops == [
        ("create_session", None),
        ("create_model", None),
        ("forward", 1),
        ("forward_backward", 2),  # the custom loss's backward keeps the seq_id taken at call time
        ("optim_step", 3),
    ]
    backward = scripted.posts[3][1]["forward_backward_input"]["data"][0]["loss_fn_inputs"]
    assert backward["weights"] == {"data": [2.0, 2.0, 2.0], "dtype": "float32", "shape": [3]}  # -d loss/d lp
    assert scripted.posts[1][1]["lora_config"] == {
        "rank": 0,
        "train_unembed": True,
        "train_mlp": True,
        "train_attn": True,
    }
    assert all(p["allow_metadata_only"] is True for p in scripted.polls)
    await session.close()
    assert scripted.posts[-1] == ("unload_model", {"model_id": "s1:train:0", "type": "unload_model"})


async def test_a_fireworks_snapshot_names_fireworks_delta_format(scripted: ScriptedTrainer) -> None:
    session = await _connect(scripted)
    base = await session.save_weights_for_sampler("step_1", "base")
    delta = await session.save_weights_for_sampler(
        "step_2", "delta", parent_snapshot_identity=base.snapshot_name
    )
    assert (base.snapshot_name, delta.snapshot_name) == ("step_1-t1", "step_2-t1")
    assert delta.checkpoint_type == "delta" and delta.parent_snapshot_identity == "step_1-t1"
    assert delta.delta_format == wire.FIREWORKS_DELTA_FORMAT == ("arc_v2", "alder32")
    assert incremental_metadata(delta, "step_1-t1") == {
        "previous_snapshot_identity": "step_1-t1",
        "compression_format": "arc_v2",
        "checksum_format": "alder32",
    }
    # Fireworks' trainer diffs against the snapshot it saved last: any other parent is a base.
    odd = await session.save_weights_for_sampler("step_3", "delta", parent_snapshot_identity="step_1-t1")
    assert odd.checkpoint_type == "base" and scripted.posts[-1][1]["checkpoint_type"] == "base"
    sent = [b for p, b in scripted.posts if p == "save_weights_for_sampler"]
    assert all(set(b) == {"model_id", "path", "type", "checkpoint_type", "seq_id"} for b in sent)
    await session.close()


def test_a_trainer_that_names_its_format_is_taken_at_its_word() -> None:
    answer = {
        "path": "x",
        "checkpoint_type": "delta",
        "compression_format": "zstd",
        "checksum_format": "sha256",
    }
    snap = wire.sampler_snapshot(answer, "s-t1", "delta", "p-t1", "save")
    assert snap.delta_format == HOTLOOP_DELTA_FORMAT and snap.parent_snapshot_identity == "p-t1"


async def test_futures_protocol_answers(scripted: ScriptedTrainer) -> None:
    session = await _connect(scripted)
    # try_again, then a metadata-only announcement, then the payload itself.
    scripted.script["forward-3"] = [
        (200, {"type": "try_again", "queue_state": "active"}),
        (200, {"status": "complete_metadata", "response_payload_size": 10}),
    ]
    out = await session.forward([_datum()])
    assert len(out.loss_fn_outputs) == 1
    assert [p["allow_metadata_only"] for p in scripted.polls[-3:]] == [True, True, False]
    # The operation's own failure, and an expired promise.
    scripted.script["forward_backward-4"] = [(200, {"error": "bad datum", "category": "user"})]
    with pytest.raises(FatalError, match=r"user error.*bad datum"):
        await session.forward_backward([_datum()], "cross_entropy")
    scripted.script["optim_step-5"] = [(410, {"detail": "gone"})]
    with pytest.raises(RetryableError, match="HTTP 410"):
        await session.optim_step(tinker.AdamParams())
    await session.close()


async def test_a_refused_submission_poisons_the_session(scripted: ScriptedTrainer) -> None:
    session = await _connect(scripted)
    scripted.refuse.add("optim_step")
    with pytest.raises(FatalError, match="optim_step refused"):
        await session.optim_step(tinker.AdamParams())
    with pytest.raises(FatalError, match="poisoned"):
        await session.forward([_datum()])
    await session.close()
    assert not any(p == "unload_model" for p, _ in scripted.posts)  # nothing knowable to unload


def test_custom_loss_datums_follow_fireworks_contract() -> None:
    odd = tinker.Datum(
        model_input=tinker.ModelInput.from_ints([1, 2]),
        loss_fn_inputs={"target_tokens": [2, 3], "advantages": [1.0, 1.0]},
    )
    with pytest.raises(Exception, match="target_tokens and weights only"):
        wire.check_custom_data([odd])


def test_dialect_auto_follows_the_control_plane() -> None:
    assert trainer_dialect("auto", {"name": "j", "hotloop": {"bucket": "/b"}}) == "tinker"
    assert trainer_dialect("auto", {"name": "j"}) == "fireworks"
    assert trainer_dialect("fireworks", {"hotloop": {}}) == "fireworks"
    assert trainer_dialect("tinker", {}) == "tinker"


async def test_restore_sends_fireworks_load_weights(scripted: ScriptedTrainer) -> None:
    session = await FireworksTrainingSession.connect(
        scripted.url, KEY, "accounts/fireworks/models/tiny", restore_path="state-000004-g1", optimizer_steps=4
    )
    # What Fireworks' load_state_with_optimizer sends (recorded from fireworks-ai 1.2.30).
    assert scripted.posts[2] == (
        "load_weights",
        {
            "model_id": "s1:train:0",
            "path": "state-000004-g1",
            "optimizer": True,
            "type": "load_weights",
            "seq_id": 1,
        },
    )
    assert session.optimizer_steps == 4
    await session.optim_step(tinker.AdamParams())
    assert session.optimizer_steps == 5 and scripted.posts[-1][1]["seq_id"] == 2
    assert session.default_delta_format == ("arc_v2", "alder32")
    await session.close()
