"""The built-in losses as pure functions, and 2-D target tokens through a model's forward pass."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from engine.local.trainer.config import TrainerBadRequest
from engine.local.trainer.losses import cispo, cross_entropy, get_loss, importance_sampling, ppo
from engine.local.trainer.models import LoraSpec, ModelState, build_module
from engine.local.trainer.proto import DatumIn


def _leaf(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, requires_grad=True)


def test_cross_entropy_is_a_weighted_sum() -> None:
    logp = _leaf([-1.0, -2.0, -3.0])
    loss, metrics = cross_entropy(logp, {"weights": torch.tensor([1.0, 0.0, 2.0])}, {})
    loss.backward()
    assert float(loss.detach()) == pytest.approx(7.0) and metrics == {"loss:sum": pytest.approx(7.0)}
    assert logp.grad is not None and logp.grad.tolist() == [-1.0, 0.0, -2.0]


def test_importance_sampling_at_ratio_one() -> None:
    logp = _leaf([-1.0, -2.0])
    inputs = {"logprobs": torch.tensor([-1.0, -2.0]), "advantages": torch.tensor([0.5, -1.0])}
    loss, _ = importance_sampling(logp, inputs, {})
    loss.backward()
    assert float(loss.detach()) == pytest.approx(0.5)
    assert logp.grad is not None and logp.grad.tolist() == pytest.approx([-0.5, 1.0])


def test_ppo_clips_with_the_configured_thresholds() -> None:
    old = torch.tensor([-1.0, -1.0])
    logp = _leaf([-1.0 + float(np.log(1.5)), -1.0 + float(np.log(1.1))])  # ratios 1.5 and 1.1
    inputs = {"logprobs": old, "advantages": torch.tensor([1.0, 1.0])}
    loss, metrics = ppo(logp, inputs, {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2})
    loss.backward()
    assert float(loss.detach()) == pytest.approx(-(1.2 + 1.1))
    assert logp.grad is not None and logp.grad.tolist() == pytest.approx([0.0, -1.1])  # clipped: no gradient
    assert metrics["clip_fraction:mean"] == pytest.approx(0.5)
    with pytest.raises(TrainerBadRequest, match="clip_low_threshold"):
        ppo(logp, inputs, {"clip_low_threshold": 1.5, "clip_high_threshold": 1.2})


def test_cispo_weights_logprobs_by_the_detached_clipped_ratio() -> None:
    logp = _leaf([-1.0 + float(np.log(2.0))])  # ratio 2 -> clipped to 1.2
    inputs = {"logprobs": torch.tensor([-1.0]), "advantages": torch.tensor([3.0])}
    loss, _ = cispo(logp, inputs, {"clip_high_threshold": 1.2})
    loss.backward()
    assert logp.grad is not None and logp.grad.tolist() == pytest.approx([-1.2 * 3.0])
    with pytest.raises(TrainerBadRequest, match="'ppo_v9' is not supported"):
        get_loss("ppo_v9")
    with pytest.raises(TrainerBadRequest, match="needs loss_fn_inputs"):
        cispo(logp, {"logprobs": torch.tensor([-1.0])}, {})


def test_two_dimensional_targets_and_ragged_batches(tiny_model_dir: Path) -> None:
    from engine.local.models import load_model

    base = load_model("tiny")
    state = ModelState("m", "tiny", LoraSpec(0), build_module(base, LoraSpec(0)), 1024, 1024)
    tokens = np.array([5, 6, 7, 8], np.int64)
    targets = np.array([[6, 9], [7, 10], [8, 11], [9, 12]], np.int64)
    short = DatumIn(np.array([5, 6], np.int64), {"target_tokens": np.array([6, 7], np.int64)})
    outs, metrics = state.forward_backward(
        [DatumIn(tokens, {"target_tokens": targets})], "cross_entropy", {}, forward_only=True
    )
    assert outs[0]["logprobs"].shape == (4, 2) and metrics["loss:sum"] > 0
    with torch.no_grad():
        ref = torch.log_softmax(base(input_ids=torch.from_numpy(tokens)[None]).logits[0], -1)
    np.testing.assert_allclose(outs[0]["logprobs"], ref.gather(-1, torch.tensor(targets)).numpy(), atol=1e-5)
    # Ragged batch (right-padded, no mask needed for a causal model) gives the unpadded answers.
    single, _ = state.forward_backward([short], "cross_entropy", {}, forward_only=True)
    flat = DatumIn(tokens, {"target_tokens": targets[:, 0].copy()})
    both, _ = state.forward_backward([flat, short], "cross_entropy", {}, forward_only=True)
    np.testing.assert_allclose(both[1]["logprobs"], single[0]["logprobs"], atol=1e-5)
    np.testing.assert_allclose(both[0]["logprobs"], outs[0]["logprobs"][:, 0], atol=1e-5)


def test_adam_params_clip_norm_and_decoupled_weight_decay(tiny_model_dir: Path) -> None:
    from engine.local.models import load_model
    from engine.local.trainer.models import AdamHyper

    spec = LoraSpec(0)
    state = ModelState("m", "tiny", spec, build_module(load_model("tiny"), spec), 1024, 1024)
    data = [DatumIn(np.array([5, 6, 7], np.int64), {"target_tokens": np.array([6, 7, 8], np.int64)})]
    state.forward_backward(data, "cross_entropy", {}, forward_only=False)
    norm_before = torch.sqrt(sum((p.grad**2).sum() for p in state.trainable().values() if p.grad is not None))
    norm_layer = state.module.model.norm.weight
    before = norm_layer.detach().clone()
    metrics = state.optim_step(
        AdamHyper(learning_rate=1e-2, beta1=0.9, grad_clip_norm=1e-3, weight_decay=0.5)
    )
    assert metrics["grad_norm:mean"] == pytest.approx(
        float(norm_before), rel=1e-4
    )  # reported before clipping
    assert state.optimizer is not None
    moments = [state.optimizer.state[p]["exp_avg"] for p in state.trainable().values()]
    clipped = torch.sqrt(sum((m**2).sum() for m in moments))
    assert float(clipped) == pytest.approx((1 - 0.9) * 1e-3, rel=1e-3)  # exp_avg = (1 - beta1) * clipped grad
    # Decoupled decay: p <- p * (1 - lr * wd) on top of the Adam update (which is at most ~lr per element).
    change = (norm_layer.detach() - before * (1 - 1e-2 * 0.5)).abs().max()
    assert float(change) <= 1e-2 * 1.01
    assert metrics["optimizer_step:max"] == 1.0


def test_microbatches_keep_groups_within_the_budget() -> None:
    from engine.local.trainer.microbatch import activation_bytes, merge_metrics, microbatches

    one = activation_bytes(1, 100, 4, 4, 1024)
    assert microbatches([100] * 5, 2 * one, 4, 4, 1024) == [range(0, 2), range(2, 4), range(4, 5)]
    assert microbatches([1000, 10], one, 4, 4, 1024) == [range(0, 1), range(1, 2)]  # alone if too big
    assert microbatches([], one, 4, 4, 1024) == []
    merged = merge_metrics(
        [
            (1, {"loss:sum": 1.0, "f:mean": 0.0, "m:max": 2.0}),
            (3, {"loss:sum": 2.0, "f:mean": 1.0, "m:max": 1.0}),
        ]
    )
    assert merged == {"loss:sum": 3.0, "f:mean": 0.75, "m:max": 2.0}


@pytest.mark.parametrize("loss_fn", ["cross_entropy", "gspo"])
def test_micro_batched_forward_backward_is_exact(tiny_model_dir: Path, loss_fn: str) -> None:
    """A request split into one datum per micro-batch gives the loss and gradients of one batch."""
    from engine.local.models import load_model

    base = load_model("tiny")
    rng = np.random.default_rng(0)

    def datum(n: int) -> DatumIn:
        inputs = {
            "target_tokens": rng.integers(4, 1000, n).astype(np.int64),
            "logprobs": -rng.random(n).astype(np.float32),
            "advantages": rng.normal(size=n).astype(np.float32),
            "weights": np.ones(n, np.float32),
        }
        return DatumIn(rng.integers(4, 1000, n).astype(np.int64), inputs)

    data = [datum(n) for n in (9, 5, 12)]
    grads, results = [], []
    for budget in (1 << 30, 1):  # everything together; one datum at a time
        spec = LoraSpec(0)
        state = ModelState("m", "tiny", spec, build_module(base, spec), 1024, 1024, microbatch_bytes=budget)
        outs, metrics = state.forward_backward(data, loss_fn, {}, forward_only=False)
        results.append((outs, metrics))
        grads.append({k: p.grad.clone() for k, p in state.trainable().items() if p.grad is not None})
    (outs_a, m_a), (outs_b, m_b) = results
    assert m_a["loss:sum"] == pytest.approx(m_b["loss:sum"], rel=1e-5)
    for a, b in zip(outs_a, outs_b, strict=True):
        np.testing.assert_allclose(a["logprobs"], b["logprobs"], atol=1e-5)
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k], rtol=1e-3, atol=1e-5)
