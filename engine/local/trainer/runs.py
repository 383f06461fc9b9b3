"""The REST view of training runs and their checkpoints (what the cookbook's resume, rolling-checkpoint
and weights-download paths call): get a run, list its checkpoints, delete one, set a TTL.

A run's checkpoints: ``weights/<name>`` (save_state, under the state dir), ``sampler_weights/<name>``
(the run's folder of the bucket) and ``external_weights/<name>`` (exports). Sampler snapshots are
listed but never deleted here: the bucket is hotloop's weight-sync channel and a delta chain must
not lose a parent behind the deployment's back. A TTL is recorded (``.<name>.ttl.json`` beside the
checkpoint) and answered as the checkpoint's ``expires_at``, not enforced: the embedded trainer keeps
what it wrote until it is deleted.

Every function here touches the filesystem: the app runs them off the event loop.
"""

from __future__ import annotations

import json
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.files import write_json
from engine.local.trainer import checkpoints, external
from engine.local.trainer.config import NotFound, TrainerBadRequest
from engine.local.trainer.metadata import read_run_record, read_user_metadata
from engine.log import clip
from engine.weights.names import SnapshotError, check_name, contained
from engine.weights.snapshot import MANIFEST

if TYPE_CHECKING:
    from engine.local.trainer.service import TrainerService

_TYPES = {"weights": "training", "sampler_weights": "sampler", external.KIND: "external"}
TTL_SUFFIX = ".ttl.json"
MAX_TTL_S = 10 * 365 * 86400  # Tinker's upper bound; also keeps expires_at a representable date


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def _size(target: Path) -> int:
    return sum(f.stat().st_size for f in target.rglob("*") if f.is_file())


def _ttl_path(target: Path) -> Path:
    # Hidden and beside the checkpoint, not in it: no listing takes it for a checkpoint, and an
    # export's signed URLs (every file inside it) do not offer it for download.
    return target.parent / f".{target.name}{TTL_SUFFIX}"


