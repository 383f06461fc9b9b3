"""Fixtures for tests/loadtest: the embedded deployment as a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def embedded_deployment(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`hotloop serve deployment` on a free port; yields its base URL; always killed."""
    bucket = tmp_path_factory.mktemp("bucket")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "engine.cli",
            "serve",
            "deployment",
            "--port",
            "0",
            "--model",
            str(tiny_model_dir),
            "--bucket",
            str(bucket),
            "--max-batch",
            "8",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ},
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 180
        url = ""
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith("HOTLOOP_DEPLOYMENT_URL="):
                url = line.strip().split("=", 1)[1]
                break
        assert url, f"the embedded deployment did not start (exit code {proc.poll()})"
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(20)
