"""REQUESTING: ask the control plane for a trainer job and a deployment linked to it.

Ids are derived from the run id, so a retried or resumed request finds the same resources: an
existing job is reused (WAITING reconnects to it), ``create_or_get`` returns an existing deployment.
"""

from __future__ import annotations

from engine.backends.fireworks import DeploymentConfig, DeploymentManager, TrainerJobConfig, TrainerJobManager
from engine.lifecycle.context import RunContext
from engine.lifecycle.table import State


async def run(ctx: RunContext) -> State:
    conn = ctx.require_connection()
    cfg = ctx.config
    if ctx.trainer_mgr is None:
        ctx.trainer_mgr = TrainerJobManager(
            conn.api_key,
            conn.base_url,
            trainer_gateway_url=conn.trainer_gateway_url,
            account_id=conn.account_id,
        )
    if ctx.deploy_mgr is None:
        ctx.deploy_mgr = DeploymentManager(
            conn.api_key,
            conn.base_url,
            inference_url=conn.inference_url,
            hotload_api_url=conn.hotload_api_url,
            account_id=conn.account_id,
        )
    await ctx.trainer_mgr.resolve_account_id()
    await ctx.deploy_mgr.resolve_account_id()
    ctx.beat("account resolved")
    known = ctx.resume.resources
    ctx.job_id = str(known.get("job_id") or f"{ctx.run_id}-trainer")
    ctx.deployment_id = str(known.get("deployment_id") or f"{ctx.run_id}-serving")
    existing = await ctx.trainer_mgr.try_get(ctx.job_id)
    if existing is None:
        created = await ctx.trainer_mgr.create(
            TrainerJobConfig(
                base_model=cfg.model,
                lora_rank=cfg.lora_rank,
                learning_rate=cfg.learning_rate,
                requested_job_id=ctx.job_id,
                display_name=f"hotloop {ctx.run_id}"[:63],
            )
        )
        ctx.job_name = created.job_name
    else:
        ctx.job_name = str(
            existing.get("name") or f"accounts/{ctx.trainer_mgr.account_id}/rlorTrainerJobs/{ctx.job_id}"
        )
    ctx.beat("trainer job requested")
    await ctx.deploy_mgr.create_or_get(
        DeploymentConfig(
            deployment_id=ctx.deployment_id,
            base_model=cfg.model,
            hot_load_trainer_job=ctx.job_name,
            min_replica_count=0,
            max_replica_count=1,
        )
    )
    ctx.beat("deployment requested")
    ctx.record("resources", job_id=ctx.job_id, job_name=ctx.job_name, deployment_id=ctx.deployment_id)
    return State.WAITING
