"""Each state's coroutine against fake backends (tests/support/fakes.py), and whole runs of the real
states on the real Runner, orchestrator and journal without any process or network."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from support.fakes import make_context, planes, run_config

from engine.errors import FatalError
from engine.lifecycle.schedule import Counters
from engine.run.records import (
    Connected,
    EvalCommitted,
    ResourcesAcquired,
    SnapshotSaved,
    StateSaved,
    StepCommitted,
    Synced,
)
from engine.run.replay import Replay
from engine.states import checkpointing, evaluating, requesting, sampling, syncing, training, waiting


async def connected(tmp_path: Path, **config: Any) -> Any:
    ctx = make_context(tmp_path, planes(per_completion_identity=config.pop("per_completion", True)), **config)
    await requesting.run(ctx)
    await waiting.run(ctx)
    ctx.facts.clear()
    return ctx


async def test_requesting_provisions_with_run_ids_and_reattaches_known_refs(tmp_path: Path) -> None:
    ctx = make_context(tmp_path, planes())
    await requesting.run(ctx)
    (fact,) = ctx.facts
    assert isinstance(fact, ResourcesAcquired)
    assert fact.trainer.resource_id == "fake-trainer" and fact.deployment.resource_id == "fake-serving"
    again = make_context(tmp_path, planes())
    again.resume = Replay(
        resources=ResourcesAcquired(fact.trainer.__class__("fake", "older-trainer"), fact.deployment)
    )
    await requesting.run(again)
    assert again.trainer.provisioned == ["older-trainer"]  # type: ignore[attr-defined]


async def test_waiting_connects_a_fresh_run_at_step_zero(tmp_path: Path) -> None:
    ctx = make_context(tmp_path, planes())
    await requesting.run(ctx)
    ctx.facts.clear()
    await waiting.run(ctx)
    assert ctx.counters == Counters.restored(0, -1, serves_restored_step=True)
    (fact,) = ctx.facts
    assert isinstance(fact, Connected) and fact.in_step and fact.served_identity is None
    assert ctx.trainer.reattached == 0  # type: ignore[attr-defined]


async def test_waiting_refuses_a_trainer_whose_step_count_disagrees_with_the_journal(tmp_path: Path) -> None:
    ctx = make_context(tmp_path, planes())
    ctx.trainer.trainer.states["tinker://x/weights/s"] = 3  # type: ignore[attr-defined]
    ctx.resume = Replay(started=True, step=3, state_path="tinker://x/weights/s", optimizer_steps=3)
    await requesting.run(ctx)
    ctx.trainer.session_steps_override = 5  # type: ignore[attr-defined]
    with pytest.raises(FatalError, match=r"trainer reports 5 optimizer steps .* journal committed 3"):
        await waiting.run(ctx)


async def test_waiting_owes_a_sync_when_the_deployment_serves_something_else(tmp_path: Path) -> None:
    ctx = make_context(tmp_path, planes())
    ctx.trainer.trainer.states["tinker://x/weights/s"] = 2  # type: ignore[attr-defined]
    ctx.deployment.deployment.held = "someone-elses"  # type: ignore[attr-defined]
    ctx.resume = Replay(
        started=True, step=2, state_path="tinker://x/weights/s", optimizer_steps=2,
        synced_identity="step-000002-aaaa", synced_known=True,
    )  # fmt: skip
    await requesting.run(ctx)
    await waiting.run(ctx)
    assert ctx.trainer.reattached == 1  # type: ignore[attr-defined]
    assert ctx.counters.force_sync and ctx.counters.synced_step == -1 and ctx.counters.step == 2
    assert ctx.schedule.after(waiting_state(), ctx.counters).name == "CHECKPOINTING"


def waiting_state() -> Any:
    from engine.lifecycle.table import State

    return State.WAITING


async def test_sampling_tags_every_rollout_with_the_verified_identity(tmp_path: Path) -> None:
    ctx = await connected(tmp_path, rl={"prompts_per_step": 2, "group_size": 3})
    await sampling.run(ctx)
    batch = ctx.rollouts
    assert batch is not None and batch.step == 1 and len(batch.rollouts) == 6
    assert {r.snapshot_identity for r in batch.rollouts} == {None} and batch.window == 8
    assert ctx.counters.rollout_step == 1


async def test_sampling_fails_on_a_completion_from_another_snapshot(tmp_path: Path) -> None:
    ctx = await connected(tmp_path)
    ctx.deployment.deployment.held = "stale-snapshot"  # type: ignore[attr-defined]
    with pytest.raises(FatalError, match="came from snapshot 'stale-snapshot'"):
        await sampling.run(ctx)


async def test_without_per_completion_identity_the_identity_is_read_back_after_sampling(
    tmp_path: Path,
) -> None:
    ctx = await connected(tmp_path, per_completion=False)
    ctx.deployment.deployment.held = ctx.served_identity = "verified"  # type: ignore[attr-defined]
    await sampling.run(ctx)
    assert ctx.rollouts is not None and {r.snapshot_identity for r in ctx.rollouts.rollouts} == {"verified"}
    ctx.rollouts, ctx.counters = None, ctx.counters.replace(rollout_step=-1)
    ctx.deployment.deployment.switch_after_sampling = "someone-elses"  # type: ignore[attr-defined]
    with pytest.raises(FatalError, match="switched from the verified 'verified' to 'someone-elses'"):
        await sampling.run(ctx)


async def test_training_commits_the_row_with_the_trainers_step_count(tmp_path: Path) -> None:
    ctx = await connected(tmp_path, rl={"prompts_per_step": 1, "group_size": 2})
    with pytest.raises(FatalError, match="no rollouts for step 1"):
        await training.run(ctx)
    await sampling.run(ctx)
    await training.run(ctx)
    (fact,) = ctx.facts
    assert isinstance(fact, StepCommitted) and fact.step == 1
    row = fact.row
    assert row["optimizer_steps"] == 1 and row["samples"] == 2 and row["window"] == 8
    assert row["policy_version"] == 0 and row["staleness"] == 0 and row["objective"] == -0.1
    assert ctx.counters.step == 1 and ctx.rollouts is None


async def test_sft_training_needs_no_rollouts(tmp_path: Path) -> None:
    ctx = await connected(tmp_path, recipe="sft", sft={"batch_size": 2})
    await training.run(ctx)
    (fact,) = ctx.facts
    assert isinstance(fact, StepCommitted) and fact.row["tokens"] > 0 and fact.row["optimizer_steps"] == 1


async def test_checkpointing_saves_what_the_schedule_says_and_syncing_verifies(tmp_path: Path) -> None:
    ctx = await connected(
        tmp_path, max_steps=4, intervals={"checkpoint_every": 2, "sync_every": 1, "eval_every": 0}
    )
    ctx.counters = ctx.counters.trained()  # step 1: a sync is due, a full state is not
    await checkpointing.run(ctx)
    assert [type(f) for f in ctx.facts] == [SnapshotSaved]
    assert ctx.counters.snapshot_step == 1 and ctx.counters.state_step == 0
    ctx.facts.clear()
    await syncing.run(ctx)
    (synced,) = ctx.facts
    assert (
        isinstance(synced, Synced)
        and synced.identity == ctx.served_identity == ctx.deployment.deployment.held
    )  # type: ignore[attr-defined]
    assert ctx.counters.synced_step == 1
    ctx.facts.clear()
    ctx.counters = ctx.counters.trained()  # step 2: both due; the snapshot is a delta on step 1's
    await checkpointing.run(ctx)
    state, snap = ctx.facts
    assert isinstance(state, StateSaved) and state.step == 2 and state.optimizer_steps == 0
    assert (
        isinstance(snap, SnapshotSaved) and snap.checkpoint_type == "delta" and snap.parent == synced.identity
    )


async def test_evaluating_scores_the_stored_set_on_the_verified_snapshot(tmp_path: Path) -> None:
    ctx = await connected(tmp_path, eval={"prompts": 3, "samples_per_prompt": 2})
    await evaluating.run(ctx)
    (fact,) = ctx.facts
    assert isinstance(fact, EvalCommitted) and fact.row["samples"] == 6
    assert fact.row["prompts_sha256"] == ctx.eval_sha256 and fact.row["snapshot_identity"] is None
    assert 0.0 <= fact.row["score"] <= 1.0 and ctx.counters.evaluated_step == 0


# ---- whole runs: the real orchestrator, Runner, states and journal on fake planes ---------------


@pytest.mark.parametrize("per_completion", [True, False])
async def test_a_whole_run_on_fake_backends(tmp_path: Path, per_completion: bool) -> None:
    from engine.run.orchestrator import run
    from engine.run.rundir import RunDir

    p = planes(per_completion_identity=per_completion)
    summary = await run(run_config(tmp_path), planes=p)
    assert summary.status == "done" and summary.steps == 5
    rows = RunDir(tmp_path / "run").read_rows()
    assert [r["step"] for r in rows if r["kind"] == "step"] == [1, 2, 3, 4, 5]
    assert [r["step"] for r in rows if r["kind"] == "eval"] == [0, 2, 4, 5]
    assert p.trainer.trainer.optimizer_steps == 5
    assert p.deployment.deployment.held == summary.served_identity is not None


async def test_a_run_cancelled_mid_state_resumes_without_losing_or_repeating_a_step(tmp_path: Path) -> None:
    from engine.lifecycle.events import LifecycleEvent
    from engine.run.orchestrator import run, start
    from engine.run.rundir import RunDir

    p = planes()
    third_step = asyncio.Event()

    def watch(e: LifecycleEvent) -> None:
        if e.kind == "record" and isinstance(e.record, StepCommitted) and e.record.step == 3:
            third_step.set()

    handle = start(run_config(tmp_path, max_steps=6), planes=p, on_event=watch)
    await asyncio.wait_for(third_step.wait(), 30)
    handle.cancel()
    with pytest.raises(asyncio.CancelledError):
        await handle.wait()
    summary = await run(None, run_dir=tmp_path / "run", planes=p)
    assert summary.status == "done" and summary.generation == 2
    steps = [r["step"] for r in RunDir(tmp_path / "run").read_rows() if r["kind"] == "step"]
    assert steps == [1, 2, 3, 4, 5, 6]
    # The resumed session restored the last full state; its optimizer steps continue from there.
    assert p.trainer.trainer.optimizer_steps == 6
