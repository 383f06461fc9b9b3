"""Sample requests batched into one generation give each request what it would get alone."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import numpy as np
import tinker
from tinker import types
from tinker.proto import tinker_public_pb2 as pb

from engine.local.trainer import ServerThread
from engine.local.trainer.batched_generation import SampleJob, sample_many
from engine.local.trainer.generation import SampleParams, sample

EOS = 2


def _params(
    max_tokens: int, stop: frozenset[int] = frozenset({EOS}), n: int = 1, **kw: object
) -> SampleParams:
    base: dict[str, object] = {
        "num_samples": n,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "top_k": -1,
        "top_p": 1.0,
        "seed": 0,
        "stop_tokens": stop,
        "stop_strings": (),
        "prompt_logprobs": False,
        "prompt_logprobs_last_n": None,
        "topk_prompt": 0,
        "topk_sample": 0,
    }
    return SampleParams(**{**base, **kw})  # type: ignore[arg-type]


def _decode(raw: bytes) -> list[tuple[list[int], list[float], int]]:
    msg = pb.SampleResponse()
    msg.ParseFromString(raw)
    return [
        (
            np.frombuffer(s.tokens, np.int32).tolist(),
            np.frombuffer(s.logprobs, np.float32).tolist(),
            s.stop_reason,
        )
        for s in msg.sequences
    ]


def test_a_batch_matches_each_request_alone(tiny_model_dir: Path) -> None:
    from engine.local.models import load_model

    module = load_model("tiny")
    jobs = [
        SampleJob([5, 6, 7, 8, 9, 10, 11], _params(6)),
        SampleJob([12, 13], _params(3, n=2)),  # shorter prompt: left-padded in the batch
        SampleJob([20, 21, 22, 23], _params(8, stop=frozenset(range(1024)))),  # stops at once
        SampleJob([30, 31, 32], _params(5, topk_sample=3)),
    ]
    together = [_decode(raw) for raw in sample_many(module, jobs, None, pad_id=3)]
    alone = [_decode(sample(module, job.prompt, job.params, None)) for job in jobs]
    for got, want in zip(together, alone, strict=True):
        assert [s[0] for s in got] == [s[0] for s in want]  # greedy: the same tokens
        assert [s[2] for s in got] == [s[2] for s in want]  # and the same stop reasons
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g[1], w[1], atol=1e-4)
    assert len(together[0][0][0]) == 6 and len(together[1][0][0]) == 3 and len(together[2][0][0]) == 1


def test_concurrent_requests_are_served_in_batches(trainer: ServerThread) -> None:
    svc = tinker.ServiceClient(base_url=trainer.url, api_key="tml-test")
    try:
        tc = svc.create_lora_training_client(base_model="tiny", rank=4).result()
        sc = tc.save_weights_and_get_sampling_client(record_stability_info=True).result()
        prompts = [[5 + i, 6 + i, 7 + i] for i in range(12)]
        params = types.SamplingParams(max_tokens=5, stop=[], seed=1)
        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            futures = [
                pool.submit(lambda p=p: sc.sample(types.ModelInput.from_ints(p), 2, params).result())
                for p in prompts
            ]
            results = [f.result() for f in futures]
        assert all(len(r.sequences) == 2 and all(len(s.tokens) == 5 for s in r.sequences) for r in results)
        # Each was recorded under its own sequence ids (stable_reinforce's source).
        ids = {s.sequence_id for r in results for s in r.sequences}
        assert len(ids) == 24 and all(trainer.service.sampler.records.get(i) is not None for i in ids)
        # Seeded: the same request again gives the same tokens, whatever it is batched with.
        again = sc.sample(types.ModelInput.from_ints(prompts[0]), 2, params).result()
        assert [s.tokens for s in again.sequences] == [s.tokens for s in results[0].sequences]
    finally:
        svc.close("success").result()
    assert trainer.service.sampler.pending == 0
