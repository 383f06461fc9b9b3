"""The cookbook's supervised loop (unmodified) on a local JSONL file: checkpoints, then a resumed run
whose saves reuse the first run's checkpoint names (the resume bug of a flat snapshot bucket), then
the cookbook's weights.download of the final state."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from tinker_cookbook import weights
from tinker_cookbook.supervised import train
from tinker_cookbook.supervised.data import FromConversationFileBuilder
from tinker_cookbook.supervised.types import ChatDatasetBuilderCommonConfig

from .conftest import ALIAS, CookbookTrainer

DATA = Path(__file__).with_name("chat.jsonl")


def _config(log_path: Path, max_steps: int) -> train.Config:
    common = ChatDatasetBuilderCommonConfig(
        model_name_for_tokenizer=ALIAS, renderer_name="qwen3", max_length=128, batch_size=4
    )
    return train.Config(
        log_path=str(log_path),
        model_name=ALIAS,
        recipe_name="hotloop_test_sl",
        renderer_name="qwen3",
        dataset_builder=FromConversationFileBuilder(file_path=str(DATA), common_config=common),
        learning_rate=1e-3,
        lora_rank=8,
        num_epochs=2,
        save_every=2,
        eval_every=0,
        infrequent_eval_every=0,
        max_steps=max_steps,
    )


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_supervised_checkpoints_resume_and_download(
    cookbook_trainer: CookbookTrainer, tmp_path: Path
) -> None:
    log_path = tmp_path / "sl"
    asyncio.run(train.main(_config(log_path, max_steps=3)))
    first = _rows(log_path / "checkpoints.jsonl")
    assert [r["name"] for r in first] == ["000002", "final"]
    run1 = first[0]["state_path"].removeprefix("tinker://").split("/")[0]
    assert all(r["sampler_path"] == f"tinker://{run1}/sampler_weights/{r['name']}" for r in first)

    # A run killed after its step-2 checkpoint leaves only that row ("final" marks a finished run).
    ledger = log_path / "checkpoints.jsonl"
    ledger.write_text(json.dumps(first[0]) + "\n")
    # Resumed from it (with the optimizer): a new training run on the same trainer. Its first save is
    # 000002 again (the cookbook saves at the step it resumes at), and it also writes "final": names
    # the first run used, now in the new run's own namespace.
    asyncio.run(train.main(_config(log_path, max_steps=6)))
    rows = _rows(ledger)
    assert [r["name"] for r in rows] == ["000002", "000002", "000004", "final"]
    run2 = rows[-1]["state_path"].removeprefix("tinker://").split("/")[0]
    assert run2 != run1 and rows[1]["sampler_path"] == f"tinker://{run2}/sampler_weights/000002"
    for run in (run1, run2):
        assert (cookbook_trainer.bucket / run / "final" / "manifest.json").exists()
    metrics = _rows(log_path / "metrics.jsonl")
    steps = [m["step"] for m in metrics if "train_mean_nll" in m]
    assert steps == sorted(set(steps)) and max(steps) == 5  # resumed, not restarted
    assert all(m["train_mean_nll"] > 0 for m in metrics if "train_mean_nll" in m)

    # The cookbook's weights.download: a state path is re-loaded, exported (age-encrypted to a key
    # it generates), fetched by signed URL, decrypted, and the export deleted again.
    out = tmp_path / "adapter"
    weights.download(tinker_path=rows[-1]["state_path"], output_dir=str(out), base_url=cookbook_trainer.url)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 8 and (out / "adapter_model.safetensors").stat().st_size > 0
    exports = list((cookbook_trainer.state_dir).glob("*/external_weights/*"))
    assert exports == []  # deleted after the download
