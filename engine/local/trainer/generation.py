"""Sampling sessions and real autoregressive sampling with logprobs (KV-cached, batched over samples).

A sampling session pins a set of weights: the base model, a model's weights captured at an
ephemeral ``save_weights_for_sampler`` (snapshot semantics), or a named sampler snapshot from the
bucket. Sampled logprobs are the model's own (temperature 1, untruncated) log-probabilities, the
same quantity the trainer's forward computes, so importance ratios start at 1.
"""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from engine.local.trainer.config import TrainerBadRequest
from engine.local.trainer.proto import SampledOut, encode_sample_response


@dataclass
class SamplingSession:
    sampling_session_id: str
    session_id: str
    base_model: str
    model_path: str | None
    weights_key: str
    weights: dict[str, torch.Tensor] | None  # None: the base model's weights
    seen_seq_ids: set[int] = field(default_factory=set)


@dataclass(frozen=True)
class SampleParams:
    num_samples: int
    max_tokens: int
    temperature: float
    top_k: int
    top_p: float
    seed: int | None
    stop_tokens: frozenset[int]
    stop_strings: tuple[str, ...]
    prompt_logprobs: bool
    prompt_logprobs_last_n: int | None
    topk_prompt: int
    topk_sample: int


def parse_stop(stop: Any, eos_id: int) -> tuple[frozenset[int], tuple[str, ...]]:
    if stop is None:
        return frozenset({eos_id}), ()
    if isinstance(stop, list) and not stop:  # Tinker: [] disables every stop, EOS included
        return frozenset(), ()
    if isinstance(stop, str):
        return frozenset({eos_id}), (stop,)
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return frozenset({eos_id}), tuple(stop)
    if isinstance(stop, list) and all(isinstance(s, int) and not isinstance(s, bool) for s in stop):
        return frozenset(stop), ()
    raise TrainerBadRequest("sampling_params.stop must be a string, a list of strings or a list of token ids")


class ModuleCache:
    """A few plain modules with weights loaded, keyed by the session's weights key (LRU)."""

    def __init__(self, base: Any, capacity: int = 4) -> None:
        self._base = base
        self._capacity = capacity
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str, weights: dict[str, torch.Tensor] | None) -> Any:
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        if weights is None:
            module = self._base
        else:
            module = copy.deepcopy(self._base)
            module.load_state_dict(weights, strict=True)
        with self._lock:
            self._cache[key] = module
            while len(self._cache) > self._capacity:
                self._cache.popitem(last=False)
        return module


def _pick(logits: torch.Tensor, p: SampleParams, gen: torch.Generator) -> torch.Tensor:
    if p.temperature <= 0:
        return logits.argmax(-1)
    scaled = logits / p.temperature
    if p.top_k > 0:
        kth = torch.topk(scaled, min(p.top_k, scaled.shape[-1]), dim=-1).values[..., -1:]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    if p.top_p < 1.0:
        probs_sorted, order = torch.sort(torch.softmax(scaled, -1), dim=-1, descending=True)
        drop_sorted = probs_sorted.cumsum(-1) - probs_sorted > p.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        scaled = scaled.masked_fill(drop, float("-inf"))
    return torch.multinomial(torch.softmax(scaled, -1), 1, generator=gen).squeeze(-1)


def _topk(logp: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    values, ids = torch.topk(logp, min(k, logp.shape[-1]), dim=-1)
    return ids.numpy().astype(np.int32), values.numpy().astype(np.float32)


@torch.inference_mode()
def sample(
    module: Any,
    prompt: Sequence[int],
    p: SampleParams,
    tokenizer: Any | None,
    record: Callable[[list[SampledOut]], None] | None = None,
) -> bytes:
    """Blocking: run on the sampling thread. Returns a serialized ``SampleResponse``; ``record``, when
    given, sees the sequences first (stability records for stable_reinforce)."""
    gen = torch.Generator()
    gen.manual_seed(p.seed if p.seed is not None else int(torch.randint(0, 2**62, (1,)).item()))
    n = p.num_samples
    ids = torch.tensor([list(prompt)] * n, dtype=torch.long)
    out = module(input_ids=ids, use_cache=True)
    prompt_lp: np.ndarray | None = None
    topk_prompt: tuple[np.ndarray, np.ndarray] | None = None
    if p.prompt_logprobs or p.topk_prompt > 0:
        lsm = torch.log_softmax(out.logits[0, :-1].float(), -1)
        lp = np.full(len(prompt), np.nan, np.float32)
        lp[1:] = lsm.gather(-1, ids[0, 1:, None]).squeeze(-1).numpy()
        if p.prompt_logprobs_last_n is not None:
            lp[: len(prompt) - p.prompt_logprobs_last_n] = np.nan
        prompt_lp = lp if p.prompt_logprobs else None
        if p.topk_prompt > 0:
            tid, tlp = _topk(lsm, p.topk_prompt)
            k = tid.shape[1]
            topk_prompt = (
                np.concatenate([np.zeros((1, k), np.int32), tid]),
                np.concatenate([np.full((1, k), -99999.0, np.float32), tlp]),
            )
    past, logits = out.cache, out.logits[:, -1]
    tokens: list[list[int]] = [[] for _ in range(n)]
    lps: list[list[float]] = [[] for _ in range(n)]
    topk: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(n)]
    done = [False] * n
    for _ in range(p.max_tokens):
        logp = torch.log_softmax(logits.float(), -1)
        nxt = _pick(logits.float(), p, gen)
        chosen = logp.gather(-1, nxt[:, None]).squeeze(-1)
        tk = _topk(logp, p.topk_sample) if p.topk_sample > 0 else None
        for i in range(n):
            if done[i]:
                continue
            tok = int(nxt[i])
            tokens[i].append(tok)
            lps[i].append(float(chosen[i]))
            if tk is not None:
                topk[i].append((tk[0][i], tk[1][i]))
            if tok in p.stop_tokens or (
                p.stop_strings
                and tokenizer is not None
                and any(s in tokenizer.decode(tokens[i]) for s in p.stop_strings)
            ):
                done[i] = True
        if all(done):
            break
        out = module(input_ids=nxt[:, None], cache=past, use_cache=True)
        past, logits = out.cache, out.logits[:, -1]
    seqs = [
        SampledOut(
            tokens=np.asarray(tokens[i], np.int32),
            logprobs=np.asarray(lps[i], np.float32),
            stopped=done[i],
            topk_ids=np.stack([t[0] for t in topk[i]]) if topk[i] else None,
            topk_logprobs=np.stack([t[1] for t in topk[i]]) if topk[i] else None,
        )
        for i in range(n)
    ]
    if record is not None:
        record(seqs)
    return encode_sample_response(seqs, prompt_lp, topk_prompt)
