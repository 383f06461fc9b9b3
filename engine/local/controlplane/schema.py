"""The fields a stored job or deployment record may hold: known names, checked types, bounded sizes.

Every create and update body goes through :func:`clean_job` / :func:`clean_deployment` before it
is stored (and echoed by every get and list): unknown fields are dropped, a known field of the
wrong type or past its size is a 400 naming it. A record therefore stays small whatever was sent.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from engine.local.controlplane.resources import ApiError
from engine.local.inputs import BadInput, ascii_int
from engine.log import clip, get_logger

log = get_logger("controlplane.schema")
Check = Callable[[Any, str], Any]
MAX_STR = 1024
MAX_TEXT = 4096
MAX_ITEMS = 64


def _text(limit: int) -> Check:
    def check(value: Any, field: str) -> str:
        if not isinstance(value, str):
            raise ApiError(400, f"{field}: must be a string, got {type(value).__name__}")
        if len(value) > limit:
            raise ApiError(400, f"{field}: {len(value)} characters; at most {limit} are allowed")
        return value

    return check


def _bool(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise ApiError(400, f"{field}: must be true or false, got {clip(value, 40)}")
    return value


def _int(value: Any, field: str) -> int:
    try:
        return ascii_int(value, field, 0, 2**31 - 1)
    except BadInput as exc:
        raise ApiError(400, str(exc)) from exc


def _number(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ApiError(400, f"{field}: must be a finite number, got {clip(value, 40)}")
    return float(value)


def _str_list(value: Any, field: str) -> list[str]:
    if not isinstance(value, list) or len(value) > MAX_ITEMS:
        raise ApiError(400, f"{field}: must be a list of at most {MAX_ITEMS} strings")
    return [_text(MAX_STR)(v, f"{field}[{i}]") for i, v in enumerate(value)]


def _str_or_list(value: Any, field: str) -> str | list[str]:
    return _text(MAX_TEXT)(value, field) if isinstance(value, str) else _str_list(value, field)


def _str_map(value: Any, field: str) -> dict[str, str]:
    if not isinstance(value, dict) or len(value) > MAX_ITEMS:
        raise ApiError(400, f"{field}: must be an object of at most {MAX_ITEMS} string values")
    return {_text(256)(k, f"{field} key"): _text(MAX_TEXT)(v, f"{field}.{k}") for k, v in value.items()}


def _object(fields: Mapping[str, Check]) -> Check:
    def check(value: Any, field: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise ApiError(400, f"{field}: must be an object, got {type(value).__name__}")
        return clean(value, fields, f"{field}.")

    return check


def clean(body: Mapping[str, Any], fields: Mapping[str, Check], prefix: str = "") -> dict[str, Any]:
    """The known fields of ``body``, checked; unknown ones dropped (and named once in the log)."""
    unknown = [k for k in body if k not in fields]
    if unknown:
        log.info("unknown fields dropped", fields=clip([prefix + k for k in unknown], 300))
    return {k: fields[k](v, prefix + k) for k, v in body.items() if k in fields and v is not None}


TRAINING_FIELDS: dict[str, Check] = {
    "baseModel": _text(MAX_STR),
    "loraRank": _int,
    "learningRate": _number,
    "projectionHeadDim": _int,
    "maxContextLength": _int,
    "customImageTag": _text(MAX_STR),
    "region": _text(MAX_STR),
    "extraArgs": _str_or_list,
    "acceleratorType": _text(MAX_STR),
    "acceleratorCount": _int,
    "epochs": _int,
    "batchSize": _int,
    "gradientAccumulationSteps": _int,
}
_COMMON: dict[str, Check] = {
    "name": _text(MAX_STR),
    "displayName": _text(MAX_STR),
    "description": _text(MAX_TEXT),
    "annotations": _str_map,
    "extraValues": _str_map,
    "preemptible": _bool,
}
JOB_FIELDS: dict[str, Check] = {
    **_COMMON,
    "rlorTrainerJobId": _text(MAX_STR),
    "serviceMode": _bool,
    "keepAlive": _bool,
    "dataset": _text(MAX_STR),
    "trainingConfig": _object(TRAINING_FIELDS),
    "useReservation": _bool,
    "reservationTarget": _text(MAX_STR),
    "trainerReplicaCount": _int,
    "nodeCount": _int,
    "hotLoadDeploymentId": _text(MAX_STR),
    "purpose": _text(MAX_STR),
    "managedBy": _text(MAX_STR),
    "forwardOnly": _bool,
    "inactivityTimeout": _text(64),
    "disableInactivityCleanup": _bool,
}
DEPLOYMENT_FIELDS: dict[str, Check] = {
    **_COMMON,
    "deploymentId": _text(MAX_STR),
    "baseModel": _text(MAX_STR),
    "minReplicaCount": _int,
    "maxReplicaCount": _int,
    "enableHotLoad": _bool,
    "forTraining": _bool,
    "deploymentShape": _text(MAX_STR),
    "acceleratorType": _text(MAX_STR),
    "acceleratorCount": _int,
    "placement": _object({"region": _text(MAX_STR)}),
    "hotLoadBucketType": _text(MAX_STR),
    "hotLoadTrainerJob": _text(MAX_STR),
    "hotLoadTransitionType": _text(64),
    "hotLoadBucketUrl": _text(MAX_STR),
    "extraArgs": _str_list,
}


def clean_job(body: Mapping[str, Any]) -> dict[str, Any]:
    return clean(body, JOB_FIELDS)


def clean_deployment(body: Mapping[str, Any]) -> dict[str, Any]:
    return clean(body, DEPLOYMENT_FIELDS)
