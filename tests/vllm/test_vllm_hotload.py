"""Hot-loading the embedded trainer's snapshots into a real vLLM server (``small``, fp32, CPU).

Base then a delta materialized from its parent: vLLM reports each identity, greedy completions change,
and vLLM's logprobs for the sampled tokens agree with the trainer's own forward pass. A corrupt
snapshot, and a reload that fails inside vLLM, leave the previous identity serving the same output.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from vllm_support import greedy, prompt_ids, train_steps, trainer_logprobs

from engine.backends.base import SamplerSnapshot, SnapshotStore
from engine.backends.tinker import TrainingSession
from engine.backends.vllm import VllmHotLoader, VllmHotloadError
from engine.backends.vllm.materialize import WeightsMaterializer
from engine.local.models import load_tokenizer
from engine.sampling import AdaptiveConcurrencyController, FixedConcurrencyController, SamplingRetryPolicy
from engine.weights.names import flat_name
from engine.weights.store import DirectoryStore

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="session")]

TOLERANCE = 1e-4
"""Max abs logprob difference, vLLM vs the trainer, fp32 on the same weights. Measured 3.6e-6 (vLLM's
CPU kernels -- oneDNN matmuls, its own attention and RMSNorm -- against transformers' eager forward
sum in different orders). 1e-4 (the embedded deployment's bound too) leaves room for other CPUs'
vector widths, while a wrong tensor moves logprobs by far more: a stale tied lm_head, the bug this
test caught in vLLM's reload, was off by 0.9 to 12 nats."""


def _loader(vllm: Any, store: SnapshotStore) -> VllmHotLoader:
    return vllm.deployment.hot_loader(vllm.ref, store, timeout_s=120, poll_interval_s=0.2)


def _sampler(vllm: Any, tokenizer: Any, controller: Any = None) -> Any:
    return vllm.deployment.sampler(
        vllm.ref,
        tokenizer=tokenizer,
        controller=controller or FixedConcurrencyController(4),
        retry_policy=SamplingRetryPolicy(),
    )


async def _session(trainer_url: tuple[str, Path]) -> TrainingSession:
    return await TrainingSession.connect(trainer_url[0], "tml-test", "small", tokenizer_loader=load_tokenizer)


async def test_base_then_delta_served_with_the_trainers_logprobs(
    vllm: Any, trainer_url: tuple[str, Path]
) -> None:
    session = await _session(trainer_url)
    sampler = _sampler(vllm, session.tokenizer)
    try:
        loader = _loader(vllm, DirectoryStore(trainer_url[1]))
        prompt = prompt_ids(session.tokenizer)
        diffs: list[float] = []
        outputs: list[list[int]] = []
        parent: str | None = None
        for round_, kind in enumerate(("base", "delta")):
            await train_steps(session, session.tokenizer, steps=2)
            snap = await session.save_weights_for_sampler(f"lp-{round_}", kind, parent)
            assert snap.checkpoint_type == kind and snap.parent_snapshot_identity == parent
            await loader.load(snap, parent=parent)
            assert await loader.read_identity() == (True, snap.snapshot_name)
            outputs.append(await greedy(sampler, prompt))
            completions = await sampler.sample_with_prompt_tokens(prompt, n=2, max_tokens=8, temperature=1.0)
            expected = await trainer_logprobs(session, completions)
            for c, want in zip(completions, expected, strict=True):
                assert c.full_tokens[: c.prompt_len] == prompt
                assert len(c.inference_logprobs) == len(want) == len(c.completion_tokens) > 0
                assert c.sampling_logprobs == c.inference_logprobs  # temperature 1, no truncation
                diffs.append(max(abs(float(s) - e) for s, e in zip(c.inference_logprobs, want, strict=True)))  # type: ignore[arg-type]
            parent = snap.snapshot_name
        print(f"vLLM vs trainer logprobs: max abs diff {max(diffs):.3g} over {len(diffs)} completions")
        assert max(diffs) <= TOLERANCE, diffs
        assert outputs[0] != outputs[1]  # the delta's weights, not the base's, answer
        assert loader.materializer.held_identity == parent  # the delta applied to the state in memory
        weights = sorted(p.name for p in loader.materializer.work_dir.iterdir())
        # The base's directory was pruned once the delta served (a per-run identity <run>/<name> is
        # one flat directory, <run>~<name>).
        assert weights == [flat_name(parent)]
    finally:
        await sampler.close()
        await session.close()


class _VanishingMaterializer(WeightsMaterializer):
    """Builds ``vanish``'s directory, then loses its file before vLLM reads it (a disk or cleanup
    accident): the reload fails inside vLLM, after it has begun replacing layers."""

    def __init__(self, work_dir: Path, *, layout: Any, vanish: str) -> None:
        super().__init__(work_dir, layout=layout)
        self.vanish = vanish

    async def materialize(self, identity: str, store: SnapshotStore) -> Path:
        path = await super().materialize(identity, store)
        if identity == self.vanish:
            (path / "model.safetensors").unlink()
        return path


async def test_failed_loads_leave_the_previous_identity_serving(
    vllm: Any, trainer_url: tuple[str, Path], tmp_path: Path
) -> None:
    session = await _session(trainer_url)
    sampler = _sampler(vllm, session.tokenizer)
    try:
        store = DirectoryStore(trainer_url[1])
        loader = _loader(vllm, store)
        prompt = prompt_ids(session.tokenizer)
        good = await session.save_weights_for_sampler("keep", "base")
        await loader.load(good, parent=None)
        before = await greedy(sampler, prompt)

        # 1. Corrupt bytes: the checksum fails while materializing; vLLM is never touched.
        await train_steps(session, session.tokenizer, steps=1)
        bad = await session.save_weights_for_sampler("corrupt", "base")
        payload = trainer_url[1] / bad.snapshot_name / "weights.safetensors"
        data = bytearray(payload.read_bytes())
        data[-64:] = bytes(64)
        payload.write_bytes(bytes(data))
        with pytest.raises(VllmHotloadError, match="checksum mismatch"):
            await loader.load(bad, parent=None)
        assert await loader.read_identity() == (True, good.snapshot_name)
        assert await greedy(sampler, prompt) == before

        # 2. A reload that fails inside vLLM: the loader reloads the previous weights before resuming.
        await train_steps(session, session.tokenizer, steps=1)
        other = await session.save_weights_for_sampler("vanish", "base")
        vanishing = VllmHotLoader(
            loader.admin,
            _VanishingMaterializer(
                tmp_path / "weights", layout=loader.materializer.layout, vanish=other.snapshot_name
            ),
            store,
            initial_weights_dir=vllm.model_dir,
            timeout_s=120,
        )
        with pytest.raises(VllmHotloadError, match=r"Cannot find any model weights") as err:
            await vanishing.load(other, parent=None)
        assert f"rolled back to {good.snapshot_name}" in str(err.value)
        assert await loader.read_identity() == (True, good.snapshot_name)
        assert await greedy(sampler, prompt) == before
        assert await loader.admin.health()
    finally:
        await sampler.close()
        await session.close()


async def test_mismatched_snapshot_is_refused_before_vllm_sees_it(vllm: Any, tmp_path: Path) -> None:
    import torch

    from engine.weights.snapshot import write_base

    loader = _loader(vllm, DirectoryStore(tmp_path))
    reported, served = await loader.read_identity()
    state = {"model.embed_tokens.weight": torch.zeros(4, 4)}
    write_base(tmp_path, "misfit", state, "small")
    with pytest.raises(VllmHotloadError, match=r"lacks \d+ tensors of the served model"):
        await loader.load(SamplerSnapshot(str(tmp_path / "misfit"), "misfit", "base"), parent=None)
    assert await loader.read_identity() == (reported, served)
    shutil.rmtree(tmp_path / "misfit")


async def test_adaptive_controller_observes_vllm_queue_time(vllm: Any) -> None:
    controller = AdaptiveConcurrencyController(initial_window=4, adjustment_interval=4)
    sampler = _sampler(vllm, None, controller)
    try:
        completions = await sampler.sample_with_prompt_tokens(
            [5, 6, 7, 8], n=8, max_tokens=4, temperature=1.0
        )
        assert all(c.server_metrics.prefill_queue_duration is not None for c in completions)
        summary = controller.step_completed()
    finally:
        await sampler.close()
    assert summary["requests"] == 8
    assert "avg_pq" in summary  # queue-time observations...
    assert "status_responses" not in summary  # ...and none through the status-code fallback
    assert controller.ema_prefill_queue is not None
