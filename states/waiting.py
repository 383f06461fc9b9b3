"""WAITING: wait for the trainer and the deployment at the same time, then connect.

A fresh run creates a model on the trainer; a resumed run reconnects to its job and restores the
last committed full training state with its optimizer, checking the trainer's optimizer step
counter against the journal. Then the deployment's served identity is read back: if it is not what
the journal committed for the restored step, the run owes a sync before sampling or evaluating.
"""

from __future__ import annotations

import asyncio

from engine.backends.tinker import TrainingSession
from engine.errors import FatalError
from engine.lifecycle.context import RunContext
from engine.lifecycle.schedule import Counters
from engine.lifecycle.table import State
from engine.local.models import load_tokenizer
from engine.sampling import (
    AdaptiveConcurrencyController,
    DeploymentSampler,
    FixedConcurrencyController,
    SamplingRetryPolicy,
)
from engine.weights import WeightSyncer
from states._util import first_error


async def run(ctx: RunContext) -> State:
    cfg, conn, resume = ctx.config, ctx.require_connection(), ctx.resume
    ready = cfg.limits.ready_timeout_s
    wait_trainer = (
        ctx.trainer_mgr.reconnect_and_wait(ctx.job_id, timeout_s=ready, poll_interval_s=0.25)
        if resume.started
        else ctx.trainer_mgr.wait_for_ready(ctx.job_id, ctx.job_name, timeout_s=ready, poll_interval_s=0.25)
    )
    try:
        async with asyncio.TaskGroup() as tg:
            trainer = tg.create_task(wait_trainer)
            tg.create_task(
                ctx.deploy_mgr.wait_for_ready(ctx.deployment_id, timeout_s=ready, poll_interval_s=0.25)
            )
    except BaseExceptionGroup as group:
        raise first_error(group) from group
    ctx.endpoint = trainer.result()
    ctx.beat("trainer and deployment ready")

    if resume.state_path:
        ctx.session = await TrainingSession.from_state(
            ctx.endpoint.base_url,
            conn.api_key,
            resume.state_path,
            with_optimizer=True,
            tokenizer_loader=load_tokenizer,
        )
    else:
        ctx.session = await TrainingSession.connect(
            ctx.endpoint.base_url, conn.api_key, cfg.model, cfg.lora_rank, tokenizer_loader=load_tokenizer
        )
    ctx.beat("training session connected")
    info = await ctx.session.trainer_info()
    if info is not None and int(info.get("optimizer_steps", -1)) != resume.step:
        raise FatalError(
            f"trainer reports {info.get('optimizer_steps')} optimizer steps for the restored state, "
            f"the journal committed {resume.step} (state {resume.state_path or 'base model'})"
        )
    ctx.tokenizer = ctx.session.tokenizer
    ctx.syncer = WeightSyncer(
        ctx.session,
        ctx.deploy_mgr,
        ctx.deployment_id,
        cfg.model,
        hotload_timeout_s=cfg.limits.stall_s,
        full_every=cfg.intervals.full_snapshot_every,
        poll_interval_s=0.1,
    )
    served = await ctx.syncer.check_deployment_state()
    ctx.served_identity = served
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
    ctx.sampler = DeploymentSampler(
        ctx.deploy_mgr.inference_url,
        ctx.deploy_mgr.model_name(ctx.deployment_id),
        conn.api_key,
        tokenizer=ctx.tokenizer,
        concurrency_controller=controller,
        retry_policy=SamplingRetryPolicy(attempt_timeout_s=cfg.sampling.request_timeout_s),
    )
    s = resume.step
    ctx.counters = Counters(
        step=s,
        state_step=s,
        snapshot_step=-1,
        synced_step=s if in_step else -1,
        evaluated_step=resume.evaluated_step,
        force_sync=not in_step,
    )
    ctx.record("connected", step=s, served_identity=served, in_step=in_step, model_id=ctx.session.model_id)
    return ctx.schedule.next(ctx.counters)
