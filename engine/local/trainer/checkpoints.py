"""Training-state checkpoints (save_state / load_state) on disk, and ``tinker://`` path parsing.

Layout: ``STATE_DIR/<run_id>/weights/<name>/`` with ``weights.safetensors`` (trainable parameters
by name: the LoRA adapters, or every parameter for full-parameter models), ``optimizer.safetensors``
(``<param>.exp_avg``, ``<param>.exp_avg_sq``, ``<param>.step`` per parameter) and ``meta.json``.
Keying moments by parameter name, not by optimizer index, keeps restores exact and inspectable.
A restarted process can load what an earlier one wrote, since nothing lives only in memory.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file, save_file

from engine.local.trainer.config import NotFound, TrainerBadRequest
from engine.weights.names import SnapshotError, check_identity, check_name, contained, run_identity

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9:._\-]{0,200}$")
PathKind = Literal["weights", "sampler_weights"]


@dataclass(frozen=True)
class TinkerPath:
    run_id: str
    kind: str
    name: str

    def __str__(self) -> str:
        return f"tinker://{self.run_id}/{self.kind}/{self.name}"


def safe_name(name: str, field: str = "path") -> str:
    try:
        return check_name(name)
    except SnapshotError as exc:
        raise TrainerBadRequest(f"{field}: {exc}") from exc


def parse_tinker_path(path: str, field: str = "path") -> TinkerPath:
    if not isinstance(path, str) or not path.startswith("tinker://"):
        raise TrainerBadRequest(f"{field} must be a tinker://<run_id>/<kind>/<name> path, got {path!r}")
    parts = path.removeprefix("tinker://").split("/")
    if len(parts) != 3:
        raise TrainerBadRequest(f"{field} {path!r} must have exactly 3 segments after tinker://")
    run_id, kind, name = parts
    if not _RUN_ID.match(run_id) or ".." in run_id:
        raise TrainerBadRequest(f"{field}: invalid run id {run_id!r}")
    if kind not in ("weights", "sampler_weights", "external_weights"):
        raise TrainerBadRequest(
            f"{field}: unsupported checkpoint kind {kind!r} (weights, sampler_weights or external_weights)"
        )
    return TinkerPath(run_id, kind, safe_name(name, field))


def state_path(state_dir: Path, run_id: str, name: str) -> Path:
    """``STATE_DIR/<run_id>/weights/<name>``; refused if a symlink below the state dir would lead
    elsewhere (saves, loads, listings and deletes all come through here)."""
    if not _RUN_ID.match(run_id) or ".." in run_id:
        raise TrainerBadRequest(f"invalid run id {run_id!r}")
    try:
        return contained(state_dir, run_id, "weights", safe_name(name))
    except SnapshotError as exc:
        raise TrainerBadRequest(f"checkpoint path {run_id}/weights/{name}: {exc}") from exc


def _moments(
    optimizer: torch.optim.Optimizer | None, params: dict[str, torch.nn.Parameter]
) -> dict[str, Any]:
    out: dict[str, torch.Tensor] = {}
    if optimizer is None:
        return out
    for name, p in params.items():
        st = optimizer.state.get(p)
        if not st:
            continue
        out[f"{name}.exp_avg"] = st["exp_avg"].detach().clone()
        out[f"{name}.exp_avg_sq"] = st["exp_avg_sq"].detach().clone()
        out[f"{name}.step"] = torch.as_tensor(st["step"]).detach().clone().reshape(1).float()
    return out


def save_state(
    target: Path,
    params: dict[str, torch.nn.Parameter],
    optimizer: torch.optim.Optimizer | None,
    meta: dict[str, Any],
    overwrite: bool,
) -> int:
    """Write atomically (stage + rename); returns the size in bytes."""
    if target.exists() and not overwrite:
        raise TrainerBadRequest(
            f"checkpoint {target.name!r} already exists (pass overwrite=True to replace it)"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        save_file(
            {k: v.detach().clone().contiguous() for k, v in params.items()}, str(tmp / "weights.safetensors")
        )
        save_file(_moments(optimizer, params), str(tmp / "optimizer.safetensors"))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        if target.exists():
            shutil.rmtree(target)
        os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return sum(f.stat().st_size for f in target.iterdir())


@dataclass
class LoadedState:
    meta: dict[str, Any]
    weights: dict[str, torch.Tensor]
    optimizer: dict[str, torch.Tensor]


def read_meta(target: Path) -> dict[str, Any]:
    if not (target / "meta.json").exists():
        raise NotFound(f"checkpoint {target.name!r} not found")
    try:
        meta = json.loads((target / "meta.json").read_text())
    except json.JSONDecodeError as exc:
        raise TrainerBadRequest(f"checkpoint {target.name!r}: meta.json is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise TrainerBadRequest(f"checkpoint {target.name!r}: meta.json is not an object")
    return meta


def read_state(target: Path, with_optimizer: bool) -> LoadedState:
    meta = read_meta(target)
    weights = load_file(str(target / "weights.safetensors"))
    opt = load_file(str(target / "optimizer.safetensors")) if with_optimizer else {}
    return LoadedState(meta=meta, weights=weights, optimizer=opt)


def restore_optimizer(
    optimizer: torch.optim.Optimizer, params: dict[str, torch.nn.Parameter], saved: dict[str, torch.Tensor]
) -> None:
    optimizer.state.clear()
    for name, p in params.items():
        if f"{name}.exp_avg" not in saved:
            continue
        optimizer.state[p] = {
            "step": saved[f"{name}.step"].reshape(()).clone(),
            "exp_avg": saved[f"{name}.exp_avg"].clone(),
            "exp_avg_sq": saved[f"{name}.exp_avg_sq"].clone(),
        }


def parent_identity(value: str, run_id: str) -> str:
    """``parent_snapshot_identity``: a full identity (``<run>/<name>``, as ``snapshot_name`` reports
    it) or a bare name, which means that name in this run."""
    try:
        return check_identity(value if "/" in value else run_identity(run_id, value))
    except SnapshotError as exc:
        raise TrainerBadRequest(f"parent_snapshot_identity: {exc}") from exc
