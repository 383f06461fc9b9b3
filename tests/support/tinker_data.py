"""Tinker training data shared by the tests that train a real model (tests/e2e, tests/vllm,
tests/fireworks): chat-rendered prompts, next-token datums, a prompt-plus-answer batch, the seed's
client-side objective, and the trainer-side logprobs of sampled sequences.

``types`` is the module the datums are built with: ``tinker`` (the default) or
``fireworks.training.sdk`` (both have Datum, ModelInput, TensorData).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import tinker
import torch

from engine.backends.tinker import TrainingSession


def prompt_ids(tokenizer: Any, text: str) -> list[int]:
    """One user message, chat-rendered with the generation prompt, as token ids."""
    msgs = [{"role": "user", "content": text}]
    return list(
        tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False)
    )


def datum(tokens: list[int], weights: list[float], types: Any = tinker, *, as_lists: bool = False) -> Any:
    """Next-token datum: input ``tokens[:-1]``, targets ``tokens[1:]``, one loss weight per target.
    The loss inputs are dense int64/float32 TensorData, or with ``as_lists`` plain lists (as an SDK
    user writes them; the Datum converts them itself)."""
    n = len(tokens) - 1
    if as_lists:
        loss_fn_inputs: dict[str, Any] = {"target_tokens": tokens[1:], "weights": weights}
    else:
        loss_fn_inputs = {
            "target_tokens": types.TensorData(data=tokens[1:], dtype="int64", shape=[n]),
            "weights": types.TensorData(data=weights, dtype="float32", shape=[n]),
        }
    return types.Datum(model_input=types.ModelInput.from_ints(tokens[:-1]), loss_fn_inputs=loss_fn_inputs)


def answer_batch(
    tokenizer: Any, step: int, prompts: Sequence[str], types: Any = tinker, *, as_lists: bool = False
) -> list[Any]:
    """Chat-rendered prompt + a short answer (``" answer {step} {i}"`` and end of sequence) per
    prompt; loss weights on the answer tokens only."""
    out = []
    for i, prompt in enumerate(prompts):
        ids = prompt_ids(tokenizer, prompt)
        answer = [*tokenizer.encode(f" answer {step} {i}", add_special_tokens=False), tokenizer.eos_token_id]
        weights = [0.0] * (len(ids) - 1) + [1.0] * len(answer)
        out.append(datum(ids + answer, weights, types, as_lists=as_lists))
    return out


def objective(data: list[Any], logprobs_list: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted NLL computed client-side (the seed's ``compute_objective``)."""
    losses = [
        -(lp * torch.tensor(d.loss_fn_inputs["weights"].data)).sum()
        for d, lp in zip(data, logprobs_list, strict=True)
    ]
    loss = torch.stack(losses).sum()
    return loss, {"loss": float(loss.item())}


async def trainer_logprobs(session: TrainingSession, completions: Sequence[Any]) -> list[list[float]]:
    """The trainer's logprob of each completion token given everything before it (one fp32 forward)."""
    data = [datum(list(c.full_tokens), [1.0] * (len(c.full_tokens) - 1)) for c in completions]
    out = await session.forward(data, "cross_entropy")
    return [
        [float(x) for x in list(o["logprobs"].data)[c.prompt_len - 1 :]]
        for o, c in zip(out.loss_fn_outputs, completions, strict=True)
    ]
