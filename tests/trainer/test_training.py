"""The official tinker client (sync and async) against the in-process trainer on the tiny model."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pytest
import tinker
import torch
from safetensors.torch import load_file
from tinker import types

from engine.local.trainer import ServerThread, serve_in_thread

from .helpers import EXAMPLE, datum, logprobs_of


def _service_client(trainer: ServerThread) -> tinker.ServiceClient:
    return tinker.ServiceClient(base_url=trainer.url, api_key="tml-test")


def _lr(rank: int) -> float:
    return 3e-3 if rank else 1e-2  # LoRA (alpha 32) overshoots at the full-parameter rate


def _create(svc: tinker.ServiceClient, rank: int) -> tinker.TrainingClient:
    return svc.create_lora_training_client(base_model="tiny", rank=rank).result()


@pytest.mark.parametrize("rank", [8, 0], ids=["lora", "full"])
def test_loss_falls_sync(trainer: ServerThread, rank: int) -> None:
    svc = _service_client(trainer)
    tc = _create(svc, rank)
    info = tc.get_info()
    assert info.model_data.tokenizer_id and info.is_lora == (rank > 0)
    tok = tc.get_tokenizer()  # the tokenizer id must load locally
    assert tok.eos_token_id == 2
    losses = []
    for _ in range(6):
        fb = tc.forward_backward([datum(EXAMPLE)], "cross_entropy")
        op = tc.optim_step(
            types.AdamParams(learning_rate=_lr(rank))
        )  # pipelined: submitted before fb resolves
        out = fb.result()
        metrics = op.result().metrics or {}
        losses.append(out.metrics["loss:sum"])
        assert all(":" in k for k in [*out.metrics, *metrics])
    assert losses[-1] < losses[0] * 0.85, losses
    assert metrics["optimizer_step:max"] == 6.0
    svc.close("success").result()


@pytest.mark.parametrize("rank", [8, 0], ids=["lora", "full"])
async def test_loss_falls_async(trainer: ServerThread, rank: int) -> None:
    svc = _service_client(trainer)
    tc = await svc.create_lora_training_client(base_model="tiny", rank=rank)
    first = await tc.forward([datum(EXAMPLE)], "cross_entropy")
    for _ in range(5):
        fb = tc.forward_backward([datum(EXAMPLE)], "cross_entropy")
        op = tc.optim_step(types.AdamParams(learning_rate=_lr(rank), grad_clip_norm=1.0, weight_decay=0.01))
        await fb
        await op
    after = await tc.forward([datum(EXAMPLE)], "cross_entropy")
    assert logprobs_of(after).sum() > logprobs_of(first).sum() + 1.0
    sc = await tc.save_weights_and_get_sampling_client()
    res = await sc.sample(
        types.ModelInput.from_ints([5, 6, 7]), 2, types.SamplingParams(max_tokens=5, seed=1)
    )
    assert len(res.sequences) == 2 and all(s.logprobs is not None for s in res.sequences)
    await svc.close("success")


def test_custom_loss_is_linearized(trainer: ServerThread) -> None:
    svc = _service_client(trainer)
    tc = _create(svc, 4)

    def loss_fn(data: list[types.Datum], lps: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        loss = -(lps[0] * torch.linspace(-1.0, 1.0, lps[0].shape[0])).sum()
        return loss, {"custom:sum": float(loss.detach())}

    out = tc.forward_backward_custom([datum(EXAMPLE)], loss_fn).result()
    assert {"custom:sum", "loss:sum", "surrogate_loss:sum"} <= set(out.metrics)
    # The surrogate is sum(-w * logp) with w = -dC/dlogp = linspace: the same value as C here.
    assert out.metrics["surrogate_loss:sum"] == pytest.approx(out.metrics["loss:sum"], rel=1e-4)


def test_save_then_load_with_optimizer_is_exact(trainer: ServerThread) -> None:
    svc = _service_client(trainer)
    tc = _create(svc, 0)
    for _ in range(2):
        tc.forward_backward([datum(EXAMPLE)], "cross_entropy")
        tc.optim_step(types.AdamParams(learning_rate=1e-2)).result()
    path = tc.save_state("exact").result().path
    original = trainer.service.models[tc.model_id].require_state()

    # On disk: every trainable parameter's moments, equal to the live optimizer's.
    run_id = tc.model_id
    on_disk = load_file(
        str(trainer.service.state_dir / run_id / "weights" / "exact" / "optimizer.safetensors")
    )
    for name, p in original.trainable().items():
        live = original.optimizer.state[p] if original.optimizer else {}
        assert torch.equal(on_disk[f"{name}.exp_avg"], live["exp_avg"]), name
        assert torch.equal(on_disk[f"{name}.exp_avg_sq"], live["exp_avg_sq"]), name
        assert float(on_disk[f"{name}.step"]) == float(live["step"]) == 2.0

    tc2 = svc.create_training_client_from_state_with_optimizer(path).result()
    restored = trainer.service.models[tc2.model_id].require_state()
    assert restored.optimizer_steps == 2
    weights_only = svc.create_training_client_from_state(path).result()
    fresh = trainer.service.models[weights_only.model_id].require_state()
    assert fresh.optimizer is None or not fresh.optimizer.state

    # One identical step on both: same weights and moments give the same result, bit for bit.
    outs = []
    for client in (tc, tc2):
        client.forward_backward([datum(EXAMPLE)], "cross_entropy")
        metrics = client.optim_step(types.AdamParams(learning_rate=1e-2)).result().metrics or {}
        assert metrics["optimizer_step:max"] == 3.0
        outs.append(logprobs_of(client.forward([datum(EXAMPLE)], "cross_entropy").result()))
    np.testing.assert_array_equal(outs[0], outs[1])
    # Without the moments the same step lands elsewhere: the check above is not vacuous.
    weights_only.forward_backward([datum(EXAMPLE)], "cross_entropy")
    weights_only.optim_step(types.AdamParams(learning_rate=1e-2)).result()
    other = logprobs_of(weights_only.forward([datum(EXAMPLE)], "cross_entropy").result())
    assert np.abs(other - outs[0]).max() > 1e-4
    svc.close("success").result()


def test_a_restarted_trainer_loads_an_earlier_run(trainer: ServerThread, tmp_path: Path) -> None:
    """Checkpoints live only on disk: a second trainer on the same state dir resumes the run."""
    svc = _service_client(trainer)
    tc = _create(svc, 4)
    tc.forward_backward([datum(EXAMPLE)], "cross_entropy")
    tc.optim_step(types.AdamParams(learning_rate=1e-2)).result()
    path = tc.save_state("carry-over").result().path
    want = logprobs_of(tc.forward([datum(EXAMPLE)], "cross_entropy").result())
    svc.close("success").result()
    config = replace(trainer.service.config, state_dir=trainer.service.state_dir, bucket=tmp_path / "bucket")
    with serve_in_thread(config) as second:
        svc2 = _service_client(second)
        tc2 = svc2.create_training_client_from_state_with_optimizer(path).result()
        assert tc2.get_info().lora_rank == 4
        assert second.service.hotloop_model(tc2.model_id)["optimizer_steps"] == 1
        got = logprobs_of(tc2.forward([datum(EXAMPLE)], "cross_entropy").result())
        np.testing.assert_allclose(got, want, atol=1e-6)
        svc2.close("success").result()


def test_parallel_chunks_arrive_out_of_order_and_are_merged(trainer: ServerThread) -> None:
    """Over 1024 datums the client sends two chunks concurrently, the later seq_id first: the server
    holds it until the first arrives, runs them in order, and the client merges the outputs."""
    svc = _service_client(trainer)
    tc = _create(svc, 0)
    data = [datum([5 + i % 7, 6, 7]) for i in range(1030)]
    out = tc.forward(data, "cross_entropy").result()
    assert len(out.loss_fn_outputs) == 1030
    single = tc.forward([data[1029]], "cross_entropy").result()
    np.testing.assert_allclose(
        logprobs_of(single), out.loss_fn_outputs[1029]["logprobs"].to_numpy(), atol=1e-5
    )
    model_id = tc.model_id
    svc.close("success").result()
    # Finishing the session releases its models (memory, threads).
    with httpx.Client(base_url=trainer.url) as http:
        for _ in range(100):
            r = http.get(f"/api/v1/hotloop/models/{model_id}")
            if r.status_code == 404:
                break
            time.sleep(0.1)
        assert r.status_code == 404 and "unknown model_id" in r.json()["detail"]


def test_rest_client_runs_and_checkpoints(trainer: ServerThread) -> None:
    svc = _service_client(trainer)
    tc = _create(svc, 2)
    first = tc.save_state("rest-a").result().path
    tc.save_state("rest-b").result()
    rest = tinker.RestClient(base_url=trainer.url, api_key="tml-test")
    run = rest.get_training_run(tc.model_id).result()
    assert run.training_run_id == tc.model_id and run.is_lora and run.lora_rank == 2
    listed = rest.list_checkpoints(tc.model_id).result().checkpoints
    assert [c.checkpoint_id for c in listed] == ["weights/rest-a", "weights/rest-b"]
    assert listed[0].tinker_path == first and listed[0].checkpoint_type == "training"
    rest.delete_checkpoint_from_tinker_path(first).result()
    assert [c.checkpoint_id for c in rest.list_checkpoints(tc.model_id).result().checkpoints] == [
        "weights/rest-b"
    ]
    caps = rest.get_server_capabilities().result()
    assert caps.supported_models[0].model_name == "tiny"
    svc.close("success").result()


@pytest.mark.filterwarnings("ignore:DEPRECATED:FutureWarning")
def test_legacy_load_state_into_an_existing_model(trainer: ServerThread) -> None:
    svc = _service_client(trainer)
    tc = _create(svc, 0)
    path = tc.save_state("before-training").result().path
    want = logprobs_of(tc.forward([datum(EXAMPLE)], "cross_entropy").result())
    tc.forward_backward([datum(EXAMPLE)], "cross_entropy")
    tc.optim_step(types.AdamParams(learning_rate=1e-2)).result()
    assert np.abs(logprobs_of(tc.forward([datum(EXAMPLE)], "cross_entropy").result()) - want).max() > 1e-3
    tc.load_state(path).result()  # seq-ordered load into the same model (weights only)
    np.testing.assert_array_equal(logprobs_of(tc.forward([datum(EXAMPLE)], "cross_entropy").result()), want)
    with pytest.raises(tinker.RequestFailedError, match="not found"):
        tc.load_state(path.replace("before-training", "never-saved")).result()
    svc.close("success").result()
