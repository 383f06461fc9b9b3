"""WAITING: wait for the trainer and the deployment at the same time, then connect.

A fresh run opens a new model on the trainer; a resumed run re-attaches to its trainer (which may have
been lost meanwhile) and restores the last committed full training state with its optimizer, checking
the trainer's optimizer step counter against the journal. Then the deployment's served identity is
read back: if it is not what the journal committed for the restored step, the run owes a sync before
sampling or evaluating. The policy versions start from the committed ledger, with the identity read
back as what the sampler's first drain epoch is served by.
"""

from __future__ import annotations

import asyncio

from engine.backends.base import RestorePoint
from engine.errors import ConfigError, FatalError
from engine.lifecycle.schedule import Counters
from engine.run.context import RunContext
from engine.run.records import Connected
from engine.run.versions import PolicyVersions
from engine.sampling import AdaptiveConcurrencyController, FixedConcurrencyController, SamplingRetryPolicy
from engine.states._util import first_error
from engine.states.requesting import trainer_spec
from engine.weights.syncer import WeightSyncer


async def run(ctx: RunContext) -> None:
    cfg, resume = ctx.config, ctx.resume
    assert ctx.trainer_ref is not None and ctx.deployment_ref is not None, "REQUESTING must run first"
    ready = cfg.limits.ready_timeout_s
    try:
        async with asyncio.TaskGroup() as tg:
            trainer = tg.create_task(
                ctx.trainer.wait_ready(ctx.trainer_ref, reattach=resume.started, timeout_s=ready)
            )
            deployment = tg.create_task(ctx.deployment.wait_ready(ctx.deployment_ref, timeout_s=ready))
    except BaseExceptionGroup as group:
        raise first_error(group)  # noqa: B904 - keeps the error's own cause; the group is its context
    ctx.trainer_ref, ctx.deployment_ref = trainer.result(), deployment.result()
    ctx.beat("trainer and deployment ready")

    restore = RestorePoint(resume.state_path, resume.optimizer_steps) if resume.state_path else None
    session = ctx.session = await ctx.trainer.open_session(ctx.trainer_ref, trainer_spec(ctx), restore)
    ctx.beat("training session connected")
    if session.optimizer_steps != resume.step:
        raise FatalError(
            f"trainer reports {session.optimizer_steps} optimizer steps for the restored state, "
            f"the journal committed {resume.step} (state {resume.state_path or 'base model'})"
        )
    ctx.hot_loader = ctx.deployment.hot_loader(
        ctx.deployment_ref,
        ctx.trainer.snapshot_store(ctx.trainer_ref),
        timeout_s=cfg.limits.stall_s,
        poll_interval_s=0.1,
    )
    ctx.syncer = WeightSyncer(
        session,
        ctx.hot_loader,
        ctx.deployment_ref.resource_id,
        hotload_timeout_s=cfg.limits.stall_s,
        full_every=cfg.intervals.full_snapshot_every,
        poll_interval_s=0.1,
    )
    served = ctx.served_identity = await ctx.syncer.check_deployment_state()
    ctx.beat("deployment identity read back")
    # Without a committed sync at the restored step, only an untouched deployment (base weights) at
    # step 0 is known to serve the restored policy.
    in_step = (
        served == resume.synced_identity if resume.synced_known else (resume.step == 0 and served is None)
    )
    controller = (
        FixedConcurrencyController(cfg.sampling.window)
        if cfg.sampling.controller == "fixed"
        else AdaptiveConcurrencyController(initial_window=cfg.sampling.window)
    )
    ctx.sampler = ctx.deployment.sampler(
        ctx.deployment_ref,
        tokenizer=session.tokenizer,
        controller=controller,
        retry_policy=SamplingRetryPolicy(attempt_timeout_s=cfg.sampling.request_timeout_s),
    )
    ctx.versions = PolicyVersions.from_ledger(resume.ledger)
    ctx.versions.serves(ctx.sampler.epoch, served)
    keep = ctx.deployment.hotload_policy == "keep"
    if ctx.async_rollouts is not None and keep and not ctx.deployment.per_completion_identity:
        raise ConfigError(
            f"rl.async_rollouts: the {ctx.deployment.kind!r} deployment keeps sampling through hot-loads "
            "but names no identity per completion, so the policy of its rollouts cannot be known"
        )
    ctx.counters = Counters.restored(resume.step, resume.evaluated_step, serves_restored_step=in_step)
    ctx.record(Connected(resume.step, served, in_step, session.model_id))
