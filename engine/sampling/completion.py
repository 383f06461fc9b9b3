"""``SampledCompletion``: one sampled completion with everything an RL step needs."""

from __future__ import annotations

from dataclasses import dataclass

from engine.sampling.metrics import ServerMetrics


@dataclass(frozen=True, slots=True)
class SampledCompletion:
    """One sampled completion with everything an RL step needs."""

    text: str
    full_tokens: list[int]
    """Prompt ids (the server's, if it expanded them) followed by the completion ids."""
    prompt_len: int
    completion_tokens: list[int]
    finish_reason: str
    sampling_logprobs: list[float | None]
    """Behavior-policy logprobs (after temperature/top-p/top-k), one per completion token."""
    inference_logprobs: list[float | None]
    """Raw model logprobs, one per completion token."""
    server_metrics: ServerMetrics
    snapshot_identity: str | None
    """The weights snapshot that generated this completion (None: the deployment's base weights)."""
    request_id: str
    attempts: int
    epoch: int = 0
    """The sampler's drain epoch the completion's attempt was admitted and finished in."""

    @property
    def completion_len(self) -> int:
        return len(self.completion_tokens)
