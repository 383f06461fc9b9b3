"""The control-plane backends: a trainer job and a deployment on a Fireworks-shaped control plane
(Fireworks itself, or hotloop's embedded ``hotloop up``), satisfying engine.backends.base.

The trainer is a job (``rlorTrainerJobs``) reached through the control plane's trainer gateway, in
one of two dialects (``trainer.dialect``): tinker's protobuf through the official tinker client
(engine.backends.tinker.TrainingSession), or Fireworks' JSON through hotloop's own client
(engine.backends.fireworks.trainer_session). ``auto`` picks tinker on hotloop's control plane and
Fireworks' dialect anywhere else, and the choice is journaled in the ref. The deployment is
hot-loaded through the hot-load API (engine.backends.fireworks.hotload) and sampled in Fireworks'
completion dialect. Ids are the run's: a retried or resumed request finds the same job and
deployment.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote, urlsplit

from engine.backends.base import (
    DeploymentRef,
    DeploymentSpec,
    Health,
    HotloadPolicy,
    RestorePoint,
    SnapshotStore,
    TrainerRef,
    TrainerSession,
    TrainerSpec,
)
from engine.backends.fireworks.config import TrainerJobConfig
from engine.backends.fireworks.deployments import DeploymentManager
from engine.backends.fireworks.dialect import FireworksDialect
from engine.backends.fireworks.health import (
    deployment_config,
    deployment_health,
    job_health,
    recover_deployment,
    recover_job,
)
from engine.backends.fireworks.hotload import ControlPlaneHotLoader
from engine.backends.fireworks.jobs import TrainerJobManager
from engine.backends.tinker.session import TokenizerLoader
from engine.errors import FatalError
from engine.weights.store import DirectoryStore

if TYPE_CHECKING:
    from engine.sampling.controllers import ConcurrencyController
    from engine.sampling.retry import SamplingRetryPolicy
    from engine.sampling.sampler import DeploymentSampler

KIND = "control_plane"
POLL_S = 0.25
TrainerDialect = Literal["auto", "tinker", "fireworks"]


def trainer_dialect(dialect: TrainerDialect, job: dict[str, Any]) -> Literal["tinker", "fireworks"]:
    """The wire a run speaks to a trainer job: as configured, or for ``auto`` tinker's protobuf when
    the job is on hotloop's control plane (the faster path its trainer also serves) and Fireworks'
    JSON dialect otherwise (Fireworks refuses tinker's transport)."""
    if dialect != "auto":
        return dialect
    return "tinker" if isinstance(job.get("hotloop"), dict) else "fireworks"


class ControlPlaneTrainer:
    kind = KIND

    def __init__(
        self,
        jobs: TrainerJobManager,
        api_key: str,
        tokenizer_loader: TokenizerLoader | None,
        dialect: TrainerDialect = "auto",
    ) -> None:
        self.jobs = jobs
        self._api_key = api_key
        self._tokenizer_loader = tokenizer_loader
        self.dialect = dialect

    async def provision(self, spec: TrainerSpec, known: TrainerRef | None) -> TrainerRef:
        await self.jobs.resolve_account_id()
        job_id = known.resource_id if known is not None else spec.resource_id
        job = await self.jobs.try_get(job_id)
        if job is None:
            await self.jobs.create(
                TrainerJobConfig(
                    base_model=spec.base_model,
                    lora_rank=spec.lora_rank,
                    learning_rate=spec.learning_rate,
                    requested_job_id=job_id,
                    display_name=spec.display_name[:63],
                )
            )
            job = await self.jobs.get(job_id)
        attrs = {
            "job_name": str(job.get("name") or f"accounts/{self.jobs.account_id}/rlorTrainerJobs/{job_id}"),
            "dialect": trainer_dialect(self.dialect, job),
        }
        bucket = (job.get("hotloop") or {}).get("bucket")  # only hotloop's control plane has a local bucket
        if bucket:
            attrs["bucket"] = str(bucket)
        return TrainerRef(KIND, job_id, attrs)

    async def wait_ready(self, ref: TrainerRef, *, reattach: bool, timeout_s: float) -> TrainerRef:
        if reattach:
            endpoint = await self.jobs.reconnect_and_wait(
                ref.resource_id, timeout_s=timeout_s, poll_interval_s=POLL_S
            )
        else:
            endpoint = await self.jobs.wait_for_ready(
                ref.resource_id, ref.attrs.get("job_name"), timeout_s=timeout_s, poll_interval_s=POLL_S
            )
        return replace(ref, attrs={**ref.attrs, "base_url": endpoint.base_url})

    async def open_session(
        self, ref: TrainerRef, spec: TrainerSpec, restore: RestorePoint | None
    ) -> TrainerSession:
        base_url = ref.attrs.get("base_url")
        if not base_url:
            raise FatalError(f"trainer job {ref.resource_id!r}: open_session before wait_ready")
        # A ref journaled before the dialect was recorded came from hotloop's tinker path.
        if ref.attrs.get("dialect", "tinker") == "fireworks":
            from engine.backends.fireworks.trainer_session import FireworksTrainingSession

            return await FireworksTrainingSession.connect(
                base_url,
                self._api_key,
                spec.base_model,
                spec.lora_rank,
                restore_path=restore.state_path if restore else None,
                optimizer_steps=restore.optimizer_steps if restore else 0,
                tokenizer_loader=self._tokenizer_loader,
            )
        from engine.backends.tinker.session import TrainingSession

        if restore is not None:
            return await TrainingSession.from_state(
                base_url,
                self._api_key,
                restore.state_path,
                with_optimizer=True,
                tokenizer_loader=self._tokenizer_loader,
                optimizer_steps=restore.optimizer_steps,
            )
        return await TrainingSession.connect(
            base_url, self._api_key, spec.base_model, spec.lora_rank, tokenizer_loader=self._tokenizer_loader
        )

    def snapshot_store(self, ref: TrainerRef) -> SnapshotStore | None:
        bucket = ref.attrs.get("bucket")
        return DirectoryStore(Path(bucket)) if bucket else None

    async def release(self, ref: TrainerRef, *, delete: bool) -> None:
        if delete:
            await self.jobs.delete(ref.resource_id)

    async def aclose(self) -> None:
        await self.jobs.aclose()

    async def health(self, ref: TrainerRef) -> Health:
        return await job_health(self.jobs, ref.resource_id)

    async def recover(self, ref: TrainerRef, *, timeout_s: float) -> TrainerRef:
        base_url = await recover_job(self.jobs, ref.resource_id, timeout_s=timeout_s, poll_s=POLL_S)
        return replace(ref, attrs={**ref.attrs, "base_url": base_url})


class ControlPlaneDeployment:
    kind = KIND
    # hotloop's deployments name the snapshot of every completion and finish in-flight completions on
    # the weights they started with (a swap waits for the batch to drain), so async RL keeps sampling
    # through a hot-load. Fireworks' deployments name no identity per completion, so the run verifies
    # the identity around sampling and drains the sampler around a hot-load. Which one this is, is
    # read off the deployment's record when it is provisioned (hotloop's carries a "hotloop" block),
    # unless the caller says.
    per_completion_identity: bool = False
    hotload_policy: HotloadPolicy = "drain"

    def __init__(
        self, deployments: DeploymentManager, api_key: str, *, per_completion_identity: bool | None = None
    ) -> None:
        self.deployments = deployments
        self._api_key = api_key
        self._declared = per_completion_identity
        if per_completion_identity is not None:
            self._set_identity_reporting(per_completion_identity)

    def _set_identity_reporting(self, per_completion: bool) -> None:
        self.per_completion_identity = per_completion
        self.hotload_policy = "keep" if per_completion else "drain"

    async def provision(
        self, spec: DeploymentSpec, trainer: TrainerRef, known: DeploymentRef | None
    ) -> DeploymentRef:
        await self.deployments.resolve_account_id()
        deployment_id = known.resource_id if known is not None else spec.resource_id
        config = deployment_config(deployment_id, spec.base_model, trainer, trainer_kind=KIND)
        job_name = config.hot_load_trainer_job
        info = await self.deployments.create_or_get(config)
        if self._declared is None:
            self._set_identity_reporting(bool(info.raw.get("hotloop")))
        attrs = {"base_model": spec.base_model}
        bucket = urlsplit(info.hot_load_bucket_url or "")
        if job_name is None and bucket.scheme == "file":
            # Not linked to a trainer job, on hotloop's control plane: the deployment reads a bucket
            # of its own, into which each snapshot is copied before its hot-load.
            attrs["own_bucket"] = unquote(bucket.path)
        return DeploymentRef(KIND, deployment_id, attrs)

    async def wait_ready(self, ref: DeploymentRef, *, timeout_s: float) -> DeploymentRef:
        await self.deployments.wait_for_ready(ref.resource_id, timeout_s=timeout_s, poll_interval_s=POLL_S)
        return ref

    def hot_loader(
        self, ref: DeploymentRef, store: SnapshotStore | None, *, timeout_s: float, poll_interval_s: float
    ) -> ControlPlaneHotLoader:
        # A deployment linked to its trainer job reads the trainer's bucket itself; one with a bucket of
        # its own (a Tinker trainer) gets each snapshot copied into that bucket from the store.
        bucket = ref.attrs.get("own_bucket")
        return ControlPlaneHotLoader(
            self.deployments,
            ref.resource_id,
            ref.attrs.get("base_model", ""),
            timeout_s=timeout_s,
            poll_interval_s=poll_interval_s,
            stage=(store, Path(bucket)) if store is not None and bucket else None,
        )

    def sampler(
        self,
        ref: DeploymentRef,
        *,
        tokenizer: Any,
        controller: ConcurrencyController,
        retry_policy: SamplingRetryPolicy,
    ) -> DeploymentSampler:
        from engine.sampling.sampler import DeploymentSampler

        return DeploymentSampler(
            self.deployments.inference_url,
            self.deployments.model_name(ref.resource_id),
            self._api_key,
            tokenizer=tokenizer,
            concurrency_controller=controller,
            retry_policy=retry_policy,
            dialect=FireworksDialect(),
        )

    async def release(self, ref: DeploymentRef, *, delete: bool) -> None:
        if delete:
            await self.deployments.delete(ref.resource_id)

    async def aclose(self) -> None:
        await self.deployments.aclose()

    async def health(self, ref: DeploymentRef) -> Health:
        return await deployment_health(self.deployments, ref.resource_id)

    async def recover(self, ref: DeploymentRef, trainer: TrainerRef, *, timeout_s: float) -> DeploymentRef:
        await recover_deployment(
            self.deployments, ref, trainer, trainer_kind=KIND, timeout_s=timeout_s, poll_s=POLL_S
        )
        return ref
