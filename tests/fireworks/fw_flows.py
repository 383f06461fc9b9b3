"""The operations of the contract test, written twice: with Fireworks' SDK (sync, as its users write
it) and with hotloop's Fireworks adapter (engine.backends.fireworks, async). Same ids, data,
objective and order: bootstrap a trainer job and a linked deployment, connect, one custom-loss step,
a base snapshot hot-loaded, one more step, a delta hot-loaded, a training-state save, unload."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from support.tinker_data import answer_batch
from support.tinker_data import objective as objective

MODEL = "accounts/fireworks/models/tiny"
LR = 1e-2
ADAM = {"learning_rate": 1e-2, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.01}
PROMPTS = ["hello there", "count to three"]


def batch(types: Any, tokenizer: Any, step: int) -> list[Any]:
    """Chat-rendered prompt + a short answer; loss weights on the answer tokens only. ``types`` is
    ``fireworks.training.sdk`` or ``tinker`` (both have Datum, ModelInput); the loss inputs are plain
    lists, as an SDK user writes them."""
    return answer_batch(tokenizer, step, PROMPTS, types, as_lists=True)


def fireworks_flow(base_url: str, api_key: str, job_id: str, dep_id: str, tokenizer: Any) -> list[str]:
    """With ``fireworks-ai`` 1.2.30 (blocking: run it in a thread). Returns the hot-loaded identities."""
    import fireworks.training.sdk as fw

    rlor = fw.TrainerJobManager(api_key=api_key, base_url=base_url)
    deploy = fw.DeploymentManager(api_key=api_key, base_url=base_url)
    created = rlor.create(
        fw.TrainerJobConfig(
            base_model=MODEL, lora_rank=0, learning_rate=LR, display_name="contract", requested_job_id=job_id
        )
    )
    deploy.create_or_get(
        fw.DeploymentConfig(
            deployment_id=dep_id,
            base_model=MODEL,
            hot_load_trainer_job=created.job_name,
            min_replica_count=0,
            max_replica_count=1,
        )
    )
    with ThreadPoolExecutor(max_workers=2) as pool:
        trainer = pool.submit(rlor.wait_for_ready, created.job_id, poll_interval_s=0.5, timeout_s=240)
        serving = pool.submit(deploy.wait_for_ready, dep_id, timeout_s=240, poll_interval_s=0.5)
        endpoint = trainer.result()
        serving.result()
    service = fw.FiretitanServiceClient(base_url=endpoint.base_url, api_key=api_key)
    client = service.create_training_client(base_model=MODEL, lora_rank=0)
    # hotloop's syncer has no warm-up request after a hot-load (it reads the identity back instead):
    # the same operations means no warm-up here either.
    syncer = fw.WeightSyncer(
        policy_client=client,
        deploy_mgr=deploy,
        deployment_id=dep_id,
        base_model=MODEL,
        hotload_timeout=120,
        warmup_after_hotload=False,
    )
    loaded = []
    for step in (1, 2):
        client.forward_backward_custom(batch(fw, tokenizer, step), objective).result()
        client.optim_step(fw.AdamParams(**ADAM)).result()
        loaded.append(syncer.save_and_hotload(f"step_{step:05d}"))
    client.save_state("ckpt-a").result()
    client.unload_model().result()
    service.close()  # stops its heartbeats (it sends nothing more)
    return loaded


async def hotloop_flow(base_url: str, api_key: str, job_id: str, dep_id: str, tokenizer: Any) -> list[str]:
    """With hotloop's adapter, as a run drives it (engine.backends.base's seam)."""
    import tinker

    from engine.backends.base import DeploymentSpec, TrainerSpec
    from engine.backends.fireworks import DeploymentManager, TrainerJobManager
    from engine.backends.fireworks.planes import ControlPlaneDeployment, ControlPlaneTrainer
    from engine.local.models import load_tokenizer
    from engine.weights import WeightSyncer

    trainer = ControlPlaneTrainer(
        TrainerJobManager(api_key, base_url), api_key, load_tokenizer, dialect="fireworks"
    )
    deployments = ControlPlaneDeployment(DeploymentManager(api_key, base_url), api_key)
    spec = TrainerSpec(MODEL, lora_rank=0, learning_rate=LR, resource_id=job_id, display_name="contract")
    try:
        ref = await trainer.provision(spec, None)
        dref = await deployments.provision(DeploymentSpec(MODEL, dep_id), ref, None)
        ref, dref = await asyncio.gather(
            trainer.wait_ready(ref, reattach=False, timeout_s=240),
            deployments.wait_ready(dref, timeout_s=240),
        )
        session = await trainer.open_session(ref, spec, None)
        loader = deployments.hot_loader(dref, None, timeout_s=120, poll_interval_s=0.5)
        syncer = WeightSyncer(session, loader)
        loaded = []
        for step in (1, 2):
            await session.forward_backward_custom(batch(tinker, tokenizer, step), objective)
            await session.optim_step(tinker.AdamParams(**ADAM))
            loaded.append(await syncer.save_and_hotload(f"step_{step:05d}"))
        await session.save_state("ckpt-a")
        await session.close()
        return loaded
    finally:
        await trainer.aclose()
        await deployments.aclose()
