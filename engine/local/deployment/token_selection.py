"""Token selection for a batch of rows, each with its own temperature / top-k / top-p / seed.

Pure tensor functions, no state: the engine thread calls them once per step on the whole batch.
Two distributions matter per row and both are reported to clients:

* the raw model distribution, ``log_softmax(logits)`` -> ``logprob`` (what a trainer's fp32 forward
  computes for the same tokens);
* the distribution actually sampled from, after temperature, then top-k, then top-p (the order HF
  and vLLM apply them) -> ``sampling_logprob`` (the behaviour policy for off-policy corrections).
  Greedy rows (temperature 0) sample a point mass, so their ``sampling_logprob`` is 0.0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

NEG_INF = float("-inf")


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 (or negative) = off

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


def processed_logprobs(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """Log-probabilities of the distribution each row samples from ([B, V], -inf outside its support)."""
    logits = logits.float()
    vocab = logits.shape[1]
    temps = torch.tensor([p.temperature if not p.greedy else 1.0 for p in params], dtype=torch.float32)
    scaled = logits / temps.unsqueeze(1)
    filtered = scaled
    need_k = any(0 < p.top_k < vocab for p in params)
    need_p = any(p.top_p < 1.0 for p in params)
    if need_k or need_p:
        sorted_vals, sorted_idx = torch.sort(scaled, dim=-1, descending=True)
        ranks = torch.arange(vocab).unsqueeze(0)
        ks = torch.tensor([p.top_k if 0 < p.top_k < vocab else vocab for p in params]).unsqueeze(1)
        remove = ranks >= ks
        sorted_vals = sorted_vals.masked_fill(remove, NEG_INF)
        if need_p:
            probs = torch.softmax(sorted_vals, dim=-1)
            before = torch.cumsum(probs, dim=-1) - probs  # mass strictly above each token
            ps = torch.tensor([p.top_p for p in params], dtype=torch.float32).unsqueeze(1)
            # keep the smallest prefix whose mass reaches top_p; the top token always survives
            remove = remove | ((before >= ps) & (ranks > 0))
        mask = torch.zeros_like(remove).scatter(1, sorted_idx, remove)
        filtered = scaled.masked_fill(mask, NEG_INF)
    out = torch.log_softmax(filtered, dim=-1)
    greedy_rows = [i for i, p in enumerate(params) if p.greedy]
    if greedy_rows:
        rows = torch.tensor(greedy_rows)
        point = torch.full((len(greedy_rows), vocab), NEG_INF)
        point.scatter_(1, logits[rows].argmax(dim=-1, keepdim=True), 0.0)
        out[rows] = point
    return out


def choose_tokens(
    processed: torch.Tensor, generators: list[torch.Generator | None], shared: torch.Generator
) -> list[int]:
    """One token per row from ``processed`` (log-probs). Seeded rows draw from their own generator,
    so their samples do not depend on which other requests share the batch."""
    probs = processed.exp()
    out: list[int] = [0] * processed.shape[0]
    unseeded = [i for i, g in enumerate(generators) if g is None]
    if unseeded:
        rows = torch.tensor(unseeded)
        drawn = torch.multinomial(probs[rows], 1, generator=shared).squeeze(1).tolist()
        for i, tok in zip(unseeded, drawn, strict=True):
            out[i] = int(tok)
    for i, gen in enumerate(generators):
        if gen is not None:
            out[i] = int(torch.multinomial(probs[i], 1, generator=gen).item())
    return out


def top_entries(raw: torch.Tensor, k: int) -> list[list[tuple[int, float]]]:
    """The ``k`` most likely tokens per row under the raw model distribution."""
    if k <= 0:
        return [[] for _ in range(raw.shape[0])]
    vals, idx = torch.topk(raw, k, dim=-1)
    return [
        list(zip(r_idx, r_val, strict=True)) for r_idx, r_val in zip(idx.tolist(), vals.tolist(), strict=True)
    ]
