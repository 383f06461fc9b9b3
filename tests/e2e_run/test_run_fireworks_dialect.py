"""A run whose trainer speaks Fireworks' JSON dialect (``trainer.dialect: fireworks``, what a run
against Fireworks picks by default) through the states of the lifecycle, against the embedded stack:
the same trainer job as the seed run, a new model on it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from run_support import check_exactly_once, connection, journal, rows, served_identity, tiny_config

from engine.run.orchestrator import run

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="session")]


async def test_rl_run_in_fireworks_dialect(run_stack: Any, tmp_path: Path) -> None:
    run_dir = tmp_path / "fw"
    cfg = tiny_config(run_dir, "seed", max_steps=2, trainer={"dialect": "fireworks"})
    summary = await run(cfg, connection=connection(run_stack))
    assert summary.status == "done" and summary.steps == 2

    # The dialect is decided once and journaled with the trainer's ref (a resume keeps it).
    text = json.dumps(journal(run_dir))
    assert '"dialect": "fireworks"' in text and '"dialect": "tinker"' not in text
    steps = check_exactly_once(run_dir, 2)
    assert [s["optimizer_steps"] for s in steps] == [1, 2]
    ledger = rows(run_dir, "checkpoints.jsonl")
    snaps = [r for r in ledger if r["kind"] == "snapshot"]
    assert [s["checkpoint_type"] for s in snaps] == ["base", "delta"]
    assert [r["identity"] for r in ledger if r["kind"] == "sync"] == [s["identity"] for s in snaps]
    assert await served_identity(run_stack, "seed-serving") == snaps[-1]["identity"]
