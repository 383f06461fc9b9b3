"""Built-in losses: pure torch functions of target logprobs and the request's loss inputs.

Shapes: ``logp`` is ``[B, T]`` (or ``[B, T, K]`` for 2-D target tokens), every input has the same
shape, and padding positions carry zero weights/advantages so they contribute nothing. Every loss
is a *sum* over tokens (Tinker's ``loss:sum`` semantics: the client linearizes custom losses as
``sum(-weights * logprobs)``). Metric keys all carry a ``:reduction`` suffix, which the client's
chunk merger requires.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from engine.local.trainer.config import TrainerBadRequest
from engine.local.trainer.provenance import RECORDED_LOGPROBS, SAMPLED_MASK

Inputs = Mapping[str, torch.Tensor]
Config = Mapping[str, float | str]
LossResult = tuple[torch.Tensor, dict[str, float]]

DEFAULT_CLIP_LOW = 0.8
DEFAULT_CLIP_HIGH = 1.2


def _require(inputs: Inputs, loss: str, *names: str) -> None:
    missing = [n for n in names if n not in inputs]
    if missing:
        raise TrainerBadRequest(f"loss {loss!r} needs loss_fn_inputs {missing}")


def _number(config: Config, key: str, default: float) -> float:
    value = config.get(key, default)
    if isinstance(value, str):
        raise TrainerBadRequest(f"loss_fn_config[{key!r}] must be a number, got {value!r}")
    return float(value)


def cross_entropy(logp: torch.Tensor, inputs: Inputs, config: Config) -> LossResult:
    weights = inputs.get("weights")
    if weights is None:
        weights = torch.ones_like(logp)
    loss = -(weights * logp).sum()
    return loss, {"loss:sum": float(loss.detach())}


def _ratio(logp: torch.Tensor, inputs: Inputs) -> torch.Tensor:
    return torch.exp(logp - inputs["logprobs"])


def importance_sampling(logp: torch.Tensor, inputs: Inputs, config: Config) -> LossResult:
    _require(inputs, "importance_sampling", "logprobs", "advantages")
    ratio = _ratio(logp, inputs)
    loss = -(ratio * inputs["advantages"]).sum()
    return loss, {"loss:sum": float(loss.detach())}


def _clip_bounds(inputs: Inputs, config: Config) -> tuple[torch.Tensor | float, torch.Tensor | float]:
    low: torch.Tensor | float = _number(config, "clip_low_threshold", DEFAULT_CLIP_LOW)
    high: torch.Tensor | float = _number(config, "clip_high_threshold", DEFAULT_CLIP_HIGH)
    # Per-token thresholds, when sent as loss inputs, override the config.
    low = inputs.get("clip_low_threshold", low)
    high = inputs.get("clip_high_threshold", high)
    if isinstance(low, float) and isinstance(high, float) and not 0 <= low <= high:
        raise TrainerBadRequest(f"need 0 <= clip_low_threshold <= clip_high_threshold, got {low}, {high}")
    return low, high


def _clamp(x: torch.Tensor, low: torch.Tensor | float, high: torch.Tensor | float) -> torch.Tensor:
    lo = low if isinstance(low, torch.Tensor) else torch.full_like(x, low)
    hi = high if isinstance(high, torch.Tensor) else torch.full_like(x, high)
    return torch.minimum(torch.maximum(x, lo), hi)


def ppo(logp: torch.Tensor, inputs: Inputs, config: Config) -> LossResult:
    _require(inputs, "ppo", "logprobs", "advantages")
    low, high = _clip_bounds(inputs, config)
    adv = inputs["advantages"]
    ratio = _ratio(logp, inputs)
    clipped = _clamp(ratio, low, high)
    objective = torch.minimum(ratio * adv, clipped * adv)
    loss = -objective.sum()
    active = adv != 0
    n = max(int(active.sum()), 1)
    clip_frac = float(((clipped != ratio) & active).sum()) / n
    return loss, {"loss:sum": float(loss.detach()), "clip_fraction:mean": clip_frac}


def cispo(logp: torch.Tensor, inputs: Inputs, config: Config) -> LossResult:
    _require(inputs, "cispo", "logprobs", "advantages")
    low, high = _clip_bounds(inputs, config)
    weight = _clamp(_ratio(logp, inputs), low, high).detach()
    loss = -(weight * logp * inputs["advantages"]).sum()
    return loss, {"loss:sum": float(loss.detach())}


DEFAULT_DRO_BETA = 0.1


def dro(logp: torch.Tensor, inputs: Inputs, config: Config) -> LossResult:
    """Tinker's documented DRO: ``-sum(logp * A - beta/2 * (logp - q)^2)`` over every position,
    with ``q`` the sampler's logprobs (``loss_fn_config['beta']``, default 0.1)."""
    _require(inputs, "dro", "logprobs", "advantages")
    beta = _number(config, "beta", DEFAULT_DRO_BETA)
    if beta < 0:
        raise TrainerBadRequest(f"loss_fn_config['beta'] must be >= 0, got {beta}")
    quadratic = (logp - inputs["logprobs"]) ** 2
    loss = -(logp * inputs["advantages"] - 0.5 * beta * quadratic).sum()
    return loss, {"loss:sum": float(loss.detach())}


