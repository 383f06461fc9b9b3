"""A real embedded trainer process per test module (``hotloop serve trainer``), killed afterwards."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.launch import TRAINER_URL_KEY, launched, serve_argv


@dataclass
class TrainerProc:
    url: str
    bucket: Path
    state_dir: Path
    proc: subprocess.Popen[bytes]


@pytest.fixture(scope="module")
def trainer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrainerProc]:
    root = tmp_path_factory.mktemp("trainer")
    bucket, state = root / "bucket", root / "state"
    bucket.mkdir(parents=True, exist_ok=True)
    argv = serve_argv("trainer", model="tiny", bucket=bucket, extra=["--state-dir", str(state)])
    with launched(
        argv,
        TRAINER_URL_KEY,
        timeout_s=120,
        extra_env={"TINKER_TELEMETRY": "0"},
        log_path=root / "trainer.log",
    ) as server:
        yield TrainerProc(server.url, bucket, state, server.proc)


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
