"""Fireworks' completion dialect (also spoken by hotloop's embedded deployment).

Request: ``raw_output: true`` for token ids, ``perf_metrics_in_response: true`` for the server's
timings in the final chunk, ``logprobs: true`` (``logprobs.content[]`` entries carry ``logprob`` and,
on the embedded deployment, ``sampling_logprob``), ``top_k: 0`` for no truncation.
Stream: ``choices[].raw_output.{completion_token_ids, prompt_token_ids}``, a final ``perf_metrics``
object (``prefill-queue-duration`` feeds the adaptive controller), and hotloop's
``snapshot_identity`` naming the weights that generated the completion.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from engine.sampling.dialect import base_payload
from engine.sampling.sse import CompletionAccumulator

COMPLETIONS_PATH = "/inference/v1/completions"


class FireworksAccumulator(CompletionAccumulator):
    token_ids_field = "choices[].raw_output.completion_token_ids (send raw_output: true)"

    def feed_dialect_chunk(self, chunk: dict[str, Any]) -> bool:
        if "perf_metrics" in chunk and isinstance(chunk["perf_metrics"], dict):
            self.perf_metrics = chunk["perf_metrics"]
        if chunk.get("snapshot_identity"):
            self.snapshot_identity = str(chunk["snapshot_identity"])
        return False

    def feed_dialect_choice(self, choice: dict[str, Any]) -> bool:
        raw = choice.get("raw_output")
        if not raw:
            return False
        if raw.get("prompt_token_ids") is not None:
            self.prompt_token_ids = [int(t) for t in raw["prompt_token_ids"]]
        if raw.get("completion_token_ids") is not None:
            self.raw_chunks.append([int(t) for t in raw["completion_token_ids"]])
            return True
        return False


class FireworksDialect:
    name = "fireworks"

    def __init__(self, completions_path: str = COMPLETIONS_PATH) -> None:
        self.completions_path = completions_path

    def payload(
        self,
        model: str,
        prompt: Sequence[int],
        *,
        max_tokens: int,
        temperature: float,
        extra: Mapping[str, Any],
    ) -> dict[str, Any]:
        body = base_payload(model, prompt, max_tokens=max_tokens, temperature=temperature)
        body.update(perf_metrics_in_response=True, raw_output=True, top_k=0)
        body.update(extra)
        return body

    def accumulator(self) -> CompletionAccumulator:
        return FireworksAccumulator()
