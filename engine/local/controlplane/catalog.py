"""The control plane's catalog in Fireworks' REST shape: training shapes, models, and checkpoint
promotion (what ``fireworks-ai``'s ``resolve_training_profile``, ``model_is_moe`` and
``promote_checkpoint`` call).

* Training shapes: one per embedded model, ``accounts/fireworks/trainingShapes/<model>`` (Fireworks'
  public shapes live in the ``fireworks`` account), with one validated version ``.../versions/1``
  whose ``snapshot`` describes the embedded trainer (CPU, one node, fp32, full-parameter or LoRA).
* Models: every embedded base model as ``accounts/fireworks/models/<model>`` (also under this stack's
  own account), and the models promoted here as ``accounts/local/models/<id>``.
* Promotion (``POST /v1/accounts/local/checkpoints/<id>:promote``): a sampler snapshot that
  ``list_checkpoints`` marks ``promotable`` (a base; a delta is not, as on Fireworks) becomes a
  model record pointing at the snapshot in the trainer job's bucket. It completes at once, so the
  answer is ``{"model": ...}`` (no long-running operation to poll). hotloop's LoRA snapshots hold
  merged weights, so a promoted LoRA checkpoint is a full model (``HF_BASE_MODEL``), not an adapter.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from engine.files import write_json
from engine.local.controlplane.plane import PLANE
from engine.local.controlplane.resources import (
    ACCOUNT,
    ApiError,
    JobRecord,
    list_checkpoints,
    now_rfc3339,
    parse_job_ref,
)
from engine.local.http_server import read_json
from engine.local.models.factory import SPECS, ModelSpec
from engine.log import clip, get_logger

log = get_logger("controlplane.catalog")
PUBLIC_ACCOUNT = "fireworks"
SHAPE_VERSION = "1"
_OUTPUT_ID = re.compile(r"^[a-z0-9-]{1,63}$")
_MODEL_NAME = re.compile(r"^accounts/([^/]+)/models/([^/]+)$")
MAX_MODEL_RECORD_BYTES = 64 * 1024


def _spec(model: str, what: str) -> ModelSpec:
    spec = SPECS.get(model)
    if spec is None:
        raise ApiError(404, f"{what} not found (embedded models: {', '.join(sorted(SPECS))})")
    return spec


def _parameters(spec: ModelSpec) -> int:
    """Parameter count of a Qwen3-style config with tied embeddings (an estimate for the catalog)."""
    head = spec.hidden_size // spec.num_attention_heads
    attn = spec.hidden_size * head * (2 * spec.num_attention_heads + 2 * spec.num_key_value_heads)
    mlp = 3 * spec.hidden_size * spec.intermediate_size
    return spec.vocab_size * spec.hidden_size + spec.num_hidden_layers * (attn + mlp)


# ---- pure JSON of the catalog --------------------------------------------------------------------


def shape_name(model: str) -> str:
    return f"accounts/{PUBLIC_ACCOUNT}/trainingShapes/{model}"


def shape_json(model: str) -> dict[str, Any]:
    spec = _spec(model, f"trainingShape {shape_name(model)!r}")
    return {
        "name": shape_name(model),
        "displayName": f"{model} (hotloop embedded trainer)",
        "baseModel": base_model_name(model),
        "latestValidatedVersion": f"{shape_name(model)}/versions/{SHAPE_VERSION}",
        "maxSupportedContextLength": spec.max_position_embeddings,
    }


def shape_version_json(model: str) -> dict[str, Any]:
    spec = _spec(model, f"trainingShape {shape_name(model)!r}")
    return {
        "name": f"{shape_name(model)}/versions/{SHAPE_VERSION}",
        "validated": True,
        "latestValidated": True,
        "createTime": now_rfc3339(0),
        "snapshot": {
            "baseModel": base_model_name(model),
            "trainerImageTag": "hotloop-embedded",
            "maxSupportedContextLength": spec.max_position_embeddings,
            "nodeCount": 1,
            # The embedded deployment has no shapes: an empty pin, which DeploymentConfig omits.
            "deploymentShapeVersion": "",
            "deploymentImageTag": "hotloop-embedded",
            "acceleratorType": "CPU",
            "acceleratorCount": 0,
            "baseModelWeightPrecision": "FP32",
            "trainerShardingScheme": {"pipelineParallelism": 1},
            # Full-parameter; the same trainer also takes lora_rank > 0 on the manual path.
            "trainerMode": "POLICY_TRAINER",
        },
    }


def base_model_name(model: str) -> str:
    return f"accounts/{PUBLIC_ACCOUNT}/models/{model}"


def base_model_json(model: str) -> dict[str, Any]:
    spec = _spec(model, f"model {base_model_name(model)!r}")
    return {
        "name": base_model_name(model),
        "displayName": model,
        "kind": "HF_BASE_MODEL",
        "state": "READY",
        "contextLength": spec.max_position_embeddings,
        "tunable": True,
        "supportsLora": True,
        "public": True,
        "baseModelDetails": {
            "worldSize": 1,
            "checkpointFormat": "HUGGINGFACE",
            "parameterCount": str(_parameters(spec)),
            "moe": False,
            "modelType": "qwen3",
        },
    }


def shape_for(training_shape: str) -> str:
    """The embedded model of a training shape reference (``.../trainingShapes/<m>[/versions/<v>]``)."""
    m = re.match(r"^accounts/([^/]+)/trainingShapes/([^/]+)(?:/versions/([^/]+))?$", training_shape)
    if not m or m.group(1) != PUBLIC_ACCOUNT or m.group(2) not in SPECS:
        raise ApiError(
            400,
            f"trainingShape: {clip(training_shape, 200)} is not a shape of this stack "
            f"(use {shape_name('<model>')} for one of {sorted(SPECS)})",
        )
    if m.group(3) not in (None, SHAPE_VERSION):
        raise ApiError(400, f"trainingShape: version {m.group(3)!r} not found (only {SHAPE_VERSION!r})")
    return m.group(2)


def check_job_shape(training_shape: str, body: dict[str, Any]) -> None:
    """A job created on the shape path must train the shape's model."""
    model = shape_for(training_shape)
    training = body.get("trainingConfig")
    base = training.get("baseModel") if isinstance(training, dict) else None
    m = _MODEL_NAME.match(base) if isinstance(base, str) else None
    if (m.group(2) if m else base) != model:
        raise ApiError(
            400,
            f"trainingConfig.baseModel: {clip(base, 200)} does not match trainingShape "
            f"{clip(training_shape, 200)} (its model is {base_model_name(model)})",
        )


