"""The deployment's pure pieces: admission planning, sampling distributions, text/stop handling,
and the batch KV cache's join/leave bookkeeping against a full forward."""

from __future__ import annotations

import asyncio
from pathlib import Path

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.local.deployment.batch_runner import BatchRunner, PromptCache, PromptEntry, sequence_logprobs
from engine.local.deployment.detok import TextTracker
from engine.local.deployment.scheduler import Scheduler, finish_reason, plan_admission
from engine.local.deployment.state import RequestHandle, SeqSpec
from engine.local.deployment.token_selection import SamplingParams, choose_tokens, processed_logprobs
from engine.local.models import load_model, load_tokenizer


@given(
    lens=st.lists(st.integers(1, 600), max_size=40),
    running=st.integers(0, 40),
    max_batch=st.integers(1, 40),
    budget=st.integers(1, 4096),
)
@settings(max_examples=200, deadline=None)
def test_plan_admission_respects_slots_and_budget(
    lens: list[int], running: int, max_batch: int, budget: int
) -> None:
    n = plan_admission(lens, running, max_batch, budget)
    assert 0 <= n <= max(0, max_batch - running) and n <= len(lens)
    if n > 1:
        assert n * max(lens[:n]) <= budget
    if lens and running < max_batch:
        assert n >= 1  # never starves: one always joins when a slot is free


def test_finish_reason() -> None:
    spec = SeqSpec(prompt=[1, 2, 3], max_tokens=3, stop_token_ids=frozenset({2}))
    assert finish_reason(spec, [5], 100) is None
    assert finish_reason(spec, [5, 2], 100) == "stop"
    assert finish_reason(spec, [5, 6, 7], 100) == "length"
    assert finish_reason(spec, [5], 4) == "length"  # context full


def test_processed_distributions() -> None:
    logits = torch.tensor(
        [[3.0, 2.0, 1.0, 0.0], [3.0, 2.0, 1.0, 0.0], [0.0, 5.0, 1.0, 0.0], [1.0, 2.0, 3.0, 4.0]]
    )
    params = [
        SamplingParams(temperature=1.0),
        SamplingParams(temperature=1.0, top_k=2),
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=0.5, top_p=0.5),
    ]
    out = processed_logprobs(logits, params)
    assert torch.allclose(out[0], torch.log_softmax(logits[0], -1))
    assert torch.isinf(out[1, 2:]).all() and torch.allclose(out[1, :2], torch.log_softmax(logits[1, :2], -1))
    assert out[2, 1] == 0.0 and torch.isinf(out[2, [0, 2, 3]]).all()
    scaled = torch.softmax(logits[3] / 0.5, -1)  # top token alone has 0.87 > 0.5 of the mass
    assert scaled[3] > 0.5 and out[3, 3] == 0.0 and torch.isinf(out[3, :3]).all()
    gens = [torch.Generator().manual_seed(1), None, None, torch.Generator().manual_seed(2)]
    toks = choose_tokens(out, gens, torch.Generator().manual_seed(0))
    assert toks[1] in (0, 1) and toks[2] == 1 and toks[3] == 3


def test_text_tracker_holds_back_possible_stop_strings(tiny_model_dir: Path) -> None:
    tok = load_tokenizer(tiny_model_dir)
    ids = tok.encode("hello world, this is it", add_special_tokens=False)
    tracker = TextTracker(tok, ("is it",))
    emitted, stopped = "", False
    for i in range(1, len(ids) + 1):
        delta, stopped = tracker.push(ids[:i])
        emitted += delta
        assert "is it" not in emitted
        if stopped:
            break
    assert stopped and emitted == "hello world, this "


def test_batch_cache_join_and_leave_match_full_forward(tiny_model_dir: Path) -> None:
    model = load_model(tiny_model_dir)
    runner = BatchRunner(model)
    seqs = [[5, 6, 7, 8, 9, 10, 11], [20, 21]]
    logits = runner.prefill(seqs, full_logits=False)
    nxt = [int(x) for x in logits.argmax(-1)]
    for s, t in zip(seqs, nxt, strict=True):
        s.append(t)
    seqs.append([40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51])  # longer than the batch: old rows re-pad
    last = runner.prefill([seqs[2]], full_logits=False)
    seqs[2].append(int(last.argmax(-1)[0]))
    for step in range(4):
        if step == 2:
            runner.keep_rows([1, 2])  # row 0 leaves; shared padding is trimmed
            seqs = seqs[1:]
        out = runner.decode([s[-1] for s in seqs])
        raw = torch.log_softmax(out, -1)
        for i, s in enumerate(seqs):
            tok = int(raw[i].argmax())
            ref = sequence_logprobs(model, [*s, tok], start=len(s))[0]
            assert abs(float(raw[i, tok]) - ref) <= 1e-4
            s.append(tok)


async def test_identical_prompts_admitted_together_are_prefilled_once(tiny_model_dir: Path) -> None:
    model = load_model(tiny_model_dir)
    scheduler = Scheduler(BatchRunner(model), load_tokenizer(tiny_model_dir), max_batch=8)
    scheduler.start()
    try:
        shared, other = [1, 9, 8, 7, 6, 5], [1, 2, 3]
        prompts = [shared, shared, other, shared]
        handle = RequestHandle(len(prompts))
        specs = [
            SeqSpec(prompt=p, max_tokens=5, sampling=SamplingParams(temperature=1.0), seed=i)
            for i, p in enumerate(prompts)
        ]
        scheduler.submit(handle, specs)  # one submit: all four are admitted in the same iteration
        tokens: dict[int, list[int]] = {i: [] for i in range(len(prompts))}
        logprobs: dict[int, list[float]] = {i: [] for i in range(len(prompts))}
        cached: dict[int, int] = {}
        finished = 0
        while finished < len(prompts):
            item = await asyncio.wait_for(handle.queue.get(), 60)
            assert not isinstance(item, BaseException)
            for u in item:
                tokens[u.index] += [t.token_id for t in u.tokens]
                logprobs[u.index] += [float(t.logprob or 0.0) for t in u.tokens]
                if u.started and u.timing is not None:
                    cached[u.index] = u.timing.cached_prompt_tokens
                finished += u.finish_reason is not None
    finally:
        scheduler.close()
    assert cached == {0: 0, 1: len(shared), 2: 0, 3: len(shared)}
    assert len({tuple(t) for t in tokens.values()}) > 1  # different seeds, different samples
    for i, p in enumerate(prompts):
        ref = sequence_logprobs(model, p + tokens[i], start=len(p))
        assert max(abs(a - b) for a, b in zip(logprobs[i], ref, strict=True)) <= 1e-4


def test_prompt_cache_is_an_lru_bounded_in_tokens() -> None:
    def entry(n: int) -> PromptEntry:
        kv = [(torch.zeros(1, 1, n, 2), torch.zeros(1, 1, n, 2))]
        return PromptEntry(kv=kv, last=torch.zeros(4), length=n, full=torch.zeros(n, 4))

    cache = PromptCache(max_tokens=10)
    cache.put((1,) * 4, entry(4))
    cache.put((2,) * 4, entry(4))
    assert cache.get((1,) * 4) is not None  # now the most recently used
    cache.put((3,) * 4, entry(4))  # 12 > 10 tokens: evicts the least recently used, (2,)*4
    assert cache.get((2,) * 4) is None and len(cache) == 2
    got = cache.get((3,) * 4)
    assert got is not None and got.full is None  # full logits are never kept
    cache.put((4,) * 11, entry(11))  # larger than the whole budget: not stored
    assert cache.get((4,) * 11) is None
    cache.clear()
    assert len(cache) == 0
