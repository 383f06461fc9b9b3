"""The RL recipe: group rollouts through the deployment, group-centred advantages, and an
importance-sampling or PPO objective applied with ``forward_backward_custom``.

Rollouts come only from the deployment (``DeploymentSampler``), never from trainer internals, and
each one carries the policy version (the step whose snapshot the deployment served) and the
snapshot identity the deployment reported for it, so staleness is visible in data. Asynchronous RL
stamps each rollout with the version that generated it (``stamp``: one batch may span several) and
trains only groups no staler than its bound (``drop_stale``); the objectives below use the
sampler's logprobs as the behaviour policy, which is what corrects for the off-policy lag.

Objective, per completion token t of sample i with advantage A_i (reward minus its group's mean):
ratio_t = exp(logp_t - logp_behaviour_t) where the behaviour logprob is the deployment's sampling
logprob; ``importance_sampling``: -ratio_t * A_i; ``ppo``: -min(ratio_t * A_i, clip(ratio_t, 1-e,
1+e) * A_i). The loss is the mean over all completion tokens of the batch. Extra per-sample data
stays in the closure; the datums carry only ``target_tokens`` and ``weights`` (the custom-loss
contract).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar, cast

import torch
from tinker import types

from engine.errors import FatalError
from engine.lifecycle.rollout import staleness
from engine.recipes.tasks import Example, Task

T = TypeVar("T")
Stamp = Callable[[Any], tuple[str | None, int]]
"""(identity, policy version) of the weights that generated one sampled completion."""


@dataclass(frozen=True)
class Rollout:
    prompt: str
    prompt_tokens: tuple[int, ...]
    completion_tokens: tuple[int, ...]
    behaviour_logprobs: tuple[float | None, ...]
    text: str
    reward: float
    advantage: float
    policy_version: int
    snapshot_identity: str | None
    group: int = 0  # index of its group (one prompt) in the batch


@dataclass
class RolloutBatch:
    """The samples one training step consumes (volatile: a crashed step samples again)."""

    step: int  # the step these rollouts will train
    rollouts: list[Rollout]
    policy_version: int
    snapshot_identities: list[str | None] = field(default_factory=list)
    seconds: float = 0.0
    window: int | None = None  # the sampler's concurrency window after this batch

    @property
    def reward_mean(self) -> float:
        return sum(r.reward for r in self.rollouts) / max(1, len(self.rollouts))

    def staleness(self) -> tuple[int, float]:
        """(max, mean) staleness of the rollouts when this batch trains its step."""
        ages = [staleness(self.step, r.policy_version) for r in self.rollouts]
        return max(ages, default=0), sum(ages) / max(1, len(ages))


def _with_rollouts(batch: RolloutBatch, rollouts: list[Rollout]) -> RolloutBatch:
    """``batch`` holding ``rollouts``: its version is the oldest one, its identities theirs."""
    return RolloutBatch(
        step=batch.step,
        rollouts=rollouts,
        policy_version=min((r.policy_version for r in rollouts), default=batch.policy_version),
        snapshot_identities=list(dict.fromkeys(r.snapshot_identity for r in rollouts)),
        seconds=batch.seconds,
        window=batch.window,
    )


def drop_stale(batch: RolloutBatch, max_staleness: int) -> tuple[RolloutBatch, int]:
    """Keep the groups whose oldest rollout is at most ``max_staleness`` versions behind when the batch
    trains; returns the kept batch and how many rollouts were dropped. Whole groups go, because their
    advantages are centred on the group."""
    stale = {r.group for r in batch.rollouts if staleness(batch.step, r.policy_version) > max_staleness}
    kept = [r for r in batch.rollouts if r.group not in stale]
    return _with_rollouts(batch, kept), len(batch.rollouts) - len(kept)


class UserCodeRunner(Protocol):
    """Runs user code off the event loop (engine.run.offload.UserCode)."""

    async def rewards(self, pairs: Sequence[tuple[str, str]]) -> list[float]: ...

    async def in_thread(self, fn: Callable[..., T], *args: Any) -> T: ...


def group_advantages(rewards: Sequence[float]) -> list[float]:
    """GRPO-style centring (no std normalisation): a constant-reward group teaches nothing."""
    mean = sum(rewards) / len(rewards)
    return [r - mean for r in rewards]


def prompt_tokens(tokenizer: Any, prompt: str) -> list[int]:
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True, return_dict=False
    )
    return [int(t) for t in ids]


def visible_text(tokenizer: Any, completion_tokens: Sequence[int]) -> str:
    return str(tokenizer.decode(list(completion_tokens), skip_special_tokens=True))


async def sample_groups(
    sampler: Any,
    tokenizer: Any,
    user: UserCodeRunner,
    examples: Sequence[Example],
    *,
    group_size: int,
    max_tokens: int,
    temperature: float,
    policy_version: int,
    beat: Callable[[str], None],
    stamp: Stamp | None = None,
) -> list[list[Rollout]]:
    """One group of ``group_size`` samples per example, all in flight at once (the controller
    admits them). Rewards are computed (off the loop) as groups complete; a bad reward fails the whole
    batch. Without ``stamp`` every rollout gets ``policy_version`` and the identity it reports."""

    async def one_group(index: int, example: Example) -> list[Rollout]:
        prompt = await user.in_thread(prompt_tokens, tokenizer, example.prompt)
        completions = await sampler.sample_with_prompt_tokens(
            prompt, n=group_size, max_tokens=max_tokens, temperature=temperature
        )
        if len(completions) != group_size:
            raise FatalError(f"deployment returned {len(completions)} of {group_size} samples for one group")
        texts = [visible_text(tokenizer, c.completion_tokens) for c in completions]
        rewards = await user.rewards([(example.prompt, t) for t in texts])
        advantages = group_advantages(rewards)
        stamps = [stamp(c) if stamp else (c.snapshot_identity, policy_version) for c in completions]
        beat(f"group {index + 1}/{len(examples)} sampled")
        return [
            Rollout(
                prompt=example.prompt,
                prompt_tokens=tuple(c.full_tokens[: c.prompt_len]),
                completion_tokens=tuple(c.completion_tokens),
                behaviour_logprobs=tuple(c.sampling_logprobs),
                text=text,
                reward=reward,
                advantage=adv,
                policy_version=version,
                snapshot_identity=identity,
                group=index,
            )
            for c, text, reward, adv, (identity, version) in zip(
                completions, texts, rewards, advantages, stamps, strict=True
            )
        ]

    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(one_group(i, ex)) for i, ex in enumerate(examples)]
    return [t.result() for t in tasks]


async def collect(
    sampler: Any,
    tokenizer: Any,
    task: Task,
    user: UserCodeRunner,
    *,
    step: int,
    seed: int,
    prompts_per_step: int,
    group_size: int,
    max_tokens: int,
    temperature: float,
    policy_version: int,
    beat: Callable[[str], None],
    stamp: Stamp | None = None,
) -> RolloutBatch:
    started = time.monotonic()
    examples = task.train_batch(step, prompts_per_step, seed)
    groups = await sample_groups(
        sampler,
        tokenizer,
        user,
        examples,
        group_size=group_size,
        max_tokens=max_tokens,
        temperature=temperature,
        policy_version=policy_version,
        beat=beat,
        stamp=stamp,
    )
    rollouts = [r for g in groups for r in g]
    batch = RolloutBatch(step=step, rollouts=[], policy_version=policy_version)
    return replace(_with_rollouts(batch, rollouts), seconds=time.monotonic() - started)


def build_datums(rollouts: Sequence[Rollout]) -> list[Any]:
    """Next-token datums: input = tokens[:-1], targets = tokens[1:], weight 1 on completion tokens."""
    data = []
    for r in rollouts:
        tokens = list(r.prompt_tokens) + list(r.completion_tokens)
        n_prompt = len(r.prompt_tokens)
        weights = [0.0] * (n_prompt - 1) + [1.0] * len(r.completion_tokens)
        data.append(
            types.Datum(
                model_input=types.ModelInput.from_ints(tokens[:-1]),
                # tinker coerces lists to TensorData (int64 targets, float32 weights)
                loss_fn_inputs=cast(Any, {"target_tokens": tokens[1:], "weights": weights}),
            )
        )
    return data


def make_loss(rollouts: Sequence[Rollout], kind: str, clip_epsilon: float) -> Any:
    """The custom objective over ``rollouts`` (in datum order); see the module docstring."""
    per_sample = [
        (len(r.prompt_tokens) - 1, len(r.completion_tokens), r.advantage, r.behaviour_logprobs)
        for r in rollouts
    ]
    n_tokens = max(1, sum(n for _, n, _, _ in per_sample))

    def loss_fn(data: list[Any], logprobs_list: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        total = torch.zeros(())
        clipped = 0.0
        ratio_sum = 0.0
        for (start, n, adv, behaviour), logprobs in zip(per_sample, logprobs_list, strict=True):
            if n == 0:
                continue
            current = logprobs[start : start + n]
            old = torch.tensor(
                [
                    b if b is not None and math.isfinite(b) else float(c)
                    for b, c in zip(behaviour, current.tolist(), strict=True)
                ],
                dtype=current.dtype,
            )
            ratio = torch.exp(current - old)
            objective = ratio * adv
            if kind == "ppo":
                bounded = torch.clamp(ratio, 1 - clip_epsilon, 1 + clip_epsilon) * adv
                clipped += float((bounded < objective).sum())
                objective = torch.minimum(objective, bounded)
            total = total - objective.sum()
            ratio_sum += float(ratio.detach().sum())
        loss = total / n_tokens
        metrics = {"objective": float(loss.detach()), "ratio_mean": ratio_sum / n_tokens}
        if kind == "ppo":
            metrics["clip_frac"] = clipped / n_tokens
        return loss, metrics

    return loss_fn
