"""REQUESTING: ask the trainer backend for a trainer and the deployment backend for a deployment
linked to it.

Ids are derived from the run id, and a resumed run hands back the refs its journal committed, so a
retried or resumed request finds the same resources instead of creating new ones.
"""

from __future__ import annotations

from engine.backends.base import DeploymentSpec, TrainerSpec
from engine.run.context import RunContext
from engine.run.records import ResourcesAcquired


def trainer_spec(ctx: RunContext) -> TrainerSpec:
    cfg = ctx.config
    return TrainerSpec(
        base_model=cfg.model,
        lora_rank=cfg.lora_rank,
        learning_rate=cfg.learning_rate,
        resource_id=f"{ctx.run_id}-trainer",
        display_name=f"hotloop {ctx.run_id}",
    )


async def run(ctx: RunContext) -> None:
    known = ctx.resume.resources
    ctx.trainer_ref = await ctx.trainer.provision(trainer_spec(ctx), known.trainer if known else None)
    ctx.beat("trainer requested")
    ctx.deployment_ref = await ctx.deployment.provision(
        DeploymentSpec(base_model=ctx.config.model, resource_id=f"{ctx.run_id}-serving"),
        ctx.trainer_ref,
        known.deployment if known else None,
    )
    ctx.beat("deployment requested")
    ctx.record(ResourcesAcquired(ctx.trainer_ref, ctx.deployment_ref))
