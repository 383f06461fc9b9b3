"""tinker-cookbook's own training loops against a real `hotloop serve trainer` subprocess.

One trainer (tiny model, served under the alias Qwen/Qwen3-8B) for the whole module, so every run
after the first is a second run on one trainer. The cookbook finds the embedded tokenizer for the
alias through `engine.local.cookbook.register_trainer_tokenizers` (its own register_tokenizer hook).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("tinker_cookbook", reason="tinker-cookbook is not installed (see the README)")

from support.launch import TRAINER_URL_KEY, launched, serve_argv

ALIAS = "Qwen/Qwen3-8B"
REPO = str(Path(__file__).resolve().parents[2])


@dataclass(frozen=True)
class CookbookTrainer:
    url: str
    bucket: Path
    state_dir: Path
    log: Path


@pytest.fixture(scope="session")
def cookbook_trainer(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CookbookTrainer]:
    from engine.local.cookbook import register_trainer_tokenizers

    root = tmp_path_factory.mktemp("cookbook-trainer")
    argv = serve_argv(
        "trainer",
        model="tiny",
        bucket=root / "bucket",
        extra=["--alias", ALIAS, "--threads", "1", "--poll-timeout", "5"],
    )
    env = {"PYTHONPATH": os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH", "")) if p)}
    with (
        pytest.MonkeyPatch.context() as mp,
        launched(
            argv, TRAINER_URL_KEY, timeout_s=180, extra_env=env, log_path=root / "trainer.log"
        ) as server,
    ):
        mp.setenv("TINKER_API_KEY", "tml-cookbook-test")
        mp.setenv("TINKER_TELEMETRY", "0")
        mp.setenv("TINKER_BASE_URL", server.url)
        assert register_trainer_tokenizers(server.url) == ["tiny", ALIAS]
        yield CookbookTrainer(server.url, root / "bucket", root / "state", root / "trainer.log")