def _expires_at(target: Path, marker: str) -> str | None:
    path = _ttl_path(target)
    if path.is_symlink():
        return None  # never read a file outside the state dir or bucket
    try:
        record = json.loads(path.read_text())
        set_at, ttl = float(record["set_at"]), int(record["ttl_seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # no TTL set (or not a record this trainer wrote)
    if set_at < (target / marker).stat().st_mtime:
        return None  # set on an earlier checkpoint of this name, since overwritten
    return _iso(set_at + ttl)


def _checkpoint(run_id: str, kind: str, name: str, target: Path, marker: str) -> dict[str, Any]:
    if kind == "weights":
        try:
            user_metadata = json.loads((target / "meta.json").read_text()).get("user_metadata")
        except (OSError, ValueError, AttributeError):
            user_metadata = None
    else:
        user_metadata = read_user_metadata(target)
    return {
        "checkpoint_id": f"{kind}/{name}",
        "checkpoint_type": _TYPES[kind],
        "time": _iso((target / marker).stat().st_mtime),
        "tinker_path": f"tinker://{run_id}/{kind}/{name}",
        "size_bytes": _size(target),
        "public": False,
        "user_metadata": user_metadata,
        "expires_at": _expires_at(target, marker),
    }


def _valid_name(name: str) -> bool:
    try:
        check_name(name)
    except SnapshotError:
        return False  # a staging directory (".name.xyz") or a foreign file
    return True


def _found(root: Path, marker: str) -> list[Path]:
    if not root.is_dir():
        return []
    found = [
        p for p in root.iterdir() if _valid_name(p.name) and not p.is_symlink() and (p / marker).is_file()
    ]
    return sorted(found, key=lambda p: (p / marker).stat().st_mtime)


def _run_root(svc: TrainerService, run_id: str) -> Path:
    return checkpoints.state_path(svc.state_dir, run_id, "x").parent.parent  # validates the run id


def _bucket_run(svc: TrainerService, run_id: str) -> Path:
    """The run's folder of the bucket, refused if a symlink would lead out of the bucket."""
    _run_root(svc, run_id)
    try:
        return contained(svc.config.bucket, run_id)
    except SnapshotError as exc:
        raise TrainerBadRequest(f"run {run_id}: {exc}") from exc


def list_checkpoints(svc: TrainerService, run_id: str) -> dict[str, Any]:
    run_root = _run_root(svc, run_id)
    rows = [
        _checkpoint(run_id, "weights", p.name, p, "meta.json")
        for p in _found(run_root / "weights", "meta.json")
    ]
    rows += [
        _checkpoint(run_id, "sampler_weights", p.name, p, MANIFEST)
        for p in _found(_bucket_run(svc, run_id), MANIFEST)
    ]
    exports = run_root / external.KIND
    if exports.is_dir():
        rows += [
            _checkpoint(run_id, external.KIND, p.name, p, ".")
            for p in sorted(exports.iterdir())
            if _valid_name(p.name) and p.is_dir() and not p.is_symlink()
        ]
    rows.sort(key=lambda r: r["time"])
    return {"checkpoints": rows, "cursor": None}


def get_run(svc: TrainerService, run_id: str) -> dict[str, Any]:
    listed = list_checkpoints(svc, run_id)["checkpoints"]
    entry = svc.models.get(run_id)
    record = read_run_record(_run_root(svc, run_id))
    training = [c for c in listed if c["checkpoint_type"] == "training"]
    sampler = [c for c in listed if c["checkpoint_type"] == "sampler"]
    if entry is not None:
        rank = entry.lora.rank
    elif record is not None:
        rank = int(record.get("lora_rank") or 0)
    elif training:
        last = checkpoints.state_path(
            svc.state_dir, run_id, training[-1]["checkpoint_id"].removeprefix("weights/")
        )
        meta = json.loads((last / "meta.json").read_text())
        rank = int(meta.get("lora", {}).get("rank", 0))
    else:
        raise NotFound(f"unknown training run {run_id!r}")
    if entry is not None and entry.base_model_name:
        base_model = entry.base_model_name
    else:
        base_model = str((record or {}).get("base_model") or svc.config.model)
    user_metadata = entry.user_metadata if entry is not None else (record or {}).get("user_metadata")
    created = entry.created if entry is not None else float((record or {}).get("created") or 0.0)
    return {
        "training_run_id": run_id,
        "base_model": base_model,
        "model_owner": "local",
        "is_lora": rank > 0,
        "lora_rank": rank or None,
        "corrupted": False,
        "last_request_time": listed[-1]["time"] if listed else _iso(created),
        "last_checkpoint": training[-1] if training else None,
        "last_sampler_checkpoint": sampler[-1] if sampler else None,
        "user_metadata": user_metadata,
    }


def _target(svc: TrainerService, run_id: str, kind: str, name: str) -> Path:
    if kind == "weights":
        return checkpoints.state_path(svc.state_dir, run_id, name)
    if kind == external.KIND:
        return external.export_dir(svc.state_dir, run_id, name)
    raise TrainerBadRequest(
        f"only weights/ and {external.KIND}/ checkpoints can be deleted here, not {kind}/ "
        "(weight sync owns sampler snapshots)"
    )


def delete_checkpoint(svc: TrainerService, run_id: str, kind: str, name: str) -> dict[str, Any]:
    target = _target(svc, run_id, kind, name)
    if not target.is_dir():
        raise NotFound(f"checkpoint tinker://{run_id}/{kind}/{name} not found")
    shutil.rmtree(target)  # rmtree itself never follows symlinks found inside
    _ttl_path(target).unlink(missing_ok=True)
    return {}


def set_ttl(svc: TrainerService, run_id: str, kind: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
    ttl = body.get("ttl_seconds")
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= MAX_TTL_S):
        raise TrainerBadRequest(
            f"ttl_seconds must be an integer in [1, {MAX_TTL_S}] (10 years) or null, got {clip(ttl, 40)}"
        )
    if kind == "sampler_weights":
        target = _bucket_run(svc, run_id) / checkpoints.safe_name(name)
    else:
        target = _target(svc, run_id, kind, name)
    if not target.is_dir():
        raise NotFound(f"checkpoint tinker://{run_id}/{kind}/{name} not found")
    if ttl is None:
        _ttl_path(target).unlink(missing_ok=True)  # null removes the expiry
    else:
        write_json(_ttl_path(target), {"ttl_seconds": ttl, "set_at": time.time()})
    return {}
