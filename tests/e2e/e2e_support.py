"""Shared steps of the end-to-end tests: the seed's bootstrap in hotloop's async API, its data and
objective, and the trainer-side logprobs of a sampled sequence."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

import tinker
from support.tinker_data import answer_batch, objective
from support.tinker_data import trainer_logprobs as trainer_logprobs

from engine.backends.fireworks import (
    DeploymentConfig,
    DeploymentInfo,
    DeploymentManager,
    TrainerEndpoint,
    TrainerJobConfig,
    TrainerJobManager,
)
from engine.backends.tinker import TrainingSession

T = TypeVar("T")
MODEL = "tiny"
ADAM = tinker.AdamParams(learning_rate=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01)
WAIT = {"timeout_s": 240.0, "poll_interval_s": 0.25}
PROMPTS = ["hello there", "count to three", "name a colour", "what is two plus two"]


@dataclass
class Interval:
    start: float
    end: float


async def timed(aw: Awaitable[T]) -> tuple[T, Interval]:
    start = time.monotonic()
    result = await aw
    return result, Interval(start, time.monotonic())


@dataclass
class Bootstrapped:
    rlor: TrainerJobManager
    deploy_mgr: DeploymentManager
    job_id: str
    endpoint: TrainerEndpoint
    deployment: DeploymentInfo | None
    waits: tuple[Interval, Interval] | None


async def bootstrap(stack: Any, name: str, *, deployment: bool = True) -> Bootstrapped:
    """The seed's step 1: request the trainer, then a deployment linked to it, wait for both at once."""
    rlor = TrainerJobManager(stack.api_key, stack.base_url)
    deploy_mgr = DeploymentManager(stack.api_key, stack.base_url)
    created = await rlor.create(
        TrainerJobConfig(base_model=MODEL, lora_rank=0, learning_rate=1e-2, requested_job_id=f"{name}-job")
    )
    if not deployment:
        endpoint = await rlor.wait_for_ready(created.job_id, **WAIT)
        return Bootstrapped(rlor, deploy_mgr, created.job_id, endpoint, None, None)
    info = await deploy_mgr.create_or_get(
        DeploymentConfig(
            deployment_id=f"{name}-serving",
            base_model=MODEL,
            hot_load_trainer_job=created.job_name,
            min_replica_count=0,
            max_replica_count=1,
        )
    )
    (endpoint, t_wait), (info, d_wait) = await asyncio.gather(
        timed(rlor.wait_for_ready(created.job_id, **WAIT)),
        timed(deploy_mgr.wait_for_ready(info.deployment_id, **WAIT)),
    )
    return Bootstrapped(rlor, deploy_mgr, created.job_id, endpoint, info, (t_wait, d_wait))


async def close(b: Bootstrapped) -> None:
    await b.rlor.aclose()
    await b.deploy_mgr.aclose()


def build_batch(tokenizer: Any, step: int) -> list[tinker.Datum]:
    """Chat-rendered prompt + short answer per datum (the first two prompts); loss weights on the
    answer tokens only."""
    return answer_batch(tokenizer, step, PROMPTS[:2])


async def train_steps(session: TrainingSession, tokenizer: Any, steps: int, first: int = 0) -> list[float]:
    """forward_backward_custom + optim_step per step, submitted back to back (same-cycle pipelining)."""
    losses = []
    for step in range(first, first + steps):
        fb = session.forward_backward_custom(build_batch(tokenizer, step), objective)
        opt = session.optim_step(ADAM)
        out = await fb
        await opt
        losses.append(out.metrics["loss"])
    return losses


def served_identity(status: dict[str, Any]) -> str | None:
    return status["replicas"][0].get("current_snapshot_identity")
