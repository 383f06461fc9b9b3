"""Durable records of jobs and deployments, so a restarted `hotloop up` on the same state dir finds
them again (Fireworks jobs outlive their clients; here they outlive the control plane process).

One small JSON file per resource, written atomically (temp file + rename) on every lifecycle change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.files import write_json
from engine.local.controlplane.resources import ApiError, DeploymentRecord, JobRecord, check_id
from engine.local.controlplane.schema import clean_deployment, clean_job
from engine.local.inputs import BadInput, parse_json
from engine.log import get_logger

log = get_logger("controlplane.store")
JOB_FILE = "job.json"
DEPLOYMENT_FILE = "deployment.json"
MAX_RECORD_BYTES = 1024 * 1024  # records hold known, bounded fields only (``schema``)


def save_job(job: JobRecord) -> None:
    deleted = job.state in ("JOB_STATE_DELETING", "JOB_STATE_DELETED")
    write_json(
        job.job_dir / JOB_FILE,
        {
            "job_id": job.job_id,
            "body": job.body,
            "model": job.model,
            "lora_rank": job.lora_rank,
            "create_time": job.create_time,
            "restarts": job.restarts,
            "deleted": deleted,
        },
    )


def save_deployment(dep: DeploymentRecord) -> None:
    write_json(
        dep.dep_dir / DEPLOYMENT_FILE,
        {
            "deployment_id": dep.deployment_id,
            "body": dep.body,
            "model": dep.model,
            "bucket": str(dep.bucket),
            "create_time": dep.create_time,
        },
    )


def forget_deployment(dep: DeploymentRecord) -> None:
    (dep.dep_dir / DEPLOYMENT_FILE).unlink(missing_ok=True)


def _load(paths: list[Path]) -> list[dict[str, Any]]:
    rows = []
    for path in sorted(paths):
        try:
            if path.is_symlink() or path.stat().st_size > MAX_RECORD_BYTES:
                raise ValueError("a symlink or an oversized file, not a record this stack wrote")
            rows.append(parse_json(path.read_bytes()))
        except (OSError, ValueError, BadInput) as exc:  # a foreign or torn file must not stop the stack
            log.warning("skipping unreadable record", path=str(path), error=str(exc))
    return rows


def load_jobs(root: Path) -> list[JobRecord]:
    jobs = []
    for row in _load(list(root.glob(f"jobs/*/{JOB_FILE}"))):
        try:
            check_id(row["job_id"], "job_id")
            job = JobRecord(
                row["job_id"],
                root / "jobs" / row["job_id"],
                clean_job(row["body"]),
                row["model"],
                row["lora_rank"],
            )
            job.create_time, job.restarts = row["create_time"], row["restarts"]
        except (KeyError, TypeError, ApiError) as exc:  # a record missing fields must not stop the stack
            log.warning("skipping malformed job record", error=repr(exc))
            continue
        if row.get("deleted"):
            job.set_state("JOB_STATE_DELETED", "deleted")
        jobs.append(job)
    return jobs


def load_deployments(root: Path) -> list[DeploymentRecord]:
    deps = []
    for row in _load(list(root.glob(f"deployments/*/{DEPLOYMENT_FILE}"))):
        try:
            dep_id = check_id(row["deployment_id"], "deployment_id")
            dep = DeploymentRecord(
                dep_id,
                root / "deployments" / dep_id,
                clean_deployment(row["body"]),
                row["model"],
                Path(row["bucket"]),
            )
            dep.create_time = row["create_time"]
        except (KeyError, TypeError, ApiError) as exc:
            log.warning("skipping malformed deployment record", error=repr(exc))
            continue
        deps.append(dep)
    return deps
