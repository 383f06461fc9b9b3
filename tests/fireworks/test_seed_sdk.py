"""The seed workflow (Fireworks' training-and-sampling walkthrough) written with Fireworks' own SDK,
``fireworks-ai[training-sdk]==1.2.30``, run against ``hotloop up``: only the model names, the shape
id and the base URL are changed, plus the two lines Fireworks' SDK 1.2.30 itself no longer accepts
(each marked ``# 1.2.30:``). The user-defined parts of the seed (``build_batch``,
``compute_objective``, the prompts) are the e2e tests' own.

After each weight sync, the identity the deployment reports, and the one it names for a sampled
completion, is the one ``save_and_hotload`` returned. Then the trainer process is killed and the
seed's reconnect path (``reconnect_and_wait``, a new ``FiretitanServiceClient``) continues training
from the trainer job's checkpoint. A second test does the same with LoRA (``lora_rank > 0``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import httpx
import pytest
import torch
from fw_flows import PROMPTS, batch

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="session")]


def compute_objective(data: list[Any], logprobs_list: list[torch.Tensor]) -> torch.Tensor:
    """The seed's user-defined objective: weighted NLL of the answer tokens."""
    return torch.stack(
        [
            -(lp * torch.tensor(d.loss_fn_inputs["weights"].data)).sum()
            for d, lp in zip(data, logprobs_list, strict=True)
        ]
    ).sum()


def served(
    deploy_mgr: Any, base_url: str, api_key: str, deployment_id: str, base_model: str
) -> tuple[str, str]:
    """(identity the hot-load status reports, identity the deployment names for a completion)."""
    status = deploy_mgr.hotload_check_status(deployment_id, base_model)
    model = f"accounts/{deploy_mgr.account_id}/deployments/{deployment_id}"
    r = httpx.post(
        f"{base_url}/inference/v1/completions",
        json={"model": model, "prompt": [1, 2], "max_tokens": 2, "temperature": 0.0},
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=60,
    )
    r.raise_for_status()
    return status["replicas"][0]["current_snapshot_identity"], r.json()["snapshot_identity"]


