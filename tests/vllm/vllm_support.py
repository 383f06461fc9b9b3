"""Shared steps of the vLLM tests: training a few steps, greedy completions, trainer-side logprobs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import tinker
from support.tinker_data import datum
from support.tinker_data import prompt_ids as chat_prompt_ids
from support.tinker_data import trainer_logprobs as trainer_logprobs

from engine.backends.tinker import TrainingSession
from engine.sampling import DeploymentSampler

ADAM = tinker.AdamParams(learning_rate=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0)
PROMPT_TEXT = "name a colour"


def prompt_ids(tokenizer: Any, text: str = PROMPT_TEXT) -> list[int]:
    return chat_prompt_ids(tokenizer, text)


async def train_steps(session: TrainingSession, tokenizer: Any, steps: int) -> None:
    """Teach the prompt a fixed answer (cross entropy on the answer tokens), ``steps`` optimizer steps."""
    prompt = prompt_ids(tokenizer)
    answer = [*tokenizer.encode(" blue and green", add_special_tokens=False), tokenizer.eos_token_id]
    tokens = prompt + answer
    weights = [0.0] * (len(prompt) - 1) + [1.0] * len(answer)
    for _ in range(steps):
        fb = session.forward_backward([datum(tokens, weights)], "cross_entropy")
        opt = session.optim_step(ADAM)
        await fb
        await opt


async def greedy(sampler: DeploymentSampler, prompt: Sequence[int], max_tokens: int = 8) -> list[int]:
    [c] = await sampler.sample_with_prompt_tokens(prompt, n=1, max_tokens=max_tokens, temperature=0.0)
    return c.completion_tokens


ROOT = Path(__file__).resolve().parents[2]
