"""SYNCING: hot-load the snapshot CHECKPOINTING wrote; the syncer returns only once the deployment
was read back serving it, so that identity is what the run verifies (read once, never assumed)."""

from __future__ import annotations

import time

from engine.errors import FatalError
from engine.run.context import RunContext
from engine.run.records import Synced


async def run(ctx: RunContext) -> None:
    c, snap = ctx.counters, ctx.snapshot
    if snap is None:
        raise FatalError(f"no snapshot to sync at step {c.step} (CHECKPOINTING must run first)")
    started = time.monotonic()
    served = await ctx.live_syncer().hotload(snap.snapshot_name, snap.checkpoint_type)
    ctx.beat("hot-load reported served")
    seconds = time.monotonic() - started
    ctx.served_identity = served
    ctx.snapshot = None
    ctx.record(Synced(c.snapshot_step, served, snap.checkpoint_type, round(seconds, 4)))
    ctx.counters = c.synced()
