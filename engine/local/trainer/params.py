"""Pure validation of JSON request fields into typed parameters (messages name the field)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from engine.local.trainer import limits
from engine.local.trainer.config import TrainerBadRequest
from engine.local.trainer.generation import SampleParams, parse_stop
from engine.local.trainer.models import AdamHyper, LoraSpec


def field(
    body: Mapping[str, Any], name: str, kind: type | tuple[type, ...], required: bool = True, prefix: str = ""
) -> Any:
    """``body[name]`` checked against ``kind`` (ints: 64-bit); ``prefix`` qualifies the name in messages."""
    value = body.get(name)
    name = prefix + name
    if value is None:
        if required:
            raise TrainerBadRequest(f"{name} is required")
        return None
    if kind is int and isinstance(value, bool):
        raise TrainerBadRequest(f"{name} must be an integer, got {value!r}")
    if kind is int and isinstance(value, int) and not -(2**63) <= value < 2**64:
        raise TrainerBadRequest(f"{name} must be a 64-bit integer, got one of {len(str(value))} digits")
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind):
        raise TrainerBadRequest(
            f"{name} must be {getattr(kind, '__name__', kind)}, got {type(value).__name__}"
        )
    return value


def lora_spec(body: Mapping[str, Any]) -> LoraSpec:
    cfg = body.get("lora_config")
    if cfg is None:
        return LoraSpec(rank=0)
    if not isinstance(cfg, dict):
        raise TrainerBadRequest("lora_config must be an object")
    rank = field(cfg, "rank", int)
    if rank < 0 or rank > 1024:
        raise TrainerBadRequest(f"lora_config.rank must be in [0, 1024] (0 = full-parameter), got {rank}")
    spec = LoraSpec(
        rank=rank,
        seed=field(cfg, "seed", int, required=False),
        train_unembed=bool(cfg.get("train_unembed", True)),
        train_mlp=bool(cfg.get("train_mlp", True)),
        train_attn=bool(cfg.get("train_attn", True)),
    )
    if rank > 0 and not (spec.train_attn or spec.train_mlp):
        raise TrainerBadRequest("lora_config must train attention or MLP layers (train_attn/train_mlp)")
    return spec


def optimizer_config(body: Mapping[str, Any]) -> None:
    cfg = body.get("optimizer_config")
    if cfg is not None and (not isinstance(cfg, dict) or cfg.get("type", "adamw") != "adamw"):
        raise TrainerBadRequest(f"optimizer_config: only {{'type': 'adamw'}} is supported, got {cfg!r}")


_ADAM_FIELDS = {"learning_rate", "beta1", "beta2", "eps", "weight_decay", "grad_clip_norm", "type"}


def adam_hyper(body: Mapping[str, Any]) -> AdamHyper:
    params = body.get("adam_params")
    if params is None:
        other = body.get("optimizer_params")
        if isinstance(other, dict) and other.get("type") not in (None, "adamw", "adam"):
            raise TrainerBadRequest(
                f"optimizer_params.type {other.get('type')!r}: this trainer only has AdamW"
            )
        params = other
    if not isinstance(params, dict):
        raise TrainerBadRequest("adam_params is required")
    unknown = set(params) - _ADAM_FIELDS
    if unknown:
        raise TrainerBadRequest(f"adam_params: unknown fields {sorted(unknown)}")
    defaults = AdamHyper()
    values: dict[str, float] = {}
    for name in _ADAM_FIELDS - {"type"}:
        v = params.get(name, getattr(defaults, name))
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise TrainerBadRequest(f"adam_params.{name} must be a finite number, got {v!r}")
        values[name] = float(v)
    if values["learning_rate"] < 0 or values["eps"] < 0 or values["weight_decay"] < 0:
        raise TrainerBadRequest("adam_params: learning_rate, eps and weight_decay must be >= 0")
    for b in ("beta1", "beta2"):
        if not 0 <= values[b] < 1:
            raise TrainerBadRequest(f"adam_params.{b} must be in [0, 1), got {values[b]}")
    return AdamHyper(**values)


def prompt_tokens(body: Mapping[str, Any], max_tokens: int | None = None) -> list[int]:
    prompt = body.get("prompt")
    if not isinstance(prompt, dict) or not isinstance(prompt.get("chunks"), list):
        raise TrainerBadRequest("prompt must be a ModelInput object with chunks")
    tokens: list[int] = []
    for i, chunk in enumerate(prompt["chunks"]):
        if not isinstance(chunk, dict) or chunk.get("type", "encoded_text") != "encoded_text":
            raise TrainerBadRequest(f"prompt.chunks[{i}]: only encoded_text chunks are supported")
        toks = chunk.get("tokens")
        if max_tokens is not None and isinstance(toks, list) and len(tokens) + len(toks) > max_tokens:
            raise TrainerBadRequest(f"prompt: more than {max_tokens} tokens (the model's context)")
        if not isinstance(toks, list) or not all(
            isinstance(t, int) and not isinstance(t, bool) for t in toks
        ):
            raise TrainerBadRequest(f"prompt.chunks[{i}].tokens must be a list of integers")
        tokens.extend(toks)
    if not tokens:
        raise TrainerBadRequest("prompt is empty")
    return tokens


def sample_params(
    body: Mapping[str, Any], prompt_len: int, vocab: int, max_len: int, eos_id: int
) -> SampleParams:
    sp = body.get("sampling_params")
    if not isinstance(sp, dict):
        raise TrainerBadRequest("sampling_params is required")
    n = field(body, "num_samples", int, required=False) or 1
    if not 1 <= n <= 256:
        raise TrainerBadRequest(f"num_samples must be in [1, 256], got {n}")
    max_tokens = field(sp, "max_tokens", int, required=False, prefix="sampling_params.")
    if max_tokens is None or max_tokens < 1:
        raise TrainerBadRequest(f"sampling_params.max_tokens must be a positive integer, got {max_tokens!r}")
    if prompt_len + max_tokens > max_len:
        raise TrainerBadRequest(
            f"prompt ({prompt_len}) + sampling_params.max_tokens ({max_tokens}) exceeds {max_len}"
        )
    for name in ("target_prompt_logprobs",):
        if body.get(name) is not None:
            raise TrainerBadRequest(f"{name} is not supported by the embedded trainer")
    if body.get("prompt_alt_tokens_k"):
        raise TrainerBadRequest("prompt_alt_tokens_k is not supported by the embedded trainer")
    temperature = field(sp, "temperature", float, required=False, prefix="sampling_params.")
    top_p = field(sp, "top_p", float, required=False, prefix="sampling_params.")
    limits.check_sampling(temperature, top_p)
    last_n = field(body, "prompt_logprobs_last_n", int, required=False)
    if last_n is not None and not 1 <= last_n <= prompt_len - 1:
        raise TrainerBadRequest(f"prompt_logprobs_last_n must be in [1, {prompt_len - 1}], got {last_n}")
    seed = field(sp, "seed", int, required=False, prefix="sampling_params.")
    if seed is not None and not -(2**63) <= seed < 2**64:  # torch.Generator.manual_seed's range
        raise TrainerBadRequest(f"sampling_params.seed must fit in 64 bits, got {seed}")
    topk: dict[str, int] = {}
    for name in ("topk_prompt_logprobs", "topk_sample_logprobs"):
        topk[name] = field(body, name, int, required=False) or 0
        if topk[name] < 0:
            raise TrainerBadRequest(f"{name} must be >= 0, got {topk[name]}")
    limits.check_stop(sp.get("stop"))
    stop_tokens, stop_strings = parse_stop(sp.get("stop"), eos_id)
    if any(not 0 <= t < vocab for t in stop_tokens):
        raise TrainerBadRequest("sampling_params.stop: token id out of range")
    return SampleParams(
        num_samples=n,
        max_tokens=max_tokens,
        temperature=1.0 if temperature is None else temperature,
        top_k=field(sp, "top_k", int, required=False, prefix="sampling_params.") or -1,
        top_p=1.0 if top_p is None else top_p,
        seed=seed,
        stop_tokens=stop_tokens,
        stop_strings=stop_strings,
        prompt_logprobs=bool(body.get("prompt_logprobs")),
        prompt_logprobs_last_n=last_n,
        topk_prompt=topk["topk_prompt_logprobs"],
        topk_sample=topk["topk_sample_logprobs"],
    )
