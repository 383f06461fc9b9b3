"""Fixtures for tests/loadtest: the embedded deployment as a real subprocess."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.launch import DEPLOYMENT_URL_KEY, launched, serve_argv


@pytest.fixture(scope="module")
def embedded_deployment(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`hotloop serve deployment` on a free port; yields its base URL; always killed."""
    bucket = tmp_path_factory.mktemp("bucket")
    argv = serve_argv("deployment", model=str(tiny_model_dir), bucket=bucket, extra=["--max-batch", "8"])
    with launched(argv, DEPLOYMENT_URL_KEY, timeout_s=180, grace_s=20) as server:
        yield server.url
