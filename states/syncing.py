"""SYNCING: hot-load the snapshot CHECKPOINTING wrote and read back that the deployment serves it."""

from __future__ import annotations

import time

from engine.errors import FatalError
from engine.lifecycle.context import RunContext
from engine.lifecycle.table import State


async def run(ctx: RunContext) -> State:
    c, snap = ctx.counters, ctx.snapshot
    if snap is None:
        raise FatalError(f"no snapshot to sync at step {c.step} (CHECKPOINTING must run first)")
    started = time.monotonic()
    await ctx.syncer.hotload(snap.snapshot_name, snap.checkpoint_type)
    ctx.beat("hot-load reported served")
    served = await ctx.syncer.check_deployment_state()
    if served != snap.snapshot_name:
        raise FatalError(f"deployment serves {served!r} after hot-loading {snap.snapshot_name!r}")
    seconds = time.monotonic() - started
    ctx.served_identity = served
    ctx.snapshot = None
    ctx.stats.update(sync_s=seconds)
    ctx.record("sync", step=c.snapshot_step, identity=served, checkpoint_type=snap.checkpoint_type,
               seconds=round(seconds, 4))  # fmt: skip
    ctx.counters = c.replace(synced_step=c.snapshot_step, force_sync=False)
    return ctx.schedule.next(ctx.counters)