# ---- promoted models -------------------------------------------------------------------------------


class Catalog:
    """Promoted models, one JSON file each under ``root/models`` (they outlive the process)."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "models"
        self.models: dict[str, dict[str, Any]] = {}
        for path in sorted(self.dir.glob("*.json")) if self.dir.is_dir() else []:
            try:
                if path.is_symlink() or path.stat().st_size > MAX_MODEL_RECORD_BYTES:
                    raise ValueError("a symlink or an oversized file")
                record = json.loads(path.read_text())
                self.models[str(record["name"]).rsplit("/", 1)[-1]] = record
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("skipping unreadable model record", path=str(path), error=str(exc))

    def save(self, model_id: str, record: dict[str, Any]) -> None:
        write_json(self.dir / f"{model_id}.json", record)
        self.models[model_id] = record

    def get(self, account: str, model_id: str) -> dict[str, Any]:
        if account == ACCOUNT and model_id in self.models:
            return self.models[model_id]
        if account in (PUBLIC_ACCOUNT, ACCOUNT) and model_id in SPECS:
            return base_model_json(model_id)
        raise ApiError(404, f"model 'accounts/{account}/models/{model_id}' not found")


def _output_model(value: Any) -> str:
    m = _MODEL_NAME.match(value) if isinstance(value, str) else None
    if not m or m.group(1) != ACCOUNT:
        raise ApiError(400, f"output_model: must be 'accounts/{ACCOUNT}/models/<id>', got {clip(value, 200)}")
    if not _OUTPUT_ID.match(m.group(2)):
        raise ApiError(400, f"output_model: id {m.group(2)!r} must be 1-63 characters of a-z, 0-9 and '-'")
    return m.group(2)


def _base_matches(job: JobRecord, base_model: Any) -> None:
    m = _MODEL_NAME.match(base_model) if isinstance(base_model, str) else None
    short = m.group(2) if m else base_model
    if short != job.model:
        raise ApiError(
            400,
            f"base_model: {clip(base_model, 200)} is not the base model of trainer job {job.job_id!r} "
            f"({base_model_name(job.model) if job.model in SPECS else job.model})",
        )


def _checkpoint_row(job: JobRecord, checkpoint_id: str) -> dict[str, Any]:
    """The checkpoint ``checkpoint_id`` names: a snapshot identity (``<run>/<name>`` or a bare name),
    or a bare name that one sampler snapshot (else one training state) of the job has."""
    rows = list_checkpoints(job)
    missing = ApiError(404, f"checkpoint {clip(f'{job.name}/checkpoints/{checkpoint_id}', 300)} not found")
    exact = [r for r in rows if r.get("snapshotIdentity") == checkpoint_id]
    if exact:
        return exact[0]
    if "/" in checkpoint_id:
        raise missing
    named = [r for r in rows if r["name"] == f"{job.name}/checkpoints/{checkpoint_id}"]
    # A sampler snapshot is what promotion takes; a training state of the same name is not asked for.
    snapshots = [r for r in named if "snapshotIdentity" in r]
    if len(snapshots) > 1:
        identities = sorted(r["snapshotIdentity"] for r in snapshots)
        raise ApiError(
            409,
            f"checkpoint id {clip(checkpoint_id, 200)} is ambiguous: snapshots {identities} of trainer job "
            f"{job.job_id!r} all have that name; promote one by its identity "
            "(URL-encode the '/' as %2F)",
        )
    if not named:
        raise missing
    return (snapshots or named)[-1]


def promote(catalog: Catalog, job: JobRecord, checkpoint_id: str, body: dict[str, Any]) -> dict[str, Any]:
    model_id = _output_model(body.get("output_model"))
    _base_matches(job, body.get("base_model"))
    if model_id in catalog.models or model_id in SPECS:
        raise ApiError(409, f"model 'accounts/{ACCOUNT}/models/{model_id}' already exists")
    row = _checkpoint_row(job, checkpoint_id)
    name = row["name"]
    if not row["promotable"]:
        why = (
            "a delta is not promotable; save a base checkpoint and promote that"
            if row["checkpointType"] == "CHECKPOINT_TYPE_INFERENCE_ARC_V2"
            else "training-state (save_state) checkpoints are not promotable; promote a sampler snapshot"
        )
        raise ApiError(412, f"checkpoint {name!r} ({row['checkpointType']}): {why}")
    record = {
        "name": f"accounts/{ACCOUNT}/models/{model_id}",
        "displayName": model_id,
        "kind": "HF_BASE_MODEL",
        "state": "READY",
        "baseModel": base_model_name(job.model) if job.model in SPECS else job.model,
        "createTime": now_rfc3339(),
        "updateTime": now_rfc3339(),
        "hotloop": {
            "checkpoint": name,
            # The snapshot's own directory: per-run snapshots live at BUCKET/<run>/<name>.
            "snapshot": str(job.bucket / row["snapshotIdentity"]),
            "snapshotIdentity": row["snapshotIdentity"],
            "loraRank": job.lora_rank,
            "promotedAt": time.time(),
        },
    }
    catalog.save(model_id, record)
    log.info("checkpoint promoted", checkpoint=name, model=record["name"])
    return record


# ---- HTTP ------------------------------------------------------------------------------------------

CATALOG: web.AppKey[Catalog] = web.AppKey("catalog", Catalog)


def _shape_model(request: web.Request) -> str:
    account, shape = request.match_info["account"], request.match_info["shape"]
    if account != PUBLIC_ACCOUNT or shape not in SPECS:
        raise ApiError(
            404,
            f"trainingShape 'accounts/{account}/trainingShapes/{shape}' not found (this stack has "
            f"{', '.join(shape_name(m) for m in sorted(SPECS))})",
        )
    return shape


async def get_shape(request: web.Request) -> web.Response:
    return web.json_response(shape_json(_shape_model(request)))


async def list_shape_versions(request: web.Request) -> web.Response:
    # One version, validated: every filter Fireworks' client sends (latest_validated=true) keeps it.
    version = shape_version_json(_shape_model(request))
    return web.json_response({"trainingShapeVersions": [version], "nextPageToken": "", "totalSize": 1})


async def get_shape_version(request: web.Request) -> web.Response:
    model = _shape_model(request)
    if request.match_info["version"] != SHAPE_VERSION:
        raise ApiError(404, f"version {request.match_info['version']!r} of {shape_name(model)!r} not found")
    return web.json_response(shape_version_json(model))


async def get_model(request: web.Request) -> web.Response:
    m = request.match_info
    return web.json_response(request.app[CATALOG].get(m["account"], m["model"]))


async def list_models(request: web.Request) -> web.Response:
    account = request.match_info["account"]
    catalog = request.app[CATALOG]
    rows = [base_model_json(m) for m in sorted(SPECS)] if account == PUBLIC_ACCOUNT else []
    if account == ACCOUNT:
        rows = list(catalog.models.values())
    return web.json_response({"models": rows, "nextPageToken": "", "totalSize": len(rows)})


async def checkpoint_action(request: web.Request) -> web.Response:
    account = request.match_info["account"]
    # The verb follows the last ':' (a run id in ``<run>/<name>`` may hold ':' itself).
    checkpoint_id, _, verb = request.match_info["checkpoint"].rpartition(":")
    if account != ACCOUNT:
        raise ApiError(404, f"account {account!r} not found (this control plane serves account {ACCOUNT!r})")
    if verb != "promote":
        raise ApiError(404, f"no method POST {request.path} (checkpoints support :promote)")
    body = await read_json(request)
    if body.get("hot_load_deployment_id"):
        raise ApiError(
            400,
            "hot_load_deployment_id: this control plane keeps checkpoints in per-trainer buckets; "
            "omit it (trainer_job_id names the bucket)",
        )
    job = request.app[PLANE].job(parse_job_ref(body.get("trainer_job_id"), "trainer_job_id"))
    return web.json_response({"model": promote(request.app[CATALOG], job, checkpoint_id, body)})


def add_routes(app: web.Application, root: Path) -> None:
    app[CATALOG] = Catalog(root)
    shapes = "/v1/accounts/{account}/trainingShapes/{shape}"
    app.router.add_get(shapes, get_shape)
    app.router.add_get(shapes + "/versions", list_shape_versions)
    app.router.add_get(shapes + "/versions/{version}", get_shape_version)
    app.router.add_get("/v1/accounts/{account}/models", list_models)
    app.router.add_get("/v1/accounts/{account}/models/{model}", get_model)
    app.router.add_post("/v1/accounts/{account}/checkpoints/{checkpoint}", checkpoint_action)
