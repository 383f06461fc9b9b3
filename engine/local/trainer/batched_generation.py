"""Several sample requests on the same weights in one batched generation.

The sampler used to run asample requests one at a time; a rollout loop with many environments (the
cookbook's guess_number: hundreds of single-sample requests in flight) then pays one full forward
per token per request. Batching them shares each forward: on the ``small`` model one decode step of
32 rows costs about 4x one row, not 32x (see benchmarks/bench_trainer_sampling.py).

Prompts are left-padded, with an attention mask and explicit positions, so each row computes what
it would alone (up to float rounding). Each request keeps its own sampling parameters, stop
conditions, token budget and random generator (so a seeded request does not depend on its
batch-mates' draws). Requests that ask for prompt logprobs or top-k lists are not batched here
(``generation.sample`` serves them one by one).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from engine.local.trainer.generation import SampleParams, _pick, _topk
from engine.local.trainer.proto import SampledOut, encode_sample_response


@dataclass(frozen=True)
class SampleJob:
    prompt: Sequence[int]
    params: SampleParams
    record: Callable[[list[SampledOut]], None] | None = None


def batchable(p: SampleParams) -> bool:
    return not (p.prompt_logprobs or p.topk_prompt > 0)


def _generator(seed: int | None) -> torch.Generator:
    gen = torch.Generator()
    gen.manual_seed(seed if seed is not None else int(torch.randint(0, 2**62, (1,)).item()))
    return gen


@torch.inference_mode()
def sample_many(
    module: Any, jobs: Sequence[SampleJob], tokenizer: Any | None, pad_id: int = 0
) -> list[bytes]:
    """Blocking (sampling thread): one serialized ``SampleResponse`` per job, in order."""
    owner = [j for j, job in enumerate(jobs) for _ in range(job.params.num_samples)]
    n = len(owner)
    width = max(len(job.prompt) for job in jobs)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for r, j in enumerate(owner):
        prompt = jobs[j].prompt
        ids[r, width - len(prompt) :] = torch.tensor(list(prompt), dtype=torch.long)
        mask[r, width - len(prompt) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    # Only the last position's logits are sampled from: the LM head runs on that one alone.
    out = module(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    past, logits = out.cache, out.logits[:, -1]
    rows_of = [[r for r, o in enumerate(owner) if o == j] for j in range(len(jobs))]
    gens = [_generator(job.params.seed) for job in jobs]
    tokens: list[list[int]] = [[] for _ in range(n)]
    lps: list[list[float]] = [[] for _ in range(n)]
    topk: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(n)]
    stopped = [False] * n
    finished = [False] * n  # stopped, or out of its request's token budget
    nxt = torch.zeros(n, dtype=torch.long)
    last = positions[:, -1]
    for _step in range(max(job.params.max_tokens for job in jobs)):
        scores = logits.float()
        logp = torch.log_softmax(scores, -1)
        for j, rows in enumerate(rows_of):
            live = [r for r in rows if not finished[r]]
            if live:
                nxt[live] = _pick(scores[live], jobs[j].params, gens[j])
        chosen = logp.gather(-1, nxt[:, None]).squeeze(-1)
        for j, rows in enumerate(rows_of):
            p = jobs[j].params
            tk = _topk(logp[rows], p.topk_sample) if p.topk_sample > 0 else None
            for k, r in enumerate(rows):
                if finished[r]:
                    continue
                tok = int(nxt[r])
                tokens[r].append(tok)
                lps[r].append(float(chosen[r]))
                if tk is not None:
                    topk[r].append((tk[0][k], tk[1][k]))
                if tok in p.stop_tokens or (
                    p.stop_strings
                    and tokenizer is not None
                    and any(s in tokenizer.decode(tokens[r]) for s in p.stop_strings)
                ):
                    stopped[r] = finished[r] = True
                elif len(tokens[r]) >= p.max_tokens:
                    finished[r] = True
        if all(finished):
            break
        # Finished rows keep decoding (their outputs are ignored): the batch stays rectangular.
        mask = torch.cat([mask, torch.ones((n, 1), dtype=torch.long)], dim=1)
        last = last + 1
        out = module(
            input_ids=nxt[:, None],
            attention_mask=mask,
            position_ids=last[:, None],
            cache=past,
            use_cache=True,
            logits_to_keep=1,
        )
        past, logits = out.cache, out.logits[:, -1]
    answers = []
    for j, rows in enumerate(rows_of):
        seqs = [
            SampledOut(
                tokens=np.asarray(tokens[r], np.int32),
                logprobs=np.asarray(lps[r], np.float32),
                stopped=stopped[r],
                topk_ids=np.stack([t[0] for t in topk[r]]) if topk[r] else None,
                topk_logprobs=np.stack([t[1] for t in topk[r]]) if topk[r] else None,
            )
            for r in rows
        ]
        if jobs[j].record is not None:
            jobs[j].record(seqs)  # type: ignore[misc]
        answers.append(encode_sample_response(seqs, None, None))
    return answers
