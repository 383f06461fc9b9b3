"""The rollout machine's SAMPLING (asynchronous RL), and how TRAINING takes its batch.

``sample`` samples the group rollouts of one target step through the deployment, as synchronous
SAMPLING does, while the learner trains an earlier step. Each rollout is stamped with the weights
that generated it (``ctx.versions``): the identity the completion names, or, on a deployment that
drains around hot-loads, the identity verified for the drain epoch it ran in. A completion from
weights this run did not write fails the batch (and so the run). The batch goes into the buffer;
the rollout exit record notes which policies sampled it.

``take_trainable`` is TRAINING's side: the batch for its step from the buffer (waiting, beating
while the rollout machine makes progress), minus the groups staler than ``max_staleness`` (counted;
a batch the filter empties is given back and sampled again, a bounded number of times).
"""

from __future__ import annotations

import time
from typing import Any

from engine.errors import FatalError
from engine.lifecycle.rollout_runner import RolloutVisit
from engine.recipes import rl
from engine.run.context import RunContext
from engine.run.records import RolloutsSampled
from engine.states import sampling

MAX_RESAMPLES = 2


async def sample(ctx: RunContext, visit: RolloutVisit) -> rl.RolloutBatch:
    step, versions = visit.target, ctx.versions
    per_completion = ctx.deployment.per_completion_identity

    def stamp(completion: Any) -> tuple[str | None, int]:
        return versions.resolve(completion.snapshot_identity, completion.epoch, per_completion=per_completion)

    batch = await sampling.collect(ctx, step, visit.beat, stamp)
    visit.record(
        RolloutsSampled(
            step,
            tuple(sorted({r.policy_version for r in batch.rollouts})),
            tuple(batch.snapshot_identities),
            len(batch.rollouts),
            round(batch.seconds, 4),
        )
    )
    return batch


async def take_trainable(ctx: RunContext, step: int) -> tuple[rl.RolloutBatch, dict[str, Any]]:
    """The batch TRAINING trains at ``step`` and what its metrics row says about how it got it."""
    overlap = ctx.live_async_rollouts()
    k = overlap.max_staleness
    started = time.monotonic()
    dropped = 0
    for resampled in range(MAX_RESAMPLES + 1):
        batch = await overlap.buffer.take(step, ctx.beat)
        fresh, stale = rl.drop_stale(batch, k)
        dropped += stale
        if fresh.rollouts:
            ahead = overlap.buffer.depth
            return fresh, {
                "stale_dropped": dropped,
                "resampled": resampled,
                "buffered": ahead,
                "wait_s": round(time.monotonic() - started, 4),
            }
        overlap.buffer.discard(step)
        ctx.beat(f"every rollout for step {step} was staler than {k} versions: sampling it again")
    raise FatalError(
        f"the rollouts for step {step} were all staler than rl.async_rollouts.max_staleness={k} "
        f"{MAX_RESAMPLES + 1} times (oldest policy version {batch.policy_version}, learner at step "
        f"{step - 1}): the deployment does not serve the weights the run synced"
    )
