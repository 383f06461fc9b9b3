"""SAMPLING (RL): group rollouts for the next step, through the deployment only.

Each rollout is tagged with the policy version it was sampled from (the step whose snapshot the
deployment serves) and the identity that generated it. A completion that names any other snapshot
than the verified one fails the step (stale weights are detected in data). Where the deployment does
not name the snapshot per completion (vLLM 0.32, Fireworks), the identity is read back after sampling
and must still be the verified one; the rollouts then carry it. Rewards are checked (a raise or NaN
stops the run) and computed off the event loop. The batch is volatile: a crash redoes it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from engine.recipes import rl
from engine.run.context import RunContext
from engine.states._util import first_error, verify_identities


async def collect(
    ctx: RunContext,
    step: int,
    beat: Callable[[str], None],
    stamp: Callable[[Any], tuple[str | None, int]] | None = None,
) -> rl.RolloutBatch:
    """The group rollouts of ``step`` through the deployment, with the run's RL settings, and the
    sampler's concurrency window after them (shared with the rollout machine's SAMPLING)."""
    cfg, sampler = ctx.config, ctx.live_sampler()
    try:
        batch = await rl.collect(
            sampler,
            ctx.tokenizer,
            ctx.task,
            ctx.user_code,
            step=step,
            seed=cfg.seed,
            prompts_per_step=cfg.rl.prompts_per_step,
            group_size=cfg.rl.group_size,
            max_tokens=cfg.rl.max_tokens,
            temperature=cfg.rl.temperature,
            policy_version=ctx.counters.synced_step,
            beat=beat,
            stamp=stamp,
        )
    except BaseExceptionGroup as group:
        raise first_error(group)  # noqa: B904 - keeps the error's own cause; the group is its context
    window = sampler.concurrency_controller.step_completed().get("window")
    return replace(batch, window=None if window is None else int(window))


async def run(ctx: RunContext) -> None:
    c = ctx.counters
    step = c.step + 1
    batch = await collect(ctx, step, ctx.beat)
    reported = [r.snapshot_identity for r in batch.rollouts]
    await verify_identities(ctx, reported, what=f"rollouts for step {step}")
    if any(i is None for i in reported) and ctx.served_identity is not None:
        rollouts = [replace(r, snapshot_identity=ctx.served_identity) for r in batch.rollouts]
        batch = replace(batch, rollouts=rollouts, snapshot_identities=[ctx.served_identity])
    ctx.rollouts = batch
    ctx.counters = c.sampled()