def seed_workflow(base_url: str, api_key: str, tokenizer: Any) -> dict[str, Any]:
    facts: dict[str, Any] = {"synced": [], "served": [], "losses": [], "steps": []}
    # ---- 1. Bootstrap (the seed, verbatim but for names) ----------------------------------------
    from concurrent.futures import ThreadPoolExecutor

    # 1.2.30: its training types are its own port of tinker's (a tinker.AdamParams is refused).
    import fireworks.training.sdk as tinker
    from fireworks.training.sdk import (
        DeploymentConfig,
        DeploymentManager,
        FiretitanServiceClient,
        TrainerJobConfig,
        TrainerJobManager,
        WeightSyncer,
    )

    shape_id = "accounts/fireworks/trainingShapes/tiny"

    rlor_mgr = TrainerJobManager(api_key=api_key, base_url=base_url)
    deploy_mgr = DeploymentManager(api_key=api_key, base_url=base_url)

    # This is the only shape-specific value you choose
    profile = rlor_mgr.resolve_training_profile(shape_id)
    facts["profile"] = profile

    # Request the trainer first, then wait separately.
    created = rlor_mgr.create(
        TrainerJobConfig(
            base_model="accounts/fireworks/models/tiny",
            training_shape_ref=profile.training_shape_version,
            lora_rank=0,
            learning_rate=1e-5,
            # 1.2.30: gradient_accumulation_steps=4 is refused (server-side accumulation was removed).
        )
    )
    print(f"Trainer requested: {created.job_id}")

    # Create deployment linked to the trainer.
    deploy_info = deploy_mgr.create_or_get(
        DeploymentConfig(
            deployment_id="research-serving",
            base_model="accounts/fireworks/models/tiny",
            hot_load_trainer_job=created.job_name,
            min_replica_count=0,
            max_replica_count=1,
        )
    )

    # Wait for trainer and deployment readiness in parallel.
    with ThreadPoolExecutor(max_workers=2) as pool:
        trainer_future = pool.submit(rlor_mgr.wait_for_ready, created.job_id)
        deploy_future = pool.submit(deploy_mgr.wait_for_ready, deploy_info.deployment_id)
        endpoint = trainer_future.result()
        deploy_info = deploy_future.result()

    # Connect a training client to the live trainer endpoint.
    service = FiretitanServiceClient(base_url=endpoint.base_url, api_key=api_key)
    training_client = service.create_training_client(
        base_model="accounts/fireworks/models/tiny",
        lora_rank=0,
    )

    # ---- 2. Train step with custom objective ---------------------------------------------------
    def build_batch(step: int) -> list[Any]:
        return batch(tinker, tokenizer, step)

    def objective(
        data: list[Any], logprobs_list: list[torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        loss = compute_objective(data=data, logprobs_list=logprobs_list)
        return loss, {"loss": float(loss.item())}

    adam_params = tinker.AdamParams(learning_rate=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01)
    total_steps, eval_interval = 4, 2

    # ---- 3. Checkpoint, weight sync, and evaluate -------------------------------------------------
    from fireworks.training.sdk import AdaptiveConcurrencyController, DeploymentSampler
    from transformers import AutoTokenizer

    from engine.local.models import resolve_model

    tracker = WeightSyncer(
        policy_client=training_client,
        deploy_mgr=deploy_mgr,
        deployment_id="research-serving",
        base_model="accounts/fireworks/models/tiny",
        hotload_timeout=600,
        first_checkpoint_type="base",
    )
    eval_prompts = [{"role": "user", "content": PROMPTS[1]}]

    for step in range(1, total_steps + 1):
        out = training_client.forward_backward_custom(build_batch(step), objective).result()
        result = training_client.optim_step(
            tinker.AdamParams(learning_rate=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01)
        ).result()
        facts["losses"].append(out.metrics["loss"])
        facts["steps"].append(result.metrics.get("optimizer_step:max"))

        if step % eval_interval == 0:
            # WeightSyncer auto-selects base (first) or delta (subsequent)
            name = tracker.save_and_hotload(f"step_{step:05d}")
            facts["synced"].append(name)
            facts["served"].append(
                served(deploy_mgr, base_url, api_key, "research-serving", "accounts/fireworks/models/tiny")
            )

            # Sample via deployment for evaluation
            tokenizer = AutoTokenizer.from_pretrained(str(resolve_model("tiny")), trust_remote_code=True)
            sampler = DeploymentSampler(
                inference_url=deploy_mgr.inference_url,
                model=f"accounts/{deploy_mgr.account_id}/deployments/research-serving",
                api_key=api_key,
                tokenizer=tokenizer,
                concurrency_controller=AdaptiveConcurrencyController(initial_window=16),
            )
            completions = asyncio.run(sampler.sample_with_tokens(messages=eval_prompts, n=1))
            facts.setdefault("completions", []).append(completions)
            print({"step": step, "eval_score": len(completions)})

    # ---- Reconnecting to a running trainer (after its process is killed) ---------------------------
    training_client.save_state("before-kill").result()
    job_id = created.job_id
    os.kill(rlor_mgr.get(job_id)["hotloop"]["pid"], signal.SIGKILL)  # the trainer process dies
    deadline = time.monotonic() + 120
    while rlor_mgr.get(job_id)["state"] != "JOB_STATE_FAILED":  # the control plane notices
        assert time.monotonic() < deadline, "the control plane never marked the killed trainer FAILED"
        time.sleep(0.2)

    service.close()  # the dead trainer's client: stop its heartbeats

    # Reconnect to existing job (handles preemption, transitional states)
    endpoint = rlor_mgr.reconnect_and_wait(job_id, timeout_s=300)

    # Create a new client on the same trainer
    service = FiretitanServiceClient(base_url=endpoint.base_url, api_key=api_key)
    training_client = service.create_training_client(
        base_model="accounts/fireworks/models/tiny",
        lora_rank=0,
    )
    facts["checkpoints"] = training_client.list_checkpoints()
    training_client.load_state_with_optimizer(facts["checkpoints"][-1]).result()

    # Continue training — step_id and checkpoints are preserved
    out = training_client.forward_backward_custom(build_batch(total_steps + 1), objective).result()
    result = training_client.optim_step(adam_params).result()
    facts["losses"].append(out.metrics["loss"])
    facts["steps"].append(result.metrics.get("optimizer_step:max"))

    # A new client means a new delta chain: its first sync is a base again.
    tracker = WeightSyncer(
        policy_client=training_client,
        deploy_mgr=deploy_mgr,
        deployment_id="research-serving",
        base_model="accounts/fireworks/models/tiny",
        hotload_timeout=600,
        first_checkpoint_type="base",
    )
    name = tracker.save_and_hotload(f"step_{total_steps + 1:05d}")
    facts["synced"].append(name)
    facts["served"].append(
        served(deploy_mgr, base_url, api_key, "research-serving", "accounts/fireworks/models/tiny")
    )
    facts["control_plane_checkpoints"] = rlor_mgr.list_checkpoints(job_id)
    facts["job_name"] = created.job_name
    service.close()
    return facts


async def test_seed_workflow_with_fireworks_sdk(fw_stack: Any, tiny_tokenizer: Any) -> None:
    facts = await asyncio.to_thread(seed_workflow, fw_stack.base_url, fw_stack.api_key, tiny_tokenizer)
    profile = facts["profile"]
    assert profile.training_shape_version == "accounts/fireworks/trainingShapes/tiny/versions/1"
    assert profile.max_supported_context_length == 1024 and not profile.supports_lora

    # The trainer's own step counter: 1..4, then 5 after the restore from the checkpoint at 4.
    assert facts["steps"] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert facts["losses"][-2] < facts["losses"][0]  # the objective is being optimized
    # Each sync: what was saved is what the deployment serves and what sampled completions name.
    assert len(facts["synced"]) == 3
    for name, (reported, sampled) in zip(facts["synced"], facts["served"], strict=True):
        assert reported == sampled == name
    for completions in facts["completions"]:
        assert len(completions) == 1 and completions[0].completion_len > 0
    # Base, then delta, then (a new client after the reconnect) base: promotable are the bases.
    rows = {r["name"].rsplit("/", 1)[-1]: r for r in facts["control_plane_checkpoints"]}
    first, second, third = facts["synced"]
    assert rows[first]["promotable"] and rows[third]["promotable"] and not rows[second]["promotable"]
    assert facts["checkpoints"] == ["before-kill"]


def lora_workflow(base_url: str, api_key: str, tokenizer: Any) -> dict[str, Any]:
    """The same loop with LoRA (``lora_rank > 0``), on the manual launch path: every sampler save is
    a base (Fireworks' rule for LoRA), and a LoRA checkpoint is promotable."""
    from concurrent.futures import ThreadPoolExecutor

    import fireworks.training.sdk as fw

    model = "accounts/fireworks/models/tiny"
    rlor = fw.TrainerJobManager(api_key=api_key, base_url=base_url)
    deploy = fw.DeploymentManager(api_key=api_key, base_url=base_url)
    created = rlor.create(fw.TrainerJobConfig(base_model=model, lora_rank=8, learning_rate=1e-3))
    deploy.create_or_get(
        fw.DeploymentConfig(
            deployment_id="lora-serving", base_model=model, hot_load_trainer_job=created.job_name
        )
    )
    with ThreadPoolExecutor(max_workers=2) as pool:
        trainer = pool.submit(rlor.wait_for_ready, created.job_id, poll_interval_s=0.5)
        serving = pool.submit(deploy.wait_for_ready, "lora-serving", poll_interval_s=0.5)
        endpoint = trainer.result()
        serving.result()
    service = fw.FiretitanServiceClient(base_url=endpoint.base_url, api_key=api_key)
    client = service.create_training_client(base_model=model, lora_rank=8)
    syncer = fw.WeightSyncer(
        policy_client=client, deploy_mgr=deploy, deployment_id="lora-serving", base_model=model, lora_rank=8
    )
    facts: dict[str, Any] = {"losses": [], "synced": [], "served": []}

    def objective(
        data: list[Any], logprobs_list: list[torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        loss = compute_objective(data, logprobs_list)
        return loss, {"loss": float(loss.item())}

    for step in (1, 2, 3):
        out = client.forward_backward_custom(batch(fw, tokenizer, 0), objective).result()  # one batch, fitted
        client.optim_step(fw.AdamParams(learning_rate=1e-2)).result()
        facts["losses"].append(out.metrics["loss"])
        if step > 1:
            facts["synced"].append(syncer.save_and_hotload(f"lora_{step:05d}"))
            facts["served"].append(served(deploy, base_url, api_key, "lora-serving", model))
    facts["ledger"] = deploy.hotload_check_status("lora-serving", model)["replicas"][0]["ledger"]
    rows = rlor.list_checkpoints(created.job_id)
    facts["rows"] = rows
    last = next(r for r in rows if r["name"].endswith(facts["synced"][-1]))
    facts["promoted"] = rlor.promote_checkpoint(
        name=last["name"], output_model_id="lora-promoted", base_model=model
    )
    facts["moe"] = rlor.model_is_moe(model)
    client.unload_model().result()
    service.close()
    return facts


async def test_lora_with_fireworks_sdk(fw_stack: Any, tiny_tokenizer: Any) -> None:
    facts = await asyncio.to_thread(lora_workflow, fw_stack.base_url, fw_stack.api_key, tiny_tokenizer)
    assert facts["losses"][-1] < facts["losses"][0], facts["losses"]
    for name, (reported, sampled) in zip(facts["synced"], facts["served"], strict=True):
        assert reported == sampled == name
    assert [e["kind"] for e in facts["ledger"]] == ["base", "base"]  # LoRA: never a delta
    lora_rows = [r for r in facts["rows"] if r["name"].rsplit("/", 1)[-1] in facts["synced"]]
    assert len(lora_rows) == 2
    assert all(r["promotable"] and r["checkpointType"] == "CHECKPOINT_TYPE_INFERENCE_LORA" for r in lora_rows)
    assert facts["promoted"]["name"] == "accounts/local/models/lora-promoted"
    assert facts["promoted"]["state"] == "READY" and facts["moe"] is False
