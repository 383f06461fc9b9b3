"""TRAINING: one optimizer step, committed with its metrics row.

RL: the custom objective (importance sampling or PPO) over the rollout batch through
``forward_backward_custom``; SFT: cross-entropy on a batch of demonstrations. ``optim_step`` is
submitted after the gradients are in (a custom loss runs a forward, local autograd, then a
backward, so an earlier submission could overtake the backward). The row records the trainer's own
optimizer step counter (the session keeps it from the optim_step result), which a test compares with
the step number.

Asynchronous RL: the batch comes from the rollout machine's buffer (engine.states.rollout.take_trainable),
already filtered to groups no staler than ``max_staleness``; the row records the staleness of what
was trained (max and mean over rollouts), the oldest policy version, every generating identity, and
how many rollouts the filter dropped.
"""

from __future__ import annotations

import time
from typing import Any

from engine.errors import FatalError
from engine.recipes import optim, rl, sft
from engine.run.context import RunContext
from engine.run.records import StepCommitted
from engine.states.rollout import take_trainable


async def run(ctx: RunContext) -> None:
    cfg, c = ctx.config, ctx.counters
    session = ctx.live_session()
    step = c.step + 1
    started = time.monotonic()
    row: dict[str, Any] = {"kind": "step", "step": step}
    if cfg.recipe == "rl":
        overlap: dict[str, Any] = {}
        if ctx.async_rollouts is not None:
            batch, overlap = await take_trainable(ctx, step)
            ctx.beat(f"rollouts for step {step} taken from the buffer")
            started = time.monotonic()  # train_s is the training; the wait is wait_s
        elif ctx.rollouts is None or ctx.rollouts.step != step:
            raise FatalError(f"no rollouts for step {step} (SAMPLING must run first)")
        else:
            batch = ctx.rollouts
        data = rl.build_datums(batch.rollouts)
        loss_fn = rl.make_loss(batch.rollouts, cfg.rl.loss, cfg.rl.clip_epsilon)
        out = await session.forward_backward_custom(data, loss_fn)
        identities = batch.snapshot_identities
        stale_max, stale_mean = batch.staleness()
        row.update(
            reward_mean=round(batch.reward_mean, 6),
            samples=len(batch.rollouts),
            policy_version=batch.policy_version,
            staleness=stale_max,
            staleness_mean=round(stale_mean, 4),
            snapshot_identity=identities[0] if len(identities) == 1 else identities,
            objective=out.metrics.get("objective"),
            sample_s=round(batch.seconds, 4),
            window=batch.window,
            **overlap,
        )
        ctx.rollouts = None
    else:
        examples = ctx.task.train_batch(step, cfg.sft.batch_size, cfg.seed)
        data, trained = await ctx.user_code.in_thread(sft.build_datums, ctx.tokenizer, examples)
        out = await session.forward_backward(data, "cross_entropy")
        loss_sum = float(out.metrics.get("loss:sum", 0.0))
        row.update(loss=round(loss_sum / max(1, trained), 6), tokens=trained, policy_version=c.synced_step)
    ctx.beat("gradients computed")
    await session.optim_step(optim.adam(cfg.learning_rate))
    row.update(optimizer_steps=session.optimizer_steps, train_s=round(time.monotonic() - started, 4))
    ctx.counters = c.trained()
    ctx.record(StepCommitted(row))
