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


LOSSES: dict[str, Callable[[torch.Tensor, Inputs, Config], LossResult]] = {
    "cross_entropy": cross_entropy,
    "importance_sampling": importance_sampling,
    "ppo": ppo,
    "cispo": cispo,
}


def get_loss(name: str) -> Callable[[torch.Tensor, Inputs, Config], LossResult]:
    try:
        return LOSSES[name]
    except KeyError:
        raise TrainerBadRequest(f"loss_fn {name!r} is not supported; use one of {sorted(LOSSES)}") from None