def gspo(logp: torch.Tensor, inputs: Inputs, config: Config) -> LossResult:
    """GSPO-token (Tinker's variant): each datum's sequence ratio is the geometric mean of the token
    ratios over ``sequence_ratio_mask`` (default: the positions with a nonzero advantage); every
    token carries that value with the gradient of its own logprob, clipped PPO-style."""
    _require(inputs, "gspo", "logprobs", "advantages")
    low, high = _clip_bounds(inputs, config)
    adv = inputs["advantages"]
    mask = inputs.get("sequence_ratio_mask")
    in_ratio = (mask != 0) if mask is not None else (adv != 0)
    dims = tuple(range(1, logp.dim()))
    weight = in_ratio.to(logp.dtype)
    count = weight.sum(dim=dims, keepdim=True)
    log_ratio = ((logp.detach() - inputs["logprobs"]) * weight).sum(dim=dims, keepdim=True) / count.clamp(
        min=1
    )
    ratio = torch.exp(log_ratio + logp - logp.detach())
    clipped = _clamp(ratio, low, high)
    loss = -torch.minimum(ratio * adv, clipped * adv).sum()
    seqs = max(int((count > 0).sum()), 1)
    clipped_seqs = float(((clipped != ratio).any(dim=dims, keepdim=True) & (count > 0)).sum()) / seqs
    return loss, {"loss:sum": float(loss.detach()), "clip_fraction:mean": clipped_seqs}


DEFAULT_RATIO_CAP = 2.0
_STABLE_REINFORCE_KEYS = {"kl_coeff", "ratio_cap"}


def stable_reinforce(logp: torch.Tensor, inputs: Inputs, config: Config) -> LossResult:
    """hotloop's StableReinforce (Tinker has not published its objective; see the README): REINFORCE on
    the sampled tokens, importance-corrected by what the *sampler recorded* at sampling time (not the
    client's ``logprobs``), with the weight truncated at ``ratio_cap`` and held constant:

        loss = -sum_t m_t * sg[min(p_t / q_t, C)] * A_t * log p_t  +  kl_coeff * sum_t m_t * k3_t

    ``q_t`` the recorded sampler logprob, ``m_t`` 1 on sampled positions (from provenance), ``k3_t =
    r - 1 - log r`` with ``r = p_t / q_t`` (an unbiased, nonnegative estimate of KL(q || p))."""
    unknown = sorted(set(config) - _STABLE_REINFORCE_KEYS)
    if unknown:
        raise TrainerBadRequest(
            f"loss_fn_config: unknown key(s) {unknown} for stable_reinforce "
            f"(known: {sorted(_STABLE_REINFORCE_KEYS)})"
        )
    _require(inputs, "stable_reinforce", "advantages", RECORDED_LOGPROBS, SAMPLED_MASK)
    kl_coeff = _number(config, "kl_coeff", 0.0)
    cap = _number(config, "ratio_cap", DEFAULT_RATIO_CAP)
    if kl_coeff < 0 or cap <= 0:
        raise TrainerBadRequest(f"need kl_coeff >= 0 and ratio_cap > 0, got {kl_coeff}, {cap}")
    mask, q = inputs[SAMPLED_MASK], inputs[RECORDED_LOGPROBS]
    log_r = (logp - q) * mask
    ratio = torch.exp(log_r)
    weight = torch.clamp(ratio, max=cap).detach()
    pg = -(mask * weight * inputs["advantages"] * logp).sum()
    k3 = (ratio - 1 - log_r) * mask
    loss = pg + kl_coeff * k3.sum()
    n = max(float(mask.sum()), 1.0)
    return loss, {
        "loss:sum": float(loss.detach()),
        "importance_weight:mean": float((weight * mask).sum()) / n,
        "truncated_fraction:mean": float(((ratio.detach() > cap) & (mask > 0)).sum()) / n,
        "kl_sampler_trainer:mean": float(k3.detach().sum()) / n,
    }


LOSSES: dict[str, Callable[[torch.Tensor, Inputs, Config], LossResult]] = {
    "cross_entropy": cross_entropy,
    "importance_sampling": importance_sampling,
    "ppo": ppo,
    "cispo": cispo,
    "dro": dro,
    "gspo": gspo,
    "stable_reinforce": stable_reinforce,
}
# Losses that read the sampler's stability records through the datums' provenance.
NEEDS_STABILITY_RECORDS = {"stable_reinforce"}


def get_loss(name: str) -> Callable[[torch.Tensor, Inputs, Config], LossResult]:
    try:
        return LOSSES[name]
    except KeyError:
        raise TrainerBadRequest(f"loss_fn {name!r} is not supported; use one of {sorted(LOSSES)}") from None
