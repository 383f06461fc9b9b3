"""Whole runs that lose their trainer or deployment and heal themselves, on fake planes: the failure
is seen by the liveness watch (not the stall limit) and named, the policy's decision is journaled and
published, and the resume path keeps every step exactly once with no optimizer step applied twice."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from support.fakes import planes
from support.run_checks import check_exactly_once

from engine.journal import read_journal
from engine.lifecycle import LifecycleEvent, RunFailed
from engine.run.display import LiveRunTable
from engine.run.orchestrator import resume, run
from engine.run.recovering import RecoveryFailed
from engine.run.recovery import Decision
from engine.run.rundir import RunDir

STEPS = 6


def config(tmp_path: Path, **over: Any) -> dict[str, Any]:
    # A stall limit far beyond the test's life: a failure seen only by the stall limit would hang it.
    return {
        "model": "tiny", "run_dir": str(tmp_path / "run"), "max_steps": STEPS,
        "intervals": {"sync_every": 1, "eval_every": 3, "checkpoint_every": 2},
        "rl": {"prompts_per_step": 2, "group_size": 2}, "eval": {"prompts": 2, "samples_per_prompt": 1},
        "limits": {"stall_s": 3000, "state_timeout_s": 3000},
        "recovery": {"health_every_s": 0.02, "backoff_s": 0.0},
        **over,
    }  # fmt: skip


def recoveries(run_dir: Path) -> list[dict[str, Any]]:
    return [r for r in read_journal(run_dir / "journal.jsonl") if r["event"] == "recovery"]


def failures(run_dir: Path) -> list[str]:
    records = read_journal(run_dir / "journal.jsonl")
    return [r["error"] for r in records if r["event"] == "exit" and r.get("next") == "failed"]


async def test_a_lost_trainer_is_reconnected_and_nothing_is_lost_or_repeated(tmp_path: Path) -> None:
    p = planes()
    p.trainer.trainer.die_after_step = {3}  # step 3's optimizer step applied, never answered
    seen: list[LifecycleEvent] = []
    summary = await run(config(tmp_path), planes=p, on_event=seen.append)
    assert summary.status == "done" and summary.steps == STEPS and summary.generation == 2
    check_exactly_once(tmp_path / "run", STEPS)
    assert p.trainer.trainer.deaths == 1 and p.trainer.recovered == 1  # type: ignore[attr-defined]
    # The failure names its cause, as the backend said it, not a stall.
    (error,) = failures(tmp_path / "run")
    assert "trainer job 'run-trainer' is FAILED: injected: process killed" in error and "stuck" not in error
    (rec,) = recoveries(tmp_path / "run")
    assert rec["failure"] == "trainer_failed" and rec["action"] == "reconnect_trainer"
    assert rec["state"] == "training" and rec["step"] == 2 and rec["generation"] == 1
    events = [e for e in seen if e.kind == "recovery"]
    assert len(events) == 1 and isinstance(events[0].record, Decision) and seen[-1].kind == "done"
    assert not any(e.kind == "failed" for e in seen)  # a healed failure is not terminal
    # The resumed generation restarted from the last full state (step 2): step 3 was redone on a
    # new model, so the trainer never applied it twice to the model that finished the run.
    start = [r for r in read_journal(tmp_path / "run" / "journal.jsonl") if r["event"] == "start"][-1]
    assert start["resume_from"] == 2


async def test_a_lost_deployment_is_recreated_and_owed_a_full_snapshot(tmp_path: Path) -> None:
    p = planes()
    dep = p.deployment.deployment  # type: ignore[attr-defined]
    dep.die_at_load = {3}  # dies when asked for its third hot-load (step 3's delta)
    summary = await run(config(tmp_path), planes=p)
    assert summary.status == "done" and summary.steps == STEPS
    check_exactly_once(tmp_path / "run", STEPS)
    assert dep.deaths == 1 and p.deployment.recovered == 1  # type: ignore[attr-defined]
    (rec,) = recoveries(tmp_path / "run")
    assert rec["failure"] == "deployment_failed" and rec["action"] == "recover_deployment"
    assert "deployment 'run-serving' is FAILED" in rec["cause"]
    # Re-created, it held its initial weights: the first load after recovery was a full snapshot,
    # and it ends serving the final one.
    after = dep.loads[2:]
    assert after[0][1] is None, "the first snapshot after the recovery is a base"
    ledger = RunDir(tmp_path / "run").read_rows("checkpoints.jsonl")
    last_sync = [r for r in ledger if r["kind"] == "sync"][-1]
    assert last_sync["step"] == STEPS and dep.held == last_sync["identity"] == summary.served_identity


async def test_the_demo_shape_with_both_parts_lost_once(tmp_path: Path) -> None:
    p = planes()
    p.trainer.trainer.die_after_step = {2}  # type: ignore[attr-defined]
    p.deployment.deployment.die_at_load = {5}  # type: ignore[attr-defined]
    table = LiveRunTable(str(tmp_path / "run"))
    summary = await run(config(tmp_path), planes=p, on_event=table)
    assert summary.status == "done" and summary.generation == 3
    check_exactly_once(tmp_path / "run", STEPS)
    assert [r["failure"] for r in recoveries(tmp_path / "run")] == ["trainer_failed", "deployment_failed"]
    assert table.values["recoveries"] == "2 (last: deployment_failed -> recover_deployment)"
    html = (tmp_path / "run" / "report.html").read_text()  # the report marks both on its timeline
    assert html.count('data-mark="recovery"') >= 2 and "reconnect_trainer" in html


async def test_an_exhausted_budget_fails_naming_the_cause_and_resume_finishes(tmp_path: Path) -> None:
    p = planes()
    p.trainer.trainer.die_after_step = {1, 2, 3, 4}  # type: ignore[attr-defined]
    cfg = config(tmp_path, recovery={"health_every_s": 0.02, "backoff_s": 0.0, "max_per_hour": 2})
    seen: list[LifecycleEvent] = []
    with pytest.raises(RecoveryFailed) as info:
        await run(cfg, planes=p, on_event=seen.append)
    message = str(info.value)
    assert "trainer job 'run-trainer' is FAILED: injected: process killed" in message
    assert "recovery budget exhausted: 2 recoveries in the last hour (recovery.max_per_hour: 2)" in message
    assert isinstance(info.value, RunFailed) and seen[-1].kind == "failed"
    decided = recoveries(tmp_path / "run")
    assert [r["action"] for r in decided] == ["reconnect_trainer", "reconnect_trainer", "fail"]
    # A person resumes it (a fresh budget); the trainer has stopped dying.
    p.trainer.trainer.die_after_step.clear()  # type: ignore[attr-defined]
    summary = await resume(tmp_path / "run", planes=p)
    assert summary.status == "done" and summary.steps == STEPS
    check_exactly_once(tmp_path / "run", STEPS)


async def test_async_rollouts_recover_a_lost_trainer_exactly(tmp_path: Path) -> None:
    p = planes()
    p.trainer.trainer.die_after_step = {3}  # type: ignore[attr-defined]
    cfg = config(
        tmp_path, rl={"prompts_per_step": 2, "group_size": 2, "async_rollouts": {"max_staleness": 1}}
    )
    summary = await run(cfg, planes=p)
    assert summary.status == "done"
    check_exactly_once(tmp_path / "run", STEPS)
    assert [r["failure"] for r in recoveries(tmp_path / "run")] == ["trainer_failed"]


async def test_an_unrecoverable_failure_is_not_recovered(tmp_path: Path) -> None:
    p = planes()
    p.trainer.session_steps_override = 9  # type: ignore[attr-defined]  # disagrees with the journal
    with pytest.raises(RunFailed, match="trainer reports 9 optimizer steps"):
        await run(config(tmp_path), planes=p)
    # an unclassified error: retried once, the same again with no step committed: the run fails
    assert [r["action"] for r in recoveries(tmp_path / "run")] == ["retry", "fail"]
