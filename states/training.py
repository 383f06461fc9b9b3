"""TRAINING: one optimizer step, committed with its metrics row.

RL: the custom objective (importance sampling or PPO) over the rollout batch through
``forward_backward_custom``; SFT: cross-entropy on a batch of demonstrations. ``optim_step`` is
submitted after the gradients are in (a custom loss runs a forward, local autograd, then a
backward, so an earlier submission could overtake the backward). The row records the trainer's own
optimizer step counter, which a test compares with the step number.
"""

from __future__ import annotations

import time

import tinker

from engine.errors import FatalError
from engine.lifecycle.context import RunContext
from engine.lifecycle.table import State
from engine.recipes import rl, sft


async def run(ctx: RunContext) -> State:
    cfg, c = ctx.config, ctx.counters
    step = c.step + 1
    started = time.monotonic()
    adam = tinker.AdamParams(learning_rate=cfg.learning_rate, beta1=0.9, beta2=0.95, eps=1e-8)
    row: dict[str, object] = {"kind": "step", "step": step}
    if cfg.recipe == "rl":
        batch = ctx.rollouts
        if batch is None or batch.step != step:
            raise FatalError(f"no rollouts for step {step} (SAMPLING must run first)")
        data = rl.build_datums(batch.rollouts)
        loss_fn = rl.make_loss(batch.rollouts, cfg.rl.loss, cfg.rl.clip_epsilon)
        out = await ctx.session.forward_backward_custom(data, loss_fn)
        identities = batch.snapshot_identities
        row.update(
            reward_mean=round(batch.reward_mean, 6),
            samples=len(batch.rollouts),
            policy_version=batch.policy_version,
            staleness=c.step - batch.policy_version,
            snapshot_identity=identities[0] if len(identities) == 1 else identities,
            objective=out.metrics.get("objective"),
            sample_s=round(batch.seconds, 4),
            window=ctx.stats.get("window"),
        )
        ctx.rollouts = None
    else:
        examples = ctx.require_task().train_batch(step, cfg.sft.batch_size, cfg.seed)
        data, trained = sft.build_datums(ctx.tokenizer, examples)
        out = await ctx.session.forward_backward(data, "cross_entropy")
        loss_sum = float(out.metrics.get("loss:sum", 0.0))
        row.update(loss=round(loss_sum / max(1, trained), 6), tokens=trained, policy_version=c.synced_step)
    ctx.beat("gradients computed")
    opt = await ctx.session.optim_step(adam)
    metrics = opt.metrics or {}
    optimizer_steps = int(metrics.get("optimizer_step:max", ctx.session.policy_version))
    row.update(optimizer_steps=optimizer_steps, train_s=round(time.monotonic() - started, 4))
    ctx.counters = c.replace(step=step)
    ctx.stats.update(step=step, train_s=row["train_s"])
    ctx.record("step", row=row)
    return ctx.schedule.next(ctx.counters)
