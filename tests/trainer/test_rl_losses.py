"""dro, gspo and stable_reinforce against reference computations written out in torch, one datum and
one token at a time, on fixed inputs; then stable_reinforce through the service, where it must use
what the sampler recorded (record_stability_info), not the client's logprobs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tinker
import torch
from tinker import types

from engine.local.trainer import ServerThread
from engine.local.trainer.config import TrainerBadRequest
from engine.local.trainer.losses import dro, gspo, stable_reinforce
from engine.local.trainer.provenance import RECORDED_LOGPROBS, SAMPLED_MASK

# Two datums, right-padded to 5 positions (the padding carries zeros, as the trainer pads).
LOGP = [[-1.2, -0.4, -2.0, -0.7, 0.0], [-0.3, -1.9, -0.8, 0.0, 0.0]]
SAMPLER = [[0.0, -0.6, -1.5, -0.9, 0.0], [0.0, -1.0, -1.2, 0.0, 0.0]]
ADV = [[0.0, 1.5, 1.5, 1.5, 0.0], [0.0, -0.5, -0.5, 0.0, 0.0]]
LENGTHS = [4, 3]


def _leaf() -> torch.Tensor:
    return torch.tensor(LOGP, dtype=torch.float64, requires_grad=True)


def _grad_of(fn: object) -> tuple[float, list[list[float]]]:
    logp = _leaf()
    loss = fn(logp)  # type: ignore[operator]
    loss.backward()
    assert logp.grad is not None
    return float(loss.detach()), logp.grad.tolist()


def _t(values: list[list[float]]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def _close(a: tuple[float, list[list[float]]], b: tuple[float, list[list[float]]]) -> None:
    assert a[0] == pytest.approx(b[0], rel=1e-9, abs=1e-12)
    np.testing.assert_allclose(a[1], b[1], rtol=1e-9, atol=1e-12)


def test_dro_matches_the_documented_objective() -> None:
    beta = 0.3

    def reference(logp: torch.Tensor) -> torch.Tensor:
        total = torch.zeros((), dtype=torch.float64)
        for b in range(2):
            for t in range(LENGTHS[b]):
                lp, q, a = logp[b, t], SAMPLER[b][t], ADV[b][t]
                total = total - (lp * a - 0.5 * beta * (lp - q) ** 2)
        return total

    inputs = {"logprobs": _t(SAMPLER), "advantages": _t(ADV)}
    got = _grad_of(lambda lp: dro(lp, inputs, {"beta": beta})[0])
    _close(got, _grad_of(reference))
    default = _grad_of(lambda lp: dro(lp, inputs, {})[0])
    assert default[0] != pytest.approx(got[0])  # beta defaults to 0.1, not 0.3
    with pytest.raises(TrainerBadRequest, match="beta"):
        dro(_leaf(), inputs, {"beta": -1.0})


@pytest.mark.parametrize("explicit_mask", [True, False])
def test_gspo_matches_the_sequence_ratio_reference(explicit_mask: bool) -> None:
    low, high = 0.9, 1.1
    mask = [[0.0, 1.0, 1.0, 1.0, 0.0], [0.0, 1.0, 1.0, 0.0, 0.0]]

    def reference(logp: torch.Tensor) -> torch.Tensor:
        total = torch.zeros((), dtype=torch.float64)
        for b in range(2):
            ts = [t for t in range(LENGTHS[b]) if mask[b][t]]
            # s = geometric mean of the token ratios over the masked tokens (a constant)...
            s = math.exp(sum(float(logp[b, t].detach()) - SAMPLER[b][t] for t in ts) / len(ts))
            for t in range(LENGTHS[b]):
                # ...carried by each token with the gradient of its own logprob.
                ratio = s * torch.exp(logp[b, t] - logp[b, t].detach())
                clipped = torch.clamp(ratio, low, high)
                total = total - torch.minimum(ratio * ADV[b][t], clipped * ADV[b][t])
        return total

    inputs = {"logprobs": _t(SAMPLER), "advantages": _t(ADV)}
    if explicit_mask:  # the default mask (nonzero advantages) is the same here
        inputs["sequence_ratio_mask"] = _t(mask)
    config = {"clip_low_threshold": low, "clip_high_threshold": high}
    got = _grad_of(lambda lp: gspo(lp, inputs, config)[0])
    _close(got, _grad_of(reference))
    _, metrics = gspo(_leaf(), inputs, config)
    # Datum 0's ratio exp(mean(0.2, -0.5, 0.2)) ~ 0.97 is inside the band; datum 1's exp(-0.25) is not.
    assert metrics["clip_fraction:mean"] == pytest.approx(0.5)


def test_stable_reinforce_matches_the_truncated_is_reference() -> None:
    cap, kl = 1.3, 0.2
    recorded = [[0.0, -0.6, -1.5, -0.9, 0.0], [0.0, -2.5, -1.2, 0.0, 0.0]]
    sampled = [[0.0, 1.0, 1.0, 1.0, 0.0], [0.0, 1.0, 1.0, 0.0, 0.0]]

    def reference(logp: torch.Tensor) -> torch.Tensor:
        total = torch.zeros((), dtype=torch.float64)
        for b in range(2):
            for t in range(LENGTHS[b]):
                if not sampled[b][t]:
                    continue
                r = torch.exp(logp[b, t] - recorded[b][t])
                weight = min(float(r.detach()), cap)
                total = total - weight * ADV[b][t] * logp[b, t] + kl * (r - 1 - torch.log(r))
        return total

    inputs = {
        "advantages": _t(ADV),
        # The client's logprobs are not what the loss reads: make them absurd.
        "logprobs": torch.full((2, 5), -50.0, dtype=torch.float64),
        RECORDED_LOGPROBS: _t(recorded),
        SAMPLED_MASK: _t(sampled),
    }
    config = {"kl_coeff": kl, "ratio_cap": cap}
    got = _grad_of(lambda lp: stable_reinforce(lp, inputs, config)[0])
    _close(got, _grad_of(reference))
    _, metrics = stable_reinforce(_leaf(), inputs, config)
    # Datum 1's two ratios, exp(0.6) and exp(0.4), are above the cap; datum 0's three are not.
    assert metrics["truncated_fraction:mean"] == pytest.approx(2 / 5)
    with pytest.raises(TrainerBadRequest, match="unknown key"):
        stable_reinforce(_leaf(), inputs, {"klcoef": 0.1})


def _rl_datum(prompt: list[int], seq: types.SampledSequence, adv: float, spans: bool) -> types.Datum:
    tokens = list(seq.tokens)
    ob = len(prompt) - 1
    datum = types.Datum(
        model_input=types.ModelInput.from_ints(prompt + tokens[:-1]),
        loss_fn_inputs={
            "target_tokens": [0] * ob + tokens,
            "logprobs": [-50.0] * (ob + len(tokens)),  # ignored by stable_reinforce
            "advantages": [0.0] * ob + [adv] * len(tokens),
        },
    )
    if not spans:
        return datum
    sid = seq.sequence_id
    return datum.with_provenance(
        model_input=[
            types.PromptProvenanceSpan(sequence_id=sid, length=len(prompt)),
            types.SampledProvenanceSpan(sequence_id=sid, length=len(tokens) - 1),
        ],
        loss_fn_inputs=[
            types.PromptProvenanceSpan(sequence_id=sid, offset=1, length=len(prompt) - 1),
            types.SampledProvenanceSpan(sequence_id=sid, length=len(tokens)),
        ],
    )


def test_stable_reinforce_trains_on_what_the_sampler_recorded(trainer: ServerThread) -> None:
    svc = tinker.ServiceClient(base_url=trainer.url, api_key="tml-test")
    try:
        tc = svc.create_lora_training_client(base_model="tiny", rank=4).result()
        recording = tc.save_weights_and_get_sampling_client(record_stability_info=True).result()
        prompt = [5, 6, 7, 8]
        params = types.SamplingParams(max_tokens=6, stop=[], seed=11)
        res = recording.sample(types.ModelInput.from_ints(prompt), 2, params).result()
        seqs = list(res.sequences)
        data = [_rl_datum(prompt, s, adv, True) for s, adv in zip(seqs, [1.0, -1.0], strict=True)]
        out = tc.forward_backward(data, "stable_reinforce", {"kl_coeff": 0.1}).result()

        # The reference on the trainer's own logprobs and the sampler's recorded ones.
        want = 0.0
        for datum, seq, adv, rec in zip(data, seqs, [1.0, -1.0], out.loss_fn_outputs, strict=True):
            lp = np.asarray(rec["logprobs"].tolist())[len(prompt) - 1 :]
            q = np.asarray(seq.logprobs, dtype=np.float64)
            r = np.exp(lp - q)
            want += float(np.sum(-np.minimum(r, 2.0) * adv * lp + 0.1 * (r - 1 - np.log(r))))
            assert datum.loss_fn_inputs["logprobs"].tolist()[-1] == -50.0
        assert out.metrics["loss:sum"] == pytest.approx(want, rel=1e-4, abs=1e-4)
        # Same weights that sampled: the recorded and the trainer's logprobs agree, weights are ~1.
        assert out.metrics["importance_weight:mean"] == pytest.approx(1.0, abs=1e-3)
        tc.optim_step(types.AdamParams(learning_rate=1e-3)).result()

        # What the loss refuses, each a 400 naming the cause. (Each on a fresh client: a request
        # refused at submission leaves its seq_id unused, which holds that client's later requests.)
        plain = tc.save_weights_and_get_sampling_client().result()
        unrecorded = plain.sample(types.ModelInput.from_ints(prompt), 1, params).result().sequences[0]
        bad = _rl_datum(prompt, seqs[0], 1.0, True)
        bad.loss_fn_inputs["advantages"] = types.TensorData.from_numpy(
            np.full(len(prompt) - 1 + len(seqs[0].tokens), 1.0, np.float32)
        )
        refused = [
            (_rl_datum(prompt, seqs[0], 1.0, False), "needs provenance"),
            (_rl_datum(prompt, unrecorded, 1.0, True), "no stability record"),
            (bad, "nonzero advantages only on sampled tokens"),
        ]
        for datum, why in refused:
            fresh = svc.create_lora_training_client(base_model="tiny", rank=4).result()
            with pytest.raises(tinker.BadRequestError, match=why):
                fresh.forward_backward([datum], "stable_reinforce").result()
    finally:
        svc.close("success").result()


def test_stability_records_are_bounded_by_tokens_and_expire() -> None:
    from engine.local.trainer.provenance import StabilityRecords

    records = StabilityRecords(max_tokens=10, ttl_s=60.0)
    four = np.arange(4)
    for sid in ("a", "b", "c"):
        records.put(sid, "session", [1, 2], four, four.astype(np.float32))
    assert records.get("a") is None and len(records) == 2  # 12 tokens > 10: the oldest went
    got = records.get("b")
    assert got is not None and got.prompt_length == 2 and got.tokens.tolist() == [0, 1, 2, 3]
    assert records.get("c", now=got.last_used + 61.0) is None  # a day (here a minute) unused
    records.drop_session("session")
    assert len(records) == 0
