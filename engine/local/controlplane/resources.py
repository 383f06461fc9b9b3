"""Control-plane resources: records, request validation and JSON rendering (pure; no I/O but paths).

Bad input raises ApiError naming the offending field, rendered as a Fireworks-style error body.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.local.controlplane.supervisor import Child
from engine.local.inputs import BadInput, ascii_int
from engine.local.models.factory import SPECS
from engine.log import clip

ACCOUNT = "local"
MAX_LORA_RANK = 1024
_ID = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_MODEL_RESOURCE = re.compile(r"^accounts/[^/]+/models/([^/#]+)$")
_JOB_RESOURCE = re.compile(r"^accounts/([^/]+)/rlorTrainerJobs/([^/]+)$")
_DEPLOYMENT_RESOURCE = re.compile(r"^accounts/([^/]+)/deployments/([^/]+)$")

_STATUS_NAMES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 404: "NOT_FOUND", 409: "ALREADY_EXISTS"}
_STATUS_NAMES |= {412: "FAILED_PRECONDITION", 502: "UNAVAILABLE", 503: "UNAVAILABLE"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra or {}

    def body(self) -> dict[str, Any]:
        code = _STATUS_NAMES.get(self.status, "UNKNOWN")
        return {**self.extra, "error": {"code": self.status, "message": self.message, "status": code}}


def now_rfc3339(ts: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if ts is None else ts))


def check_id(value: Any, field_name: str) -> str:
    if not isinstance(value, str) or not _ID.match(value):
        raise ApiError(400, f"{field_name}: {value!r} is not a valid id (1-63 chars of a-z, 0-9 and '-')")
    return value


def local_model(
    base_model: Any,
    field_name: str,
    default_model: str | None,
    model_roots: Sequence[Path] = (),
    aliases: Mapping[str, str] | None = None,
) -> str:
    """Map a base model name to what the embedded processes load: an alias (``hotloop up --alias
    NAME=MODEL``), an embedded model name (tiny, small), ``accounts/x/models/<name>`` of one, or a
    model directory under one of ``model_roots``; anything else falls back to the stack's
    ``--model`` when one was given.

    Whether some other path exists on this host is never revealed: a path outside the roots gets
    the same answer whether or not it exists."""
    if not isinstance(base_model, str) or not base_model.strip():
        raise ApiError(400, f"{field_name}: required (a model name such as 'tiny')")
    match = _MODEL_RESOURCE.match(base_model)
    short = match.group(1) if match else base_model
    for name in (base_model, short):
        if aliases and name in aliases:
            return local_model(aliases[name], f"{field_name} (alias {name!r})", None, model_roots)
    if short in SPECS:
        return short
    candidate = Path(base_model)
    if candidate.is_absolute() and "\0" not in base_model:
        real = candidate.resolve()
        if any(real.is_relative_to(root.resolve()) for root in model_roots) and real.is_dir():
            return str(real)
    if default_model:
        return default_model
    roots = ", ".join(str(r) for r in model_roots) or "none; start the stack with --model-root DIR"
    raise ApiError(
        400,
        f"{field_name}: unknown model {clip(base_model, 200)}; use one of {sorted(SPECS)}, an absolute "
        f"model directory under an allowed root ({roots}), or start the stack with --model",
    )


def parse_int(body: dict[str, Any], key: str, field_name: str, *, default: int, lo: int, hi: int) -> int:
    try:
        return ascii_int(body.get(key, default), field_name, lo, hi)  # proto3 JSON may send strings
    except BadInput as exc:
        raise ApiError(400, str(exc)) from exc


def parse_job_ref(value: Any, field_name: str) -> str:
    """``accounts/local/rlorTrainerJobs/<id>`` -> ``<id>``."""
    match = _JOB_RESOURCE.match(value) if isinstance(value, str) else None
    if not match:
        raise ApiError(400, f"{field_name}: must be 'accounts/{ACCOUNT}/rlorTrainerJobs/<id>', got {value!r}")
    if match.group(1) != ACCOUNT:
        raise ApiError(400, f"{field_name}: account {match.group(1)!r} is not served here (only {ACCOUNT!r})")
    return match.group(2)


def parse_deployment_ref(value: Any, field_name: str) -> str:
    """``accounts/local/deployments/<id>`` (optionally after ``<model>#``) -> ``<id>``."""
    text = value.split("#", 1)[-1] if isinstance(value, str) else value
    match = _DEPLOYMENT_RESOURCE.match(text) if isinstance(text, str) else None
    if not match or match.group(1) != ACCOUNT:
        raise ApiError(
            400 if not match else 404,
            f"{field_name}: expected 'accounts/{ACCOUNT}/deployments/<id>', got {value!r}",
        )
    return match.group(2)


@dataclass
class JobRecord:
    job_id: str
    job_dir: Path
    body: dict[str, Any]
    model: str
    lora_rank: int
    state: str = "JOB_STATE_PENDING"
    message: str = ""
    create_time: float = field(default_factory=time.time)
    update_time: float = field(default_factory=time.time)
    child: Child | None = None
    child_key: str | None = field(default=None, repr=False)  # the running trainer's key (memory only)
    url: str | None = None
    restarts: int = 0
    generation: int = 0  # bumped on every (re)start: an old supervisor task must not touch a new run

    @property
    def name(self) -> str:
        return f"accounts/{ACCOUNT}/rlorTrainerJobs/{self.job_id}"

    @property
    def bucket(self) -> Path:
        return self.job_dir / "bucket"

    @property
    def state_dir(self) -> Path:
        return self.job_dir / "state"

    def set_state(self, state: str, message: str = "") -> None:
        self.state, self.message, self.update_time = state, message, time.time()

    def to_json(self) -> dict[str, Any]:
        body = dict(self.body)
        return {
            **body,
            "name": self.name,
            "state": self.state,
            "status": {
                "code": "OK" if self.state != "JOB_STATE_FAILED" else "INTERNAL",
                "message": self.message,
            },
            "createTime": now_rfc3339(self.create_time),
            "updateTime": now_rfc3339(self.update_time),
            "hotloop": {
                "model": self.model,
                "bucket": str(self.bucket),
                "stateDir": str(self.state_dir),
                "pid": self.child.pid if self.child and self.child.returncode is None else None,
                "trainerUrl": self.url,
                "restarts": self.restarts,
            },
        }


@dataclass
class DeploymentRecord:
    deployment_id: str
    dep_dir: Path
    body: dict[str, Any]
    model: str
    bucket: Path
    state: str = "CREATING"
    message: str = ""
    create_time: float = field(default_factory=time.time)
    update_time: float = field(default_factory=time.time)
    child: Child | None = None
    child_key: str | None = field(default=None, repr=False)  # the running deployment's key (memory only)
    url: str | None = None
    generation: int = 0

    @property
    def name(self) -> str:
        return f"accounts/{ACCOUNT}/deployments/{self.deployment_id}"

    @property
    def replicas_wanted(self) -> int:
        return 1 if int(self.body.get("maxReplicaCount", 1)) > 0 else 0

    def set_state(self, state: str, message: str = "") -> None:
        self.state, self.message, self.update_time = state, message, time.time()

    def to_json(self) -> dict[str, Any]:
        return {
            **self.body,
            "name": self.name,
            "state": self.state,
            "status": {"code": "OK" if self.state != "FAILED" else "INTERNAL", "message": self.message},
            "hotLoadBucketUrl": self.bucket.resolve().as_uri(),
            "replicaCount": 1 if self.child is not None and self.child.returncode is None and self.url else 0,
            "createTime": now_rfc3339(self.create_time),
            "updateTime": now_rfc3339(self.update_time),
            "hotloop": {
                "model": self.model,
                "bucket": str(self.bucket),
                "pid": self.child.pid if self.child and self.child.returncode is None else None,
                "deploymentUrl": self.url,
            },
        }


def _through_symlink(root: Path, path: Path) -> bool:
    return path.resolve() != root.resolve() / path.relative_to(root)


def list_checkpoints(job: JobRecord) -> list[dict[str, Any]]:
    """Training states (``STATE/<run>/weights/<name>``) and sampler snapshots (``BUCKET/<id>``), oldest
    first."""
    rows: list[tuple[float, dict[str, Any]]] = []
    if job.state_dir.is_dir():
        for weights in sorted(job.state_dir.glob("*/weights/*")):
            if weights.is_dir() and not _through_symlink(job.state_dir, weights):
                run_id, name = weights.parent.parent.name, weights.name
                rows.append(
                    (
                        weights.stat().st_mtime,
                        {
                            "name": f"{job.name}/checkpoints/{name}",
                            "checkpointType": "CHECKPOINT_TYPE_TRAINING_LORA"
                            if job.lora_rank
                            else "CHECKPOINT_TYPE_TRAINING",
                            "promotable": False,
                            "path": f"tinker://{run_id}/weights/{name}",
                        },
                    )
                )
    if job.bucket.is_dir():
        # Bare identities (BUCKET/<name>) and the trainer's per-run ones (BUCKET/<run>/<name>).
        manifests = [*job.bucket.glob("*/manifest.json"), *job.bucket.glob("*/*/manifest.json")]
        for manifest in sorted(manifests):
            if _through_symlink(job.bucket, manifest):
                continue  # never read a file outside the bucket
            try:
                kind = json.loads(manifest.read_text()).get("kind", "base")
            except (OSError, ValueError):
                continue  # a snapshot being written or a foreign file: not a checkpoint yet
            delta = kind == "delta"
            identity = manifest.parent.relative_to(job.bucket).as_posix()
            run_id = identity.rpartition("/")[0]
            rows.append(
                (
                    manifest.stat().st_mtime,
                    {
                        "name": f"{job.name}/checkpoints/{manifest.parent.name}",
                        **(
                            {"path": f"tinker://{run_id}/sampler_weights/{manifest.parent.name}"}
                            if run_id
                            else {}
                        ),
                        "checkpointType": "CHECKPOINT_TYPE_INFERENCE_ARC_V2"
                        if delta
                        else (
                            "CHECKPOINT_TYPE_INFERENCE_LORA"
                            if job.lora_rank
                            else "CHECKPOINT_TYPE_INFERENCE_BASE"
                        ),
                        "promotable": not delta,
                        "snapshotIdentity": identity,
                    },
                )
            )
    rows.sort(key=lambda r: r[0])
    return [{**row, "createTime": now_rfc3339(ts), "updateTime": now_rfc3339(ts)} for ts, row in rows]
