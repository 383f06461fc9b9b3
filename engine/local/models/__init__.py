"""Offline embedded models: see ``factory``."""

from engine.local.models.factory import (
    SPECS,
    ModelSpec,
    build_model_dir,
    fingerprint,
    load_model,
    load_tokenizer,
    resolve_model,
)

__all__ = [
    "SPECS",
    "ModelSpec",
    "build_model_dir",
    "fingerprint",
    "load_model",
    "load_tokenizer",
    "resolve_model",
]
