"""Named ``save_weights_for_sampler``: write a sampler snapshot (base or delta) to the bucket.

Snapshots are kept per training run, as Tinker keeps them: ``tinker://<run>/sampler_weights/<name>``
is written to ``BUCKET/<run>/<name>/`` and its snapshot identity (what a deployment hot-loads, and
what the response's ``snapshot_name`` says) is ``<run>/<name>``. A resumed run or a second run on
one trainer is a new run id, so reusing a name never collides.

The Fireworks-style extension: ``checkpoint_type`` "base" | "delta" and an optional
``parent_snapshot_identity`` (default: the last snapshot this model wrote, kept in memory; any other
parent is materialized from the bucket). LoRA models always write a base of merged weights. A delta
asked for before the model has written any snapshot (or whose implicit parent, remembered from a
loaded checkpoint, is not in this bucket) falls back to a base; the result's ``checkpoint_type``
says what was written. An explicit parent that does not exist is a user error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.local.trainer.config import TrainerBadRequest
from engine.local.trainer.logs import LazyLogger
from engine.local.trainer.metadata import write_user_metadata
from engine.local.trainer.models import ModelState
from engine.weights.snapshot import (
    CHECKSUM_FORMAT,
    SnapshotError,
    materialize,
    run_identity,
    write_base,
    write_delta,
)

log = LazyLogger("trainer.snapshots")


def save_for_sampler(
    state: ModelState,
    bucket: Path,
    name: str,
    checkpoint_type: str,
    parent: str | None,
    user_metadata: dict[str, str] | None = None,
) -> dict[str, Any]:
    """``name`` is the bare name; the snapshot's identity is ``<model_id>/<name>``."""
    identity = run_identity(state.model_id, name)
    weights = state.sampler_state()
    kind = "base" if state.is_lora else checkpoint_type
    parent_id: str | None = None
    try:
        if kind == "delta":
            held = state.last_snapshot
            parent_id = parent or state.last_snapshot_id
            if parent_id is None or (parent is None and held is None and not (bucket / parent_id).exists()):
                kind = "base"  # nothing (reachable) to diff against yet
            else:
                parent_state = held[1] if held and held[0] == parent_id else materialize(bucket, parent_id)[1]
                manifest = write_delta(bucket, identity, weights, parent_id, parent_state, state.base_model)
        if kind == "base":
            parent_id = None
            manifest = write_base(bucket, identity, weights, state.base_model)
        if user_metadata:
            write_user_metadata(bucket / identity, user_metadata)
    except SnapshotError as exc:
        raise TrainerBadRequest(f"save_weights_for_sampler {name!r}: {exc}") from exc
    state.last_snapshot = (identity, weights)
    log.info(
        "sampler_snapshot",
        model_id=state.model_id,
        identity=identity,
        kind=kind,
        parent=parent_id,
        size_bytes=manifest.payload_size,
        encode_s=round(manifest.encode_seconds, 4),
    )
    return {
        "type": "save_weights_for_sampler",
        "path": f"tinker://{state.model_id}/sampler_weights/{name}",
        "snapshot_name": identity,
        "checkpoint_type": kind,
        "parent_snapshot_identity": parent_id,
        "size_bytes": manifest.payload_size,
        "encode_seconds": manifest.encode_seconds,
        # What was written, as the manifest names it: a client announces these in the hot-load.
        "compression_format": manifest.compression_format,
        "checksum_format": CHECKSUM_FORMAT,
    }
