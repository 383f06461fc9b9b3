"""Fixtures for the embedded trainer: one in-process server (a background thread with its own loop)
shared by a test module, and a raw HTTP client for protocol-level checks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.local.trainer import ServerThread, TrainerConfig, serve_in_thread

from .helpers import Raw


@pytest.fixture(scope="session")
def trainer(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    root = tmp_path_factory.mktemp("trainer")
    config = TrainerConfig(
        model="tiny",
        bucket=root / "bucket",
        poll_timeout_s=2.0,
        seq_gap_timeout_s=1.0,
        max_body_bytes=2 * 1024 * 1024,
        delivered_grace_s=0.0,
        torch_threads=1,
    )
    with serve_in_thread(config) as thread:
        yield thread


@pytest.fixture(scope="session")
def raw(trainer: ServerThread) -> Iterator[Raw]:
    client = Raw(trainer.url)
    yield client
    client.http.close()
