"""SYNCING: hot-load the snapshot CHECKPOINTING wrote; the syncer returns only once the deployment
was read back serving it, so that identity is what the run verifies (read once, never assumed).

While rollouts may be in flight (asynchronous RL), the deployment backend's ``hotload_policy``
says what happens to them: ``keep`` hot-loads while they go on (each completion names its weights);
``drain`` closes the sampler's admission, waits until the attempts in flight finished, hot-loads,
and reopens in a new epoch, recorded as served by the verified identity (``ctx.versions``)."""

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
    syncer = ctx.live_syncer()
    if ctx.deployment.hotload_policy == "drain":
        sampler = ctx.live_sampler()
        # Each attempt is bounded by the request timeout, so a drain ends within it; inside this
        # state's own stall bound, so a drain that cannot end fails naming the attempts in flight.
        cfg = ctx.config
        drain_s = min(cfg.sampling.request_timeout_s + 30.0, 0.9 * cfg.limits.stall_s)
        async with sampler.draining(drain_s) as ending:
            ctx.beat("sampling drained for the hot-load")
            served = await syncer.hotload(snap.snapshot_name, snap.checkpoint_type)
            ctx.versions.serves(ending + 1, served)
    else:
        served = await syncer.hotload(snap.snapshot_name, snap.checkpoint_type)
    ctx.beat("hot-load reported served")
    seconds = time.monotonic() - started
    ctx.served_identity = served
    ctx.snapshot = None
    ctx.record(Synced(c.snapshot_step, served, snap.checkpoint_type, round(seconds, 4)))
    ctx.counters = c.synced()
