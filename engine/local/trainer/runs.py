"""The REST view of training runs and their save_state checkpoints (what the cookbook's resume and
rolling-checkpoint paths call): get a run, list its checkpoints, delete one.

Sampler snapshots are not listed or deleted here: the bucket is hotloop's weight-sync channel and a
delta chain must not lose a parent behind the deployment's back.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from engine.local.trainer import checkpoints
from engine.local.trainer.config import NotFound, TrainerBadRequest

if TYPE_CHECKING:
    from engine.local.trainer.service import TrainerService


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def _checkpoint(run_id: str, name: str, target: Any) -> dict[str, Any]:
    stat = (target / "meta.json").stat()
    return {
        "checkpoint_id": f"weights/{name}",
        "checkpoint_type": "training",
        "time": _iso(stat.st_mtime),
        "tinker_path": f"tinker://{run_id}/weights/{name}",
        "size_bytes": sum(f.stat().st_size for f in target.iterdir()),
        "public": False,
    }


def list_checkpoints(svc: TrainerService, run_id: str) -> dict[str, Any]:
    root = checkpoints.state_path(svc.state_dir, run_id, "x").parent
    found = (
        sorted(p for p in root.glob("*") if not p.is_symlink() and (p / "meta.json").is_file())
        if root.exists()
        else []
    )
    found.sort(key=lambda p: (p / "meta.json").stat().st_mtime)
    return {"checkpoints": [_checkpoint(run_id, p.name, p) for p in found], "cursor": None}


def get_run(svc: TrainerService, run_id: str) -> dict[str, Any]:
    listed = list_checkpoints(svc, run_id)["checkpoints"]
    entry = svc.models.get(run_id)
    if entry is not None:
        rank = entry.lora.rank
    elif listed:
        last = checkpoints.state_path(
            svc.state_dir, run_id, listed[-1]["checkpoint_id"].removeprefix("weights/")
        )
        meta = json.loads((last / "meta.json").read_text())
        rank = int(meta.get("lora", {}).get("rank", 0))
    else:
        raise NotFound(f"unknown training run {run_id!r}")
    return {
        "training_run_id": run_id,
        "base_model": svc.config.model,
        "model_owner": "local",
        "is_lora": rank > 0,
        "lora_rank": rank or None,
        "corrupted": False,
        "last_request_time": listed[-1]["time"] if listed else _iso(entry.created if entry else 0.0),
        "last_checkpoint": listed[-1] if listed else None,
        "last_sampler_checkpoint": None,
    }


def delete_checkpoint(svc: TrainerService, run_id: str, kind: str, name: str) -> dict[str, Any]:
    if kind != "weights":
        raise TrainerBadRequest(
            f"only weights/ checkpoints can be deleted here, not {kind}/ (weight sync owns those)"
        )
    target = checkpoints.state_path(svc.state_dir, run_id, name)  # no symlink below the state dir
    if not (target / "meta.json").exists():
        raise NotFound(f"checkpoint tinker://{run_id}/weights/{name} not found")
    shutil.rmtree(target)  # rmtree itself never follows symlinks found inside
    return {}
