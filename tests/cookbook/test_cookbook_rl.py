"""The cookbook's RL loop (unmodified) on a small local environment with the built-in losses it uses:
stable_reinforce (its default: the async loop's, sync too), dro and gspo. Every run is another run on
the one module trainer, saving the same checkpoint names as the runs before it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from tinker_cookbook.rl import train

from .conftest import ALIAS, CookbookTrainer
from .local_env import SayYesDatasetBuilder


def _config(log_path: Path, loss_fn: str, **extra: object) -> train.Config:
    return train.Config(
        learning_rate=1e-3,
        dataset_builder=SayYesDatasetBuilder(model_name=ALIAS),
        model_name=ALIAS,
        recipe_name="hotloop_test_rl",
        renderer_name="qwen3",
        max_tokens=8,
        log_path=str(log_path),
        eval_every=0,
        save_every=1,
        lora_rank=8,
        loss_fn=loss_fn,  # type: ignore[arg-type]
        num_groups_to_log=0,
        **extra,  # type: ignore[arg-type]
    )


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize(
    ("loss_fn", "asynchronous"),
    [("stable_reinforce", False), ("stable_reinforce", True), ("dro", False), ("gspo", False)],
)
def test_rl_loop_trains_with_the_builtin_loss(
    cookbook_trainer: CookbookTrainer, tmp_path: Path, loss_fn: str, asynchronous: bool
) -> None:
    extra: dict[str, object] = {}
    if asynchronous:  # AsyncConfig's own default loss is stable_reinforce; Config's default defers to it
        extra["async_config"] = train.AsyncConfig(max_steps_off_policy=1, groups_per_batch=2)
    config = _config(tmp_path / "rl", "importance_sampling" if asynchronous else loss_fn, **extra)
    if asynchronous:
        assert config.training_loss_fn() == "stable_reinforce"
    asyncio.run(train.main(config))

    metrics = [m for m in _rows(tmp_path / "rl" / "metrics.jsonl") if "env/all/reward/total" in m]
    assert len(metrics) == 2  # the dataset's two batches, each trained
    assert all(0.0 <= m["env/all/reward/total"] <= 1.0 for m in metrics)
    assert all(m["optim/kl_sample_train_v1"] == pytest.approx(0.0, abs=0.05) for m in metrics)
    checkpoints = _rows(tmp_path / "rl" / "checkpoints.jsonl")
    run = checkpoints[-1]["state_path"].removeprefix("tinker://").split("/")[0]
    assert {r["name"] for r in checkpoints} >= {"000001", "final"}
    # The trainer took one optimizer step per batch for this run (its final state says so), and
    # kept its snapshots apart from the other runs' identically named ones.
    meta = json.loads((cookbook_trainer.state_dir / run / "weights" / "final" / "meta.json").read_text())
    assert meta["optimizer_steps"] == 2
    assert run in [p.parent.name for p in cookbook_trainer.bucket.glob("*/final")]
