"""Shared steps of the vLLM tests: training a few steps, greedy completions, trainer-side logprobs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import tinker

from engine.backends.tinker import TrainingSession
from engine.sampling import DeploymentSampler

ADAM = tinker.AdamParams(learning_rate=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0)
PROMPT_TEXT = "name a colour"


def prompt_ids(tokenizer: Any, text: str = PROMPT_TEXT) -> list[int]:
    msgs = [{"role": "user", "content": text}]
    return list(
        tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False)
    )


def _datum(tokens: list[int], weights: list[float]) -> tinker.Datum:
    n = len(tokens) - 1
    return tinker.Datum(
        model_input=tinker.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={
            "target_tokens": tinker.TensorData(data=tokens[1:], dtype="int64", shape=[n]),
            "weights": tinker.TensorData(data=weights, dtype="float32", shape=[n]),
        },
    )


async def train_steps(session: TrainingSession, tokenizer: Any, steps: int) -> None:
    """Teach the prompt a fixed answer (cross entropy on the answer tokens), ``steps`` optimizer steps."""
    prompt = prompt_ids(tokenizer)
    answer = [*tokenizer.encode(" blue and green", add_special_tokens=False), tokenizer.eos_token_id]
    tokens = prompt + answer
    weights = [0.0] * (len(prompt) - 1) + [1.0] * len(answer)
    for _ in range(steps):
        fb = session.forward_backward([_datum(tokens, weights)], "cross_entropy")
        opt = session.optim_step(ADAM)
        await fb
        await opt


async def greedy(sampler: DeploymentSampler, prompt: Sequence[int], max_tokens: int = 8) -> list[int]:
    [c] = await sampler.sample_with_prompt_tokens(prompt, n=1, max_tokens=max_tokens, temperature=0.0)
    return c.completion_tokens


async def trainer_logprobs(session: TrainingSession, completions: Sequence[Any]) -> list[list[float]]:
    """The trainer's logprob of each completion token given everything before it (one fp32 forward)."""
    data = [_datum(list(c.full_tokens), [1.0] * (len(c.full_tokens) - 1)) for c in completions]
    out = await session.forward(data, "cross_entropy")
    return [
        [float(x) for x in list(o["logprobs"].data)[c.prompt_len - 1 :]]
        for o, c in zip(out.loss_fn_outputs, completions, strict=True)
    ]


ROOT = Path(__file__).resolve().parents[2]


