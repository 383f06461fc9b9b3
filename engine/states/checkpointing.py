"""CHECKPOINTING: the full training state when due, a sampler snapshot when a sync is due.

The full state (``save_state``: weights + optimizer) is what a resumed run restores; its name
carries the run's generation so a redone step never collides with a save the dead process made.
The sampler snapshot is written through the WeightSyncer, which picks base or delta against what
the deployment holds.
"""

from __future__ import annotations

from engine.run.context import RunContext
from engine.run.records import SnapshotSaved, StateSaved


async def run(ctx: RunContext) -> None:
    c = ctx.counters
    session = ctx.live_session()
    save_state, save_snapshot = ctx.schedule.saves_due(c)
    if save_state:
        path = await session.save_state(f"state-{c.step:06d}-g{ctx.generation}")
        ctx.beat("training state saved")
        ctx.record(StateSaved(c.step, path, session.optimizer_steps))
    if save_snapshot:
        snap = await ctx.live_syncer().save_only(f"step-{c.step:06d}")
        ctx.beat("sampler snapshot saved")
        ctx.snapshot = snap
        ctx.versions.snapshot(snap.snapshot_name, c.step)  # before any completion can name it
        ctx.record(
            SnapshotSaved(
                c.step,
                snap.snapshot_name,
                snap.checkpoint_type,
                snap.parent_snapshot_identity,
                snap.size_bytes,
            )
        )
    ctx.counters = c.checkpointed(state=save_state, snapshot=save_snapshot)
