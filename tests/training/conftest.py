"""A real embedded trainer process per test module (``hotloop serve trainer``), killed afterwards."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class TrainerProc:
    url: str
    bucket: Path
    state_dir: Path
    proc: subprocess.Popen[str]


def start_trainer(root: Path, model: str = "tiny", timeout_s: float = 120.0) -> TrainerProc:
    bucket, state = root / "bucket", root / "state"
    bucket.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "engine.cli", "serve", "trainer", "--port", "0", "--model", model]
    cmd += ["--bucket", str(bucket), "--state-dir", str(state)]
    log = open(root / "trainer.log", "w")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=log, text=True, env={**os.environ, "TINKER_TELEMETRY": "0"}
    )
    deadline = time.monotonic() + timeout_s
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("HOTLOOP_TRAINER_URL="):
            return TrainerProc(line.split("=", 1)[1].strip(), bucket, state, proc)
        if not line and proc.poll() is not None:
            break
    stop(proc)
    raise RuntimeError(f"trainer did not start: {(root / 'trainer.log').read_text()[-2000:]}")


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


@pytest.fixture(scope="module")
def trainer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrainerProc]:
    t = start_trainer(tmp_path_factory.mktemp("trainer"))
    try:
        yield t
    finally:
        stop(t.proc)


@pytest.fixture
def make_datum() -> Callable[[list[int]], object]:
    import tinker

    def _make(tokens: list[int]) -> tinker.Datum:
        """Next-token datum: input tokens[:-1], targets tokens[1:], all weights 1."""
        return tinker.Datum(
            model_input=tinker.ModelInput.from_ints(tokens[:-1]),
            loss_fn_inputs={
                "target_tokens": tinker.TensorData(data=tokens[1:], dtype="int64", shape=[len(tokens) - 1]),
                "weights": tinker.TensorData(
                    data=[1.0] * (len(tokens) - 1), dtype="float32", shape=[len(tokens) - 1]
                ),
            },
        )

    return _make
