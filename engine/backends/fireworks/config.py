"""Configs and results of the control-plane managers, mirroring Fireworks' Training SDK fields.

``validate()`` raises ConfigError naming the field; ``to_request()`` builds the REST query and body
exactly as Fireworks' SDK sends them (camelCase), so the same config drives Fireworks and the
embedded control plane.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

from engine.errors import ConfigError

_ID = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)s$")
MAX_INACTIVITY_S = 3 * 3600


def check_resource_id(value: str, field_name: str) -> str:
    """Fireworks resource ids: 1-63 chars of [a-z0-9-], not starting or ending with '-'."""
    if not isinstance(value, str) or not _ID.match(value):
        raise ConfigError(f"{field_name}: {value!r} is not a valid id (1-63 chars of a-z, 0-9 and '-')")
    return value


def new_trainer_job_id() -> str:
    """Client-side ids make create retries idempotent (the server answers 409 with the same job)."""
    return f"training-api-service-{secrets.token_hex(4)}"


def _duration_s(value: timedelta | str) -> float:
    if isinstance(value, timedelta):
        return value.total_seconds()
    match = _DURATION.match(value) if isinstance(value, str) else None
    if not match:
        raise ConfigError(f"inactivity_timeout: {value!r} is not a timedelta or a duration like '1800s'")
    return float(match.group(1))


@dataclass
class TrainerJobConfig:
    """One service-mode RLOR trainer job (Fireworks ``TrainerJobConfig``)."""

    base_model: str
    lora_rank: int = 0
    projection_head_dim: int | None = None
    max_context_length: int | None = None
    learning_rate: float = 1e-5
    gradient_accumulation_steps: int | None = None
    node_count: int | None = None
    trainer_replica_count: int | None = None
    display_name: str | None = None
    hot_load_deployment_id: str | None = None
    region: str | None = None
    custom_image_tag: str | None = None
    extra_args: list[str] | None = None
    extra_values: dict[str, str] | None = None
    accelerator_type: str | None = None
    accelerator_count: int | None = None
    training_shape_ref: str | None = None
    forward_only: bool = False
    auto_select_training_shape: bool = False
    inactivity_timeout: timedelta | str | None = None
    disable_inactivity_cleanup: bool = False
    skip_validations: bool = False
    purpose: str | None = None
    preemptible: bool = False
    managed_by: str | None = None
    requested_job_id: str | None = None
    use_reservation: bool = True
    reservation_target: str | None = None

    def validate(self) -> None:
        if not isinstance(self.base_model, str) or not self.base_model.strip():
            raise ConfigError("base_model: must be a non-empty model name")
        if isinstance(self.lora_rank, bool) or not isinstance(self.lora_rank, int) or self.lora_rank < 0:
            raise ConfigError(
                f"lora_rank: must be an integer >= 0 (0 = full-parameter), got {self.lora_rank!r}"
            )
        if not (isinstance(self.learning_rate, int | float) and self.learning_rate > 0):
            raise ConfigError(f"learning_rate: must be a positive number, got {self.learning_rate!r}")
        if self.max_context_length is not None and self.max_context_length <= 0:
            raise ConfigError(f"max_context_length: must be positive, got {self.max_context_length!r}")
        if self.gradient_accumulation_steps not in (None, 1):
            raise ConfigError(
                "gradient_accumulation_steps: server-side accumulation was removed; leave it unset and "
                "call forward_backward N times before one optim_step"
            )
        if self.display_name is not None and len(self.display_name) >= 64:
            raise ConfigError("display_name: must be shorter than 64 characters")
        if self.training_shape_ref and self.auto_select_training_shape:
            raise ConfigError("training_shape_ref: conflicts with auto_select_training_shape=True")
        if self.training_shape_ref or self.auto_select_training_shape:
            for name in ("accelerator_type", "accelerator_count", "node_count"):
                if getattr(self, name) is not None:
                    raise ConfigError(f"{name}: must be unset when a training shape is used")
        if self.inactivity_timeout is not None and _duration_s(self.inactivity_timeout) > MAX_INACTIVITY_S:
            raise ConfigError("inactivity_timeout: must be at most 3 hours")
        if self.requested_job_id is not None:
            check_resource_id(self.requested_job_id, "requested_job_id")

    def to_request(self, job_id: str) -> tuple[dict[str, str], dict[str, Any]]:
        """(query params, JSON body) of ``POST /v1/accounts/{a}/rlorTrainerJobs``."""
        self.validate()
        manual = not (self.training_shape_ref or self.auto_select_training_shape)
        params: dict[str, str] = {"rlorTrainerJobId": job_id}
        if self.training_shape_ref:
            params["trainingShape"] = self.training_shape_ref
        if manual or self.skip_validations:
            params["skipValidations"] = "true"
        training: dict[str, Any] = {
            "baseModel": self.base_model,
            "loraRank": self.lora_rank,
            "learningRate": self.learning_rate,
        }
        optional_training = {
            "projectionHeadDim": self.projection_head_dim,
            "maxContextLength": None if self.training_shape_ref else self.max_context_length,
            "customImageTag": self.custom_image_tag,
            "region": self.region,
            "extraArgs": self.extra_args,
        }
        if manual:
            optional_training["acceleratorType"] = self.accelerator_type
            optional_training["acceleratorCount"] = self.accelerator_count
        training.update({k: v for k, v in optional_training.items() if v is not None})
        body: dict[str, Any] = {
            "serviceMode": True,
            "keepAlive": False,
            "dataset": "",
            "trainingConfig": training,
            "useReservation": self.use_reservation,
        }
        optional = {
            "reservationTarget": self.reservation_target,
            "trainerReplicaCount": self.trainer_replica_count,
            "nodeCount": (self.node_count or 1) if manual else None,
            "displayName": self.display_name,
            "hotLoadDeploymentId": self.hot_load_deployment_id,
            "extraValues": self.extra_values,
            "purpose": self.purpose,
            "managedBy": self.managed_by,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        if self.forward_only:
            body["forwardOnly"] = True
        if self.preemptible:
            body["preemptible"] = True
        if self.inactivity_timeout is not None:
            body["inactivityTimeout"] = f"{int(_duration_s(self.inactivity_timeout))}s"
        if self.disable_inactivity_cleanup:
            body["disableInactivityCleanup"] = True
        return params, body


TransitionType = Literal["ASYNC", "SYNC"]


@dataclass
class DeploymentConfig:
    """One inference deployment (Fireworks ``DeploymentConfig``)."""

    deployment_id: str
    base_model: str
    description: str | None = None
    deployment_shape: str | None = None
    expected_deployment_shape: str | None = None
    region: str | None = None
    min_replica_count: int = 0
    max_replica_count: int = 1
    accelerator_type: str | None = "NVIDIA_H200_141GB"
    hot_load_bucket_type: str | None = "FW_HOSTED"
    hot_load_trainer_job: str | None = None
    enable_hot_load: bool = True
    hot_load_transition_type: TransitionType | None = None
    skip_shape_validation: bool = False
    accept_shapeless_risk: bool = False
    disable_speculative_decoding: bool = False
    extra_args: str | None = None
    extra_values: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    for_training: bool = False
    preemptible: bool = False

    def validate(self) -> None:
        check_resource_id(self.deployment_id, "deployment_id")
        if not isinstance(self.base_model, str) or not self.base_model.strip():
            raise ConfigError("base_model: must be a non-empty model name")
        for name in ("min_replica_count", "max_replica_count"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name}: must be an integer >= 0, got {value!r}")
        if self.min_replica_count > self.max_replica_count:
            raise ConfigError("min_replica_count: must not exceed max_replica_count")
        if self.hot_load_transition_type not in (None, "ASYNC", "SYNC"):
            raise ConfigError(
                f"hot_load_transition_type: must be 'ASYNC' or 'SYNC', got {self.hot_load_transition_type!r}"
            )
        if self.hot_load_trainer_job is not None and not re.match(
            r"^accounts/[^/]+/rlorTrainerJobs/[^/]+$", self.hot_load_trainer_job
        ):
            raise ConfigError(
                "hot_load_trainer_job: must be a job resource name "
                f"'accounts/<account>/rlorTrainerJobs/<id>', got {self.hot_load_trainer_job!r}"
            )
        if self.deployment_shape and self.accept_shapeless_risk:
            raise ConfigError("accept_shapeless_risk: conflicts with deployment_shape")
        if not self.deployment_shape and not self.accelerator_type:
            raise ConfigError("accelerator_type: required when no deployment_shape is given")

    def to_request(self) -> tuple[dict[str, str], dict[str, Any]]:
        """(query params, JSON body) of ``POST /v1/accounts/{a}/deployments``."""
        self.validate()
        params: dict[str, str] = {"deploymentId": self.deployment_id}
        if self.skip_shape_validation:
            params["skipShapeValidation"] = "true"
        if self.accept_shapeless_risk:
            params["acceptShapelessRisk"] = "true"
        if self.disable_speculative_decoding:
            params["disableSpeculativeDecoding"] = "true"
        body: dict[str, Any] = {
            "baseModel": self.base_model,
            "description": self.description or "Fireworks training deployment",
            "minReplicaCount": self.min_replica_count,
            "maxReplicaCount": self.max_replica_count,
            "enableHotLoad": self.enable_hot_load,
            "forTraining": self.for_training,
        }
        if self.deployment_shape:
            body["deploymentShape"] = self.deployment_shape
        else:
            body["acceleratorType"] = self.accelerator_type
        optional: dict[str, Any] = {
            "placement": {"region": self.region} if self.region else None,
            "hotLoadBucketType": self.hot_load_bucket_type if self.enable_hot_load else None,
            "hotLoadTrainerJob": self.hot_load_trainer_job,
            "hotLoadTransitionType": self.hot_load_transition_type,
            "extraArgs": self.extra_args.split() if self.extra_args else None,
            "extraValues": self.extra_values,
            "annotations": self.annotations,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        if self.preemptible:
            body["preemptible"] = True
        return params, body


@dataclass(frozen=True)
class CreatedTrainerJob:
    job_name: str
    job_id: str


@dataclass(frozen=True)
class TrainerEndpoint:
    """A ready trainer: ``base_url`` is the tinker base URL through the gateway (``/api/v1/...`` appended)."""

    job_id: str
    job_name: str
    base_url: str
    max_context_length: int | None = None
    base_model: str | None = None
    lora_rank: int | None = None


@dataclass(frozen=True)
class DeploymentInfo:
    deployment_id: str
    name: str
    state: str
    hot_load_bucket_url: str | None = None
    hot_load_trainer_job: str | None = None
    hot_load_transition_type: str | None = None
    deployment_shape_version: str | None = None
    inference_model: str | None = None
    base_model: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> DeploymentInfo:
        name = str(body.get("name", ""))
        deployment_id = name.rsplit("/", 1)[-1]
        return cls(
            deployment_id=deployment_id,
            name=name,
            state=str(body.get("state") or "UNKNOWN"),
            hot_load_bucket_url=body.get("hotLoadBucketUrl"),
            hot_load_trainer_job=body.get("hotLoadTrainerJob"),
            hot_load_transition_type=body.get("hotLoadTransitionType"),
            deployment_shape_version=body.get("deploymentShape"),
            inference_model=name or None,
            base_model=body.get("baseModel"),
            raw=body,
        )
