"""The SFT recipe: cross-entropy on chat demonstrations (the assistant turn is trained, the prompt
is not), one ``forward_backward("cross_entropy")`` + ``optim_step`` per step. Evaluation, like in
RL, samples through the deployment after a sync and scores with the task's reward."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from tinker import types

from engine.recipes.rl import prompt_tokens
from engine.recipes.tasks import Example

EOS_TEXT = "<|im_end|>"


def example_tokens(tokenizer: Any, example: Example) -> tuple[list[int], list[int]]:
    """(prompt ids ending with the assistant header, answer ids ending with the end-of-turn token)."""
    prompt = prompt_tokens(tokenizer, example.prompt)
    answer = [int(t) for t in tokenizer.encode(example.answer, add_special_tokens=False)]
    eos = tokenizer.convert_tokens_to_ids(EOS_TEXT)
    if isinstance(eos, int) and eos >= 0:
        answer.append(eos)
    return prompt, answer


def build_datums(tokenizer: Any, examples: Sequence[Example]) -> tuple[list[Any], int]:
    """Datums with weight 1 on answer tokens; returns them and the number of trained tokens."""
    data, trained = [], 0
    for ex in examples:
        prompt, answer = example_tokens(tokenizer, ex)
        tokens = prompt + answer
        weights = [0.0] * (len(prompt) - 1) + [1.0] * len(answer)
        trained += len(answer)
        data.append(
            types.Datum(
                model_input=types.ModelInput.from_ints(tokens[:-1]),
                # tinker coerces lists to TensorData (int64 targets, float32 weights)
                loss_fn_inputs=cast(Any, {"target_tokens": tokens[1:], "weights": weights}),
            )
        )
    return data, trained
