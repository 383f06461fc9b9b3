"""The control plane's state: trainer jobs and deployments, each backed by a supervised process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

import engine
from engine.backends.fireworks.phases import RESUMABLE_STATES
from engine.local.controlplane import store
from engine.local.controlplane.resources import (
    ACCOUNT,
    MAX_LORA_RANK,
    ApiError,
    DeploymentRecord,
    JobRecord,
    check_id,
    local_model,
    parse_int,
    parse_job_ref,
)
from engine.local.controlplane.schema import clean_deployment, clean_job
from engine.local.controlplane.supervisor import Child, ChildStartError
from engine.local.keys import CHILD_KEY_ENV, new_key
from engine.log import get_logger

log = get_logger("controlplane")

# A job being deleted or deleted is gone: it is never resumed or restarted. (Fireworks' "tombstone"
# states, in engine.backends.fireworks.phases, are the narrower set whose id can never be reused.)
GONE_STATES = frozenset({"JOB_STATE_DELETED", "JOB_STATE_DELETING"})


class ControlPlane:
    def __init__(
        self,
        root: Path,
        *,
        default_model: str | None = None,
        aliases: Mapping[str, str] | None = None,
        startup_timeout_s: float = 300.0,
        python: str = sys.executable,
        child_argv: Callable[[str, list[str]], list[str]] | None = None,
        model_roots: Sequence[Path] = (),
    ) -> None:
        self.root = root
        self.default_model = default_model
        self.aliases = dict(aliases or {})
        # baseModel may name a model directory only under these (and never reveals other paths).
        self.model_roots = tuple(Path(r) for r in model_roots)
        self.startup_timeout_s = startup_timeout_s
        self.python = python
        # (kind, args) -> argv; tests swap in a stand-in server, the default runs `hotloop serve <kind>`.
        self.child_argv = child_argv or (
            lambda kind, args: [self.python, "-m", "engine.cli", "serve", kind, *args]
        )
        self.jobs: dict[str, JobRecord] = {}
        self.deployments: dict[str, DeploymentRecord] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False

    # -- plumbing ---------------------------------------------------------------------------
    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _env(self, child_key: str) -> dict[str, str]:
        """The child's environment, carrying its own API key (never on the command line, which
        every user of the host can read in ``ps``)."""
        env = dict(os.environ)
        env[CHILD_KEY_ENV] = child_key
        # Children import `engine` from the same tree as the control plane, wherever they start.
        repo = str(Path(engine.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH", "")) if p)
        env.setdefault("TINKER_TELEMETRY", "0")
        return env

    async def close(self) -> None:
        """Stop every child (process groups) and every supervisor task."""
        self._closing = True
        records: list[JobRecord | DeploymentRecord] = [*self.jobs.values(), *self.deployments.values()]
        children = [r.child for r in records if r.child is not None]
        await asyncio.gather(*(c.stop(grace_s=10.0) for c in children), return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def kill_all_now(self) -> None:
        records: list[JobRecord | DeploymentRecord] = [*self.jobs.values(), *self.deployments.values()]
        for record in records:
            if record.child is not None:
                record.child.kill_now()

    def restore(self) -> None:
        """Reload the records a previous control plane left in ``root`` and restart their processes
        (same buckets, same state dirs); deleted jobs stay deleted. Needs a running loop."""
        for job in store.load_jobs(self.root):
            self.jobs[job.job_id] = job
            if job.state != "JOB_STATE_DELETED":
                job.restarts += 1
                self._start_trainer(job)
        for dep in store.load_deployments(self.root):
            self.deployments[dep.deployment_id] = dep
            self._restart_deployment(dep, "CREATING")
        if self.jobs or self.deployments:
            log.info("restored resources", jobs=len(self.jobs), deployments=len(self.deployments))

    # -- trainer jobs -----------------------------------------------------------------------
    def job(self, job_id: str) -> JobRecord:
        record = self.jobs.get(job_id)
        if record is None:
            raise ApiError(404, f"rlorTrainerJob 'accounts/{ACCOUNT}/rlorTrainerJobs/{job_id}' not found")
        return record

    def create_job(self, job_id: str, body: dict[str, Any]) -> tuple[int, JobRecord]:
        check_id(job_id, "rlorTrainerJobId")
        if job_id in self.jobs:
            return 409, self.jobs[job_id]
        body = clean_job(body)
        training = body.get("trainingConfig")
        if not isinstance(training, dict):
            raise ApiError(400, "trainingConfig: required object with at least baseModel")
        model = local_model(
            training.get("baseModel"),
            "trainingConfig.baseModel",
            self.default_model,
            self.model_roots,
            aliases=self.aliases,
        )
        lora_rank = parse_int(
            training, "loraRank", "trainingConfig.loraRank", default=0, lo=0, hi=MAX_LORA_RANK
        )
        lr = training.get("learningRate", 1e-5)
        if isinstance(lr, bool) or not isinstance(lr, int | float) or lr <= 0:
            raise ApiError(400, f"trainingConfig.learningRate: must be a positive number, got {lr!r}")
        if body.get("hotLoadDeploymentId"):
            raise ApiError(
                400,
                "hotLoadDeploymentId: hotload flow mismatch: this control plane uses per-trainer buckets; "
                "set hotLoadTrainerJob on the deployment instead",
            )
        job = JobRecord(job_id, self.root / "jobs" / job_id, body, model, lora_rank)
        job.bucket.mkdir(parents=True, exist_ok=True)
        job.state_dir.mkdir(parents=True, exist_ok=True)
        self.jobs[job_id] = job
        store.save_job(job)
        self._start_trainer(job)
        log.info("trainer job created", job_id=job_id, model=model, lora_rank=lora_rank)
        return 200, job

    def _start_trainer(self, job: JobRecord) -> None:
        job.generation += 1
        job.url = None
        self._spawn(self._run_trainer(job, job.generation, job.child))

    async def _run_trainer(self, job: JobRecord, gen: int, previous: Child | None) -> None:
        if previous is not None:
            await previous.stop()
        job.set_state("JOB_STATE_CREATING", "starting trainer process")
        argv = self.child_argv(
            "trainer",
            [
                "--port",
                "0",
                "--model",
                job.model,
                "--bucket",
                str(job.bucket),
                "--state-dir",
                str(job.state_dir),
                *_alias_args(job),
                "--api-key-env",
                CHILD_KEY_ENV,
            ],
        )
        key = new_key("tml-")  # per process: the tinker client insists on the prefix
        child = Child(
            f"trainer[{job.job_id}]",
            argv,
            url_prefix="HOTLOOP_TRAINER_URL",
            log_path=job.job_dir / "trainer.log",
            env=self._env(key),
        )
        job.child, job.child_key = child, key
        try:
            url = await child.start(self.startup_timeout_s)
        except ChildStartError as exc:
            if job.generation == gen and not self._closing:
                job.set_state("JOB_STATE_FAILED", str(exc))
            return
        if job.generation != gen or self._closing:  # deleted or restarted while it booted
            await child.stop()
            return
        job.url = url
        job.set_state("JOB_STATE_RUNNING", "trainer serving")
        await child.wait()  # unbounded on purpose: this task supervises the process for its lifetime
        if job.generation == gen and not self._closing and job.state == "JOB_STATE_RUNNING":
            job.url = None
            job.set_state("JOB_STATE_FAILED", f"trainer process {child.exit_reason()}")
            log.warning("trainer process died", job_id=job.job_id, reason=job.message)
            await child.stop()  # sweep anything the dead trainer left in its process group

    def resume_job(self, job_id: str) -> JobRecord:
        job = self.job(job_id)
        if job.state in GONE_STATES:
            raise ApiError(412, f"rlorTrainerJob {job_id!r} is {job.state} and cannot be resumed")
        if job.state in RESUMABLE_STATES:
            job.restarts += 1
            store.save_job(job)
            job.set_state(
                "JOB_STATE_CREATING", "resuming: restarting trainer process with the same bucket and state"
            )
            self._start_trainer(job)
            log.info("trainer job resumed", job_id=job_id, restarts=job.restarts)
        return job  # already starting or running: resume is a no-op, so retries are safe

    def delete_job(self, job_id: str) -> JobRecord:
        job = self.job(job_id)
        if job.state not in GONE_STATES:
            job.generation += 1
            job.set_state("JOB_STATE_DELETING", "deleting")
            store.save_job(job)  # the deletion is durable at once
            self._spawn(self._finish_delete_job(job, job.child))
        return job

    async def _finish_delete_job(self, job: JobRecord, child: Child | None) -> None:
        if child is not None:
            await child.stop()
        job.url = None
        job.set_state("JOB_STATE_DELETED", "deleted")

    # -- deployments ------------------------------------------------------------------------
    def deployment(self, deployment_id: str) -> DeploymentRecord:
        record = self.deployments.get(deployment_id)
        if record is None:
            raise ApiError(404, f"deployment 'accounts/{ACCOUNT}/deployments/{deployment_id}' not found")
        return record

    def _linked_bucket(self, body: dict[str, Any], model: str, field_name: str) -> Path | None:
        ref = body.get("hotLoadTrainerJob")
        if ref is None:
            return None
        if body.get("hotLoadBucketUrl"):
            raise ApiError(400, "hotLoadBucketUrl: conflicts with hotLoadTrainerJob; set exactly one")
        job_id = parse_job_ref(ref, field_name)
        job = self.jobs.get(job_id)
        if job is None:
            raise ApiError(400, f"{field_name}: trainer job {ref!r} not found")
        if job.state in GONE_STATES:
            raise ApiError(400, f"{field_name}: trainer job {ref!r} is {job.state}")
        if job.model != model:
            raise ApiError(
                400,
                f"baseModel: {body.get('baseModel')!r} does not match the base model of {field_name} {ref!r} "
                f"({job.body['trainingConfig'].get('baseModel')!r})",
            )
        return job.bucket

    def _check_deployment_body(self, body: dict[str, Any]) -> None:
        lo = parse_int(body, "minReplicaCount", "minReplicaCount", default=0, lo=0, hi=100)
        hi = parse_int(body, "maxReplicaCount", "maxReplicaCount", default=1, lo=0, hi=100)
        if lo > hi:
            raise ApiError(400, f"minReplicaCount: {lo} exceeds maxReplicaCount {hi}")
        body["minReplicaCount"], body["maxReplicaCount"] = lo, hi  # proto3 JSON may send strings
        if body.get("hotLoadTransitionType") not in (None, "ASYNC", "SYNC"):
            raise ApiError(
                400, f"hotLoadTransitionType: must be ASYNC or SYNC, got {body['hotLoadTransitionType']!r}"
            )

    def create_deployment(self, deployment_id: str, body: dict[str, Any]) -> tuple[int, DeploymentRecord]:
        check_id(deployment_id, "deploymentId")
        if deployment_id in self.deployments:
            return 409, self.deployments[deployment_id]
        body = clean_deployment(body)
        model = local_model(
            body.get("baseModel"), "baseModel", self.default_model, self.model_roots, aliases=self.aliases
        )
        self._check_deployment_body(body)
        dep_dir = self.root / "deployments" / deployment_id
        bucket = self._linked_bucket(body, model, "hotLoadTrainerJob") or dep_dir / "bucket"
        bucket.mkdir(parents=True, exist_ok=True)
        dep = DeploymentRecord(deployment_id, dep_dir, body, model, bucket)
        self.deployments[deployment_id] = dep
        store.save_deployment(dep)
        self._restart_deployment(dep, "CREATING")
        log.info("deployment created", deployment_id=deployment_id, model=model, bucket=str(bucket))
        return 200, dep

    def _restart_deployment(self, dep: DeploymentRecord, state: str) -> None:
        dep.generation += 1
        dep.url = None
        previous, dep.child = dep.child, None
        if dep.replicas_wanted:
            dep.set_state(state, "starting deployment process")
            self._spawn(self._run_deployment(dep, dep.generation, previous))
        else:
            dep.set_state("READY", "scaled to zero replicas")
            if previous is not None:
                self._spawn(previous.stop())

    async def _run_deployment(self, dep: DeploymentRecord, gen: int, previous: Child | None) -> None:
        if previous is not None:
            await previous.stop()
        args = ["--port", "0", "--model", dep.model, "--bucket", str(dep.bucket)]
        argv = self.child_argv("deployment", [*args, "--api-key-env", CHILD_KEY_ENV])
        key = new_key("hl-child-")
        child = Child(
            f"deployment[{dep.deployment_id}]",
            argv,
            url_prefix="HOTLOOP_DEPLOYMENT_URL",
            log_path=dep.dep_dir / "deployment.log",
            env=self._env(key),
        )
        dep.child, dep.child_key = child, key
        try:
            url = await child.start(self.startup_timeout_s)
        except ChildStartError as exc:
            if dep.generation == gen and not self._closing:
                dep.set_state("FAILED", str(exc))
            return
        if dep.generation != gen or self._closing:
            await child.stop()
            return
        dep.url = url
        dep.set_state("READY", "serving")
        await child.wait()  # unbounded on purpose: this task supervises the process for its lifetime
        if dep.generation == gen and not self._closing and dep.state == "READY":
            dep.url = None
            dep.set_state("FAILED", f"deployment process {child.exit_reason()}")
            log.warning("deployment process died", deployment_id=dep.deployment_id, reason=dep.message)
            await child.stop()

    def patch_deployment(self, deployment_id: str, body: dict[str, Any], mask: list[str]) -> DeploymentRecord:
        dep = self.deployment(deployment_id)
        if dep.state in ("DELETING", "DELETED"):
            raise ApiError(412, f"deployment {deployment_id!r} is {dep.state}")
        camel = {m: "".join(w.capitalize() if i else w for i, w in enumerate(m.split("_"))) for m in mask}
        fields = [camel[m] for m in mask] if mask else list(body)
        allowed = {
            "minReplicaCount", "maxReplicaCount", "hotLoadTrainerJob", "hotLoadTransitionType",
            "description", "displayName", "annotations",
        }  # fmt: skip
        unknown = [f for f in fields if f not in allowed]
        if unknown:
            raise ApiError(
                400, f"updateMask: field(s) {unknown} cannot be updated (allowed: {sorted(allowed)})"
            )
        body = clean_deployment(body)
        new_body = dict(dep.body)
        for f in fields:
            if f in body:
                new_body[f] = body[f]
            else:
                new_body.pop(f, None)
        self._check_deployment_body(new_body)
        new_bucket = self._linked_bucket(new_body, dep.model, "hotLoadTrainerJob") or dep.dep_dir / "bucket"
        was_wanted, old_bucket = dep.replicas_wanted, dep.bucket
        dep.body, dep.bucket = new_body, new_bucket
        roll = new_bucket != old_bucket or dep.replicas_wanted != was_wanted
        store.save_deployment(dep)
        if roll:
            new_bucket.mkdir(parents=True, exist_ok=True)
            self._restart_deployment(dep, "UPDATING")
        return dep

    def delete_deployment(self, deployment_id: str) -> DeploymentRecord:
        dep = self.deployment(deployment_id)
        if dep.state != "DELETING":
            dep.generation += 1
            dep.set_state("DELETING", "deleting")
            store.forget_deployment(dep)
            self._spawn(self._finish_delete_deployment(dep, dep.child))
        return dep

    async def _finish_delete_deployment(self, dep: DeploymentRecord, child: Child | None) -> None:
        if child is not None:
            await child.stop()
        dep.url = None
        if self.deployments.get(dep.deployment_id) is dep:  # hard delete: the id can be reused
            del self.deployments[dep.deployment_id]


def _alias_args(job: JobRecord) -> list[str]:
    """The trainer answers to the base model name the job was created with (a client sends that
    name to create_model), when it is not the local model's own name."""
    asked = job.body.get("trainingConfig", {}).get("baseModel")
    return ["--alias", asked] if isinstance(asked, str) and asked != job.model else []


PLANE: web.AppKey[ControlPlane] = web.AppKey("plane", ControlPlane)
