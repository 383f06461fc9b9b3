"""``user_metadata`` (Tinker's string-to-string map a client attaches to a run or a checkpoint) and the
per-run record that keeps it.

Where Tinker returns it, the trainer does: ``TrainingRun.user_metadata`` is what ``create_model`` (or
a create-via-load ``load_weights``) carried, ``Checkpoint.user_metadata`` what ``save_state`` /
``save_weights_for_sampler`` carried. The run record, ``STATE_DIR/<run_id>/run.json``, outlives the
model (a finished session, a restarted trainer), which is what the cookbook's resume reads
(``get_training_run_by_tinker_path`` -> ``renderer_name``). Metadata files are written on worker
threads, never on the event loop.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from engine.files import write_json
from engine.local.trainer.config import TrainerBadRequest

MAX_KEYS = 64
MAX_KEY_CHARS = 256
MAX_VALUE_CHARS = 4096
USER_METADATA_FILE = "user_metadata.json"
RUN_RECORD = "run.json"


def parse_user_metadata(body: Mapping[str, Any], field: str = "user_metadata") -> dict[str, str] | None:
    """The request's ``user_metadata`` validated (None when absent)."""
    value = body.get(field)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise TrainerBadRequest(f"{field} must be an object of strings, got {type(value).__name__}")
    if len(value) > MAX_KEYS:
        raise TrainerBadRequest(f"{field} has {len(value)} keys; at most {MAX_KEYS} are kept")
    for k, v in value.items():
        if not isinstance(v, str):
            raise TrainerBadRequest(f"{field}[{k[:64]!r}] must be a string, got {type(v).__name__}")
        if len(k) > MAX_KEY_CHARS or len(v) > MAX_VALUE_CHARS:
            raise TrainerBadRequest(
                f"{field}[{k[:64]!r}]: keys are limited to {MAX_KEY_CHARS} characters and values to "
                f"{MAX_VALUE_CHARS}"
            )
    return dict(value)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # absent, or not ours: the answer is simply "no metadata"
    return data if isinstance(data, dict) else None


def write_user_metadata(directory: Path, metadata: Mapping[str, str]) -> None:
    write_json(directory / USER_METADATA_FILE, metadata)


def read_user_metadata(directory: Path) -> dict[str, str] | None:
    data = _read_json(directory / USER_METADATA_FILE)
    return {str(k): str(v) for k, v in data.items()} if data is not None else None


def write_run_record(
    run_dir: Path, run_id: str, base_model: str, lora_rank: int, user_metadata: Mapping[str, str] | None
) -> None:
    write_json(
        run_dir / RUN_RECORD,
        {
            "training_run_id": run_id,
            "base_model": base_model,
            "lora_rank": lora_rank,
            "user_metadata": dict(user_metadata) if user_metadata else None,
            "created": time.time(),
        },
    )


def read_run_record(run_dir: Path) -> dict[str, Any] | None:
    return _read_json(run_dir / RUN_RECORD)
