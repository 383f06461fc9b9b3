"""Shared fixtures. Tests use the real embedded models (built once into the hotloop cache)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TINKER_TELEMETRY", "0")


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    from engine.local.models import build_model_dir

    return build_model_dir("tiny")
