"""vLLM's completion dialect (``/v1/completions``, vLLM 0.32+).

Request: ``return_token_ids: true`` (each chunk's ``choices[0].token_ids`` are that chunk's new ids;
the first chunk also carries ``prompt_token_ids``), ``logprobs: 0`` (vLLM's ``logprobs`` is a count
of alternatives: 0 returns just the sampled token's logprob, in the legacy
``logprobs.token_logprobs`` list), ``top_k: 0`` (vLLM's "no truncation"; -1 is accepted too),
``stream_options.include_usage: true`` (the final chunk, ``choices: []``, carries ``usage`` and, on a
server started with ``--enable-per-request-metrics``, ``metrics``). With ``weight_versions`` (vLLM
0.33+) it also sends ``return_weight_versions: true``: the last chunk's ``choices[0].weight_versions``
lists the ``{version, start, end}`` spans of the weights that generated the tokens.

Stream, mapped onto the accumulator: token ids into ``raw_chunks`` and ``prompt_token_ids``;
``metrics.queue_time_ms`` (time spent WAITING before scheduling, pause time included) into
``perf_metrics["prefill-queue-duration"]`` in seconds -- the adaptive controller's signal -- and
``time_to_first_token_ms`` (prefill only, queue excluded) / ``generation_time_ms`` into
``prefill-duration`` / ``generation-duration`` (queue + prefill is the server TTFT); the weight
version of a single-version completion into ``snapshot_identity`` (vLLM's initial label
``"default"`` stays None: the initial weights).

vLLM's logprobs are the raw model distribution (``--logprobs-mode raw_logprobs``, its default), so
each token gets an entry with ``logprob`` and no ``sampling_logprob``; the sampler treats them as the
behaviour policy only at temperature 1 with no truncation, as for any server.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from engine.backends.vllm.admin import INITIAL_VERSION
from engine.sampling.dialect import base_payload
from engine.sampling.errors import SamplingProtocolError
from engine.sampling.sse import CompletionAccumulator

COMPLETIONS_PATH = "/v1/completions"
MIXED_PREFIX = "mixed:"
"""``snapshot_identity`` of a completion whose tokens came from more than one weight version: it can
never equal a served identity, so a state that checks identities rejects it."""


def _seconds(ms: Any) -> float | None:
    if isinstance(ms, bool) or not isinstance(ms, int | float):
        return None
    return float(ms) / 1000.0


def identity_of_spans(spans: Any) -> str | None:
    """The identity of a completion from its ``weight_versions`` spans (None: the initial weights)."""
    if not isinstance(spans, list) or not spans:
        raise SamplingProtocolError(f"weight_versions must be a non-empty list, got {spans!r:.200}")
    versions = []
    for span in spans:
        version = span.get("version") if isinstance(span, dict) else None
        if not isinstance(version, str):
            raise SamplingProtocolError(f"weight_versions span without a version: {span!r:.200}")
        if version not in versions:
            versions.append(version)
    if len(versions) > 1:
        return MIXED_PREFIX + "+".join(versions)
    return None if versions[0] == INITIAL_VERSION else versions[0]


class VllmAccumulator(CompletionAccumulator):
    token_ids_field = "choices[].token_ids (send return_token_ids: true)"

    def feed_dialect_chunk(self, chunk: dict[str, Any]) -> bool:
        metrics = chunk.get("metrics")
        if isinstance(metrics, dict):
            perf: dict[str, Any] = {}
            for key, name in (
                ("queue_time_ms", "prefill-queue-duration"),
                ("time_to_first_token_ms", "prefill-duration"),
                ("generation_time_ms", "generation-duration"),
            ):
                value = _seconds(metrics.get(key))
                if value is not None:
                    perf[name] = value
            if "prefill-queue-duration" in perf and "prefill-duration" in perf:
                # Arrival to first token, as Fireworks' server TTFT counts it (vLLM's excludes the queue).
                perf["server-time-to-first-token"] = perf["prefill-queue-duration"] + perf["prefill-duration"]
            if isinstance(self.usage, dict):
                perf["prompt-tokens"] = self.usage.get("prompt_tokens")
                details = self.usage.get("prompt_tokens_details")
                if isinstance(details, dict) and details.get("cached_tokens") is not None:
                    perf["cached-prompt-tokens"] = details["cached_tokens"]
            self.perf_metrics = perf
        return False

    def feed_dialect_choice(self, choice: dict[str, Any]) -> bool:
        prompt_ids = choice.get("prompt_token_ids")
        if prompt_ids is not None:
            self.prompt_token_ids = [int(t) for t in prompt_ids]
        if "weight_versions" in choice and choice["weight_versions"] is not None:
            self.snapshot_identity = identity_of_spans(choice["weight_versions"])
        ids = choice.get("token_ids")
        if not ids:
            return False
        tokens = [int(t) for t in ids]
        self.raw_chunks.append(tokens)
        # One entry per token, so inference/sampling logprobs line up with the ids even when vLLM sent
        # no logprobs (the caller overrode ``logprobs``): the base class reads entries first.
        logprobs = choice.get("logprobs")
        values = logprobs.get("token_logprobs") if isinstance(logprobs, dict) else None
        if isinstance(values, list) and len(values) == len(tokens):
            self.entries.extend({"token_id": t, "logprob": v} for t, v in zip(tokens, values, strict=True))
        else:
            self.entries.extend({"token_id": t, "logprob": None} for t in tokens)
        return True


class VllmDialect:
    """``weight_versions``: ask for per-completion weight versions (only on a server that has them,
    vLLM 0.33+: older ones ignore the field but log a warning for every request)."""

    name = "vllm"

    def __init__(self, *, weight_versions: bool = False, completions_path: str = COMPLETIONS_PATH) -> None:
        self.weight_versions = weight_versions
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
        body.update(logprobs=0, top_k=0, return_token_ids=True, stream_options={"include_usage": True})
        if self.weight_versions:
            body["return_weight_versions"] = True
        body.update(extra)
        return body

    def accumulator(self) -> CompletionAccumulator:
        return VllmAccumulator()
