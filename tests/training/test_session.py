"""TrainingSession against a real embedded trainer process, through the official tinker client."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest
import tinker
import torch

from engine.backends.tinker import TrainingSession
from engine.errors import ConfigError, HotloopError
from engine.local.models import load_model, load_tokenizer
from engine.weights import snapshot

pytestmark = pytest.mark.slow
KEY = "tml-test-key"
ADAM = tinker.AdamParams(learning_rate=1e-2, beta1=0.9, beta2=0.999, eps=1e-8)


def nll(data: list[tinker.Datum], logprobs: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    loss = -torch.stack([lp.sum() for lp in logprobs]).sum()
    return loss, {"nll": float(loss.item())}


async def test_connect_builds_the_tinker_session_off_the_loop(
    trainer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tinker.lib import internal_client_holder

    built_on: list[int] = []
    original = internal_client_holder.InternalClientHolder.__init__

    def recording_init(self: Any, *args: Any, **kwargs: Any) -> None:
        built_on.append(threading.get_ident())  # the blocking part: 3 round trips in __init__
        original(self, *args, **kwargs)

    monkeypatch.setattr(internal_client_holder.InternalClientHolder, "__init__", recording_init)
    loop_thread = threading.get_ident()
    session = await TrainingSession.connect(
        trainer.url, KEY, "tiny", session_tag="cafe0001", tokenizer_loader=load_tokenizer
    )
    try:
        assert built_on and loop_thread not in built_on
        assert session.lora_rank == 0 and session.base_model == "tiny"
        assert session.tokenizer.eos_token_id == 2
        info = await session.trainer_info()
        assert info is not None and info["optimizer_steps"] == 0 and info["lora_rank"] == 0
    finally:
        await session.close()


async def test_calls_execute_in_submission_order_and_snapshots_chain(
    trainer: Any, make_datum: Callable[[list[int]], tinker.Datum]
) -> None:
    session = await TrainingSession.connect(trainer.url, KEY, "tiny", session_tag="cafe0002")
    try:
        data = [make_datum([1, 5, 9, 17, 33, 65, 2]), make_datum([1, 7, 11, 13, 2])]
        # Submitted without awaiting in between: the trainer must run them in this order, so the
        # "pre" snapshot holds the untouched weights and "post" the weights after one step.
        fb = session.forward_backward_custom(data, nll)
        pre = session.save_weights_for_sampler("pre", "base")
        opt = session.optim_step(ADAM)
        post = session.save_weights_for_sampler("post", "delta", session.qualify("pre"))
        fb_out, pre_snap, opt_out, post_snap = await asyncio.gather(fb, pre, opt, post)
        assert fb_out.metrics["loss:sum"] > 0 and "nll" in fb_out.metrics
        assert opt_out.metrics is not None and opt_out.metrics["optimizer_step:max"] == 1
        assert session.policy_version == 1

        # The embedded trainer keeps snapshots per run: the identity to load is <run>/<name>-<tag>.
        pre_id, post_id = f"{session.model_id}/pre-cafe0002", f"{session.model_id}/post-cafe0002"
        assert pre_snap.snapshot_name == pre_id and pre_snap.checkpoint_type == "base"
        assert post_snap.snapshot_name == post_id and post_snap.checkpoint_type == "delta"
        assert post_snap.parent_snapshot_identity == pre_id
        assert pre_snap.path == f"tinker://{session.model_id}/sampler_weights/pre-cafe0002"
        assert post_snap.size_bytes is not None and pre_snap.size_bytes is not None
        assert post_snap.size_bytes < pre_snap.size_bytes

        manifest = snapshot.read_manifest(trainer.bucket, post_id)
        assert manifest.kind == "delta" and manifest.parent == pre_id
        _, pre_state = snapshot.materialize(trainer.bucket, pre_id)
        _, post_state = snapshot.materialize(trainer.bucket, post_id)
        initial = load_model("tiny").state_dict()
        assert all(torch.equal(pre_state[k], initial[k]) for k in initial)
        assert any(not torch.equal(post_state[k], initial[k]) for k in initial)

        # The default delta parent is the last snapshot this model wrote.
        nxt = await session.save_weights_for_sampler("next", "delta")
        assert nxt.parent_snapshot_identity == post_id
    finally:
        await session.close()


async def test_explicit_parent_and_lora_sessions(
    trainer: Any, make_datum: Callable[[list[int]], tinker.Datum]
) -> None:
    data = [make_datum([1, 6, 12, 18, 24, 2])]
    full = await TrainingSession.connect(trainer.url, KEY, "tiny", session_tag="cafe0003")
    try:
        a = await full.save_weights_for_sampler("a", "base")
        await full.forward_backward_custom(data, nll)
        await full.optim_step(ADAM)
        await full.save_weights_for_sampler("b", "base")
        await full.forward_backward_custom(data, nll)
        await full.optim_step(ADAM)
        # Not the default parent (the last snapshot, b): the one named in the request.
        c = await full.save_weights_for_sampler("c", "delta", a.snapshot_name)
        assert c.parent_snapshot_identity == a.snapshot_name == f"{full.model_id}/a-cafe0003"
        assert snapshot.read_manifest(trainer.bucket, c.snapshot_name).parent == a.snapshot_name
        _, c_state = snapshot.materialize(trainer.bucket, c.snapshot_name)
        _, b_state = snapshot.materialize(trainer.bucket, f"{full.model_id}/b-cafe0003")
        assert any(not torch.equal(c_state[k], b_state[k]) for k in b_state)
    finally:
        await full.close()

    lora = await TrainingSession.connect(trainer.url, KEY, "tiny", lora_rank=4)
    try:
        assert lora.lora_rank == 4
        await lora.forward_backward_custom(data, nll)
        await lora.optim_step(ADAM)
        snap = await lora.save_weights_for_sampler("lora", "delta")
        assert snap.checkpoint_type == "base"  # LoRA snapshots are merged full weights
        assert snapshot.read_manifest(trainer.bucket, snap.snapshot_name).kind == "base"
    finally:
        await lora.close()


async def test_save_state_and_resume_with_optimizer(
    trainer: Any, make_datum: Callable[[list[int]], tinker.Datum]
) -> None:
    data = [make_datum([1, 4, 8, 15, 16, 23, 42, 2])]
    first = await TrainingSession.connect(trainer.url, KEY, "tiny")
    try:
        for _ in range(2):
            fb = first.forward_backward_custom(data, nll)
            opt = first.optim_step(ADAM)
            await fb
            await opt
        path = await first.save_state("resume-point")
        assert path.startswith("tinker://") and path.endswith("/weights/resume-point")
        expected = await first.forward(data, "cross_entropy")
    finally:
        await first.close()

    second = await TrainingSession.from_state(trainer.url, KEY, path, with_optimizer=True)
    try:
        assert second.resumed_steps == 2 and second.policy_version == 2
        assert second.session_tag != first.session_tag  # new session: new snapshot names
        got = await second.forward(data, "cross_entropy")
        assert got.loss_fn_outputs[0]["logprobs"].data == expected.loss_fn_outputs[0]["logprobs"].data
        await second.forward_backward_custom(data, nll)
        out = await second.optim_step(ADAM)
        assert out.metrics is not None and out.metrics["optimizer_step:max"] == 3
        assert second.policy_version == 3
        info = await second.trainer_info()
        assert info is not None and info["optimizer_steps"] == 3
    finally:
        await second.close()


async def test_clear_errors(trainer: Any) -> None:
    with pytest.raises(ConfigError, match="lora_rank"):
        await TrainingSession.connect(trainer.url, KEY, "tiny", lora_rank=-1)
    with pytest.raises(ConfigError, match="base_url"):
        await TrainingSession.connect("localhost:1", KEY, "tiny")
    with pytest.raises(ConfigError, match="state_path"):
        await TrainingSession.from_state(trainer.url, KEY, "/tmp/nope")
    with pytest.raises(ConfigError, match="session_tag"):
        await TrainingSession.connect(trainer.url, KEY, "tiny", session_tag="bad/tag")
    with pytest.raises(HotloopError, match="tiny-nope"):
        await TrainingSession.connect(trainer.url, KEY, "tiny-nope", timeout_s=60)
    session = await TrainingSession.connect(trainer.url, KEY, "tiny")
    try:
        with pytest.raises(ConfigError, match="checkpoint_type"):
            session.save_weights_for_sampler("x", "merged")  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="name"):
            session.save_weights_for_sampler("bad name")
    finally:
        await session.close()
