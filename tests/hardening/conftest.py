"""The three servers as real subprocesses (their RSS is what the hostile suite measures), each with
its API key handed over the way the docs say: trainer by env var, deployment by a 0600 file,
control plane by env var. Started once per session and shared by the hostile and property tests."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.launch import DEPLOYMENT_URL_KEY, TRAINER_URL_KEY, launched, serve_argv

from .support import Target

TRAINER_KEY = "tml-hostile-trainer-key"
DEPLOYMENT_KEY = "hostile-deployment-key"
STACK_KEY = "hl-hostile-stack-key"
# The deployment runs under a small descriptor limit, as the probe's did (400 there): its
# connection cap comes out at 192 (512, less room for files and two accept batches).
NOFILE = 512


def _limited(argv: list[str], nofile: int) -> list[str]:
    """``argv`` (a ``python -m engine.cli ...`` line) under RLIMIT_NOFILE = ``nofile``."""
    code = (
        "import resource, runpy, sys; "
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({nofile}, {nofile})); "
        f"sys.argv = {argv[2:]!r}; runpy.run_module('engine.cli', run_name='__main__')"
    )
    return [argv[0], "-c", code]


@pytest.fixture(scope="session")
def measurements() -> Iterator[dict[str, Any]]:
    results: dict[str, Any] = {}
    yield results
    out = os.environ.get("HOTLOOP_HARDENING_REPORT")
    if out:
        Path(out).write_text(json.dumps(results, indent=1, sort_keys=True))


@pytest.fixture(scope="session")
def trainer_proc(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Target]:
    root = tmp_path_factory.mktemp("hostile-trainer")
    extra = ["--api-key-env", "HOSTILE_TRAINER_KEY", "--max-body-mb", "4", "--seq-gap-timeout", "0.5"]
    argv = serve_argv("trainer", model="tiny", bucket=root / "bucket", extra=[*extra, "--threads", "1"])
    with launched(
        argv,
        TRAINER_URL_KEY,
        timeout_s=120,
        extra_env={"HOSTILE_TRAINER_KEY": TRAINER_KEY},
        log_path=root / "stderr.log",
    ) as server:
        yield Target(
            server.proc.pid, server.url, {"X-API-Key": TRAINER_KEY}, "/api/v1/healthz", root / "stderr.log"
        )


@pytest.fixture(scope="session")
def deployment_proc(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Target]:
    root = tmp_path_factory.mktemp("hostile-deployment")
    key_file = root / "key"
    key_file.write_text(DEPLOYMENT_KEY + "\n")
    key_file.chmod(0o600)
    (root / "bucket").mkdir()
    extra = ["--api-key-file", str(key_file), "--max-body-mb", "4", "--threads", "1"]
    argv = _limited(serve_argv("deployment", model="tiny", bucket=root / "bucket", extra=extra), NOFILE)
    with launched(argv, DEPLOYMENT_URL_KEY, timeout_s=120, log_path=root / "stderr.log") as server:
        yield Target(
            server.proc.pid,
            server.url,
            {"Authorization": f"Bearer {DEPLOYMENT_KEY}"},
            "/health",
            root / "stderr.log",
        )


@pytest.fixture(scope="session")
def stack_proc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    root = tmp_path_factory.mktemp("hostile-stack")
    argv = [sys.executable, "-m", "engine.cli", "up", "--port", "0", "--state-dir", str(root / "state")]
    with launched(
        [*argv, "--api-key-env", "HOSTILE_STACK_KEY"],
        "HOTLOOP_BASE_URL",
        timeout_s=120,
        extra_env={"HOSTILE_STACK_KEY": STACK_KEY},
        log_path=root / "stderr.log",
    ) as server:
        yield Target(
            server.proc.pid,
            server.url,
            {"Authorization": f"Bearer {STACK_KEY}"},
            "/v1/accounts",
            root / "stderr.log",
        )
