"""The seed workflow through ``engine.run``: bootstrap, parallel waits, training steps, base then
delta snapshots, verified syncs, sampling and evaluation through the deployment, metrics."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from run_support import check_exactly_once, connection, journal, rows, served_identity, tiny_config

from engine.lifecycle import LifecycleEvent, State
from engine.run.orchestrator import run

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="session")]


async def test_rl_seed_workflow(run_stack: Any, tmp_path: Path) -> None:
    run_dir = tmp_path / "rl"
    events: list[LifecycleEvent] = []
    summary = await run(
        tiny_config(run_dir, "seed"), connection=connection(run_stack), on_event=events.append
    )
    assert summary.status == "done" and summary.steps == 3

    # The journal shows the lifecycle: requesting, waiting, baseline eval, then the loop.
    entered = [r["state"] for r in journal(run_dir) if r["event"] == "enter"]
    assert entered[:4] == ["requesting", "waiting", "evaluating", "sampling"]
    assert entered.count("training") == 3 and entered.count("syncing") == 3
    assert [e.state for e in events if e.kind == "enter"] == [State(s) for s in entered]
    assert events[-1].kind == "done"

    # Base first, then deltas against the previous snapshot; every sync verified.
    ledger = rows(run_dir, "checkpoints.jsonl")
    snaps = [r for r in ledger if r["kind"] == "snapshot"]
    assert [s["checkpoint_type"] for s in snaps] == ["base", "delta", "delta"]
    assert [s["parent"] for s in snaps[1:]] == [s["identity"] for s in snaps[:-1]]
    syncs = [r for r in ledger if r["kind"] == "sync"]
    assert [s["identity"] for s in syncs] == [s["identity"] for s in snaps]
    assert [r["step"] for r in ledger if r["kind"] == "state"] == [1, 2, 3]

    # Metrics: one row per step with policy version and snapshot identity; eval rows with the hash
    # of the stored prompt set.
    steps = check_exactly_once(run_dir, 3)
    assert [s["policy_version"] for s in steps] == [0, 1, 2]  # sync every step: staleness 0
    assert steps[0]["snapshot_identity"] is None  # sampled from the untouched base weights
    assert [s["snapshot_identity"] for s in steps[1:]] == [s["identity"] for s in snaps[:2]]
    evals = [r for r in rows(run_dir) if r["kind"] == "eval"]
    assert [e["step"] for e in evals] == [0, 2, 3]
    stored = (run_dir / "eval_prompts.jsonl").read_bytes()
    assert {e["prompts_sha256"] for e in evals} == {hashlib.sha256(stored).hexdigest()}
    assert evals[-1]["snapshot_identity"] == snaps[-1]["identity"]
    assert all(0.0 <= e["score"] <= 1.0 for e in evals)

    # The deployment ends on the final snapshot; summary.json says where everything is.
    assert await served_identity(run_stack, "seed-serving") == snaps[-1]["identity"]
    saved = json.loads((run_dir / "summary.json").read_text())
    assert saved["steps"] == 3 and saved["run_dir"] == str(run_dir.resolve())
    assert saved["eval_score_first"] == evals[0]["score"] and saved["eval_score_last"] == evals[-1]["score"]

    # Running it again finds a finished run and does nothing.
    before = journal(run_dir)
    again = await run(tiny_config(run_dir, "seed"), connection=connection(run_stack))
    assert again.status == "done" and again.steps == 3 and again.generation == 1
    assert journal(run_dir) == before


async def test_sft_with_periodic_sync_and_eval(run_stack: Any, tmp_path: Path) -> None:
    run_dir = tmp_path / "sft"
    cfg = tiny_config(
        run_dir,
        "seed",  # the same trainer job and deployment as the RL run: a new model on them
        recipe="sft",
        max_steps=4,
        intervals={"sync_every": 2, "eval_every": 2, "checkpoint_every": 2},
    )
    summary = await run(cfg, connection=connection(run_stack))
    assert summary.status == "done" and summary.steps == 4
    steps = check_exactly_once(run_dir, 4)
    losses = [s["loss"] for s in steps]
    assert losses[-1] < losses[0]
    ledger = rows(run_dir, "checkpoints.jsonl")
    assert [r["step"] for r in ledger if r["kind"] == "state"] == [2, 4]
    # A deployment serving another model's snapshot (the RL run's, when it ran first) is re-synced
    # to this run's step-0 weights before the baseline evaluation.
    connected = [
        f for r in journal(run_dir) if r["event"] == "exit" for f in r["records"] if f["kind"] == "connected"
    ]
    synced = [0, 2, 4] if not connected[0]["in_step"] else [2, 4]
    assert [r["step"] for r in ledger if r["kind"] == "sync"] == synced
    assert [r["step"] for r in ledger if r["kind"] == "snapshot"] == synced
    assert [r["step"] for r in rows(run_dir) if r["kind"] == "eval"] == [0, 2, 4]


async def test_rl_run_in_fireworks_dialect(run_stack: Any, tmp_path: Path) -> None:
    """A trainer spoken to in Fireworks' JSON dialect (``trainer.dialect: fireworks``, what a run
    against Fireworks picks by default) through every state; the same trainer job and deployment as
    the runs above, a new model on them."""
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
    # The deployment held another run's snapshot, so this session starts with a base (one more sync
    # first when the run owes one); then deltas against the previous snapshot.
    kinds = [s["checkpoint_type"] for s in snaps]
    assert len(snaps) >= 2 and kinds[0] == "base" and set(kinds[1:]) == {"delta"}
    assert [s["parent"] for s in snaps[1:]] == [s["identity"] for s in snaps[:-1]]
    assert [r["identity"] for r in ledger if r["kind"] == "sync"] == [s["identity"] for s in snaps]
    assert await served_identity(run_stack, "seed-serving") == snaps[-1]["identity"]


async def test_hotloop_run_starts_and_stops_its_own_embedded_stack(tmp_path: Path) -> None:
    """The default backend: `hotloop run` brings up an embedded stack under the run directory,
    runs, writes summary.json, says where the run is, and stops the stack."""
    import asyncio
    import os
    import signal
    import sys

    import yaml

    run_dir = tmp_path / "own"
    cfg = tiny_config(run_dir, "own", max_steps=1, intervals={"eval_every": 1})
    config = tmp_path / "own.yaml"
    config.write_text(yaml.safe_dump(cfg))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "engine.cli", "run", str(config), "--no-progress",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "TINKER_TELEMETRY": "0"},
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 240)
    finally:
        if proc.returncode is None:  # let it stop its stack, then make sure
            proc.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
    assert proc.returncode == 0, out.decode()[-2000:]
    assert f"run directory: {run_dir.resolve()}" in out.decode()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "done" and summary["steps"] == 1
    assert summary["eval_score_first"] is not None and summary["eval_score_last"] is not None
    assert "embedded stack stopped" in err.decode()
