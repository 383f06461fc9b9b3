"""CHECKPOINTING: the full training state when due, a sampler snapshot when a sync is due.

The full state (``save_state``: weights + optimizer) is what a resumed run restores; its name
carries the run's generation so a redone step never collides with a save the dead process made.
The sampler snapshot is written through the WeightSyncer, which picks base or delta against what
the deployment holds.
"""

from __future__ import annotations

from engine.lifecycle.context import RunContext
from engine.lifecycle.table import State


async def run(ctx: RunContext) -> State:
    c, sched = ctx.counters, ctx.schedule
    if sched.state_due(c):
        path = await ctx.session.save_state(f"state-{c.step:06d}-g{ctx.generation}")
        ctx.beat("training state saved")
        info = await ctx.session.trainer_info()
        optimizer_steps = int(info["optimizer_steps"]) if info else ctx.session.policy_version
        ctx.record("state", step=c.step, path=path, optimizer_steps=optimizer_steps)
        c = c.replace(state_step=c.step)
    if sched.sync_due(c) and c.snapshot_step < c.step:
        snap = await ctx.syncer.save_only(f"step-{c.step:06d}")
        ctx.beat("sampler snapshot saved")
        ctx.snapshot = snap
        ctx.record(
            "snapshot",
            step=c.step,
            identity=snap.snapshot_name,
            checkpoint_type=snap.checkpoint_type,
            parent=snap.parent_snapshot_identity,
            size_bytes=snap.size_bytes,
        )
        c = c.replace(snapshot_step=c.step)
    ctx.counters = c
    return sched.next(c)
