"""A completion dialect: how one kind of server is asked for a token-in/token-out completion and how
its stream is read. The sampler and the load tester are generic; each backend brings its dialect
(``engine.backends.fireworks.dialect.FireworksDialect``, ``engine.backends.vllm.dialect.VllmDialect``).

A dialect builds the n=1 streaming request body (what to ask for so the stream carries token ids,
logprobs and the server's queue-time signal) and makes the accumulator that reads the answer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from engine.sampling.sse import CompletionAccumulator

RESERVED_FIELDS = frozenset({"model", "prompt", "n", "stream"})
"""Body fields the sampler owns; a caller's extra kwargs may not set them."""


class CompletionDialect(Protocol):
    name: str
    completions_path: str
    """Appended to the deployment's inference URL, e.g. ``/inference/v1/completions``."""

    def payload(
        self,
        model: str,
        prompt: Sequence[int],
        *,
        max_tokens: int,
        temperature: float,
        extra: Mapping[str, Any],
    ) -> dict[str, Any]:
        """The streaming body. Defaults ask for the full distribution (top_p 1, no top-k) so RL
        rollouts are on-policy; ``extra`` (the caller's kwargs) overrides any default."""
        ...

    def accumulator(self) -> CompletionAccumulator: ...


def base_payload(model: str, prompt: Sequence[int], *, max_tokens: int, temperature: float) -> dict[str, Any]:
    """The fields every OpenAI-style completions server shares."""
    return {
        "model": model,
        "prompt": [int(t) for t in prompt],
        "n": 1,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "stream": True,
        "logprobs": True,
        "top_p": 1.0,
    }
