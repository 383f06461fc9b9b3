"""Asynchronous RL end to end on the embedded stack (tiny model): runs with k = 1 and k = 2 learn and
never train a batch staler than k (checked from the metrics rows against the journal), and a run
killed in every learner state and in the middle of the overlap resumes exactly."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import yaml
from run_support import (
    check_exactly_once,
    connection,
    journal,
    remote,
    restored_optimizer_steps,
    rows,
    served_identity,
    tiny_config,
)
from support.launch import hotloop_cli
from support.run_checks import check_staleness

from engine.run.orchestrator import run

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="session")]


def async_config(run_dir: Path, run_id: str, k: int, **over: Any) -> dict[str, Any]:
    cfg = tiny_config(run_dir, run_id, **over)
    cfg["rl"] = {**cfg["rl"], "async_rollouts": {"max_staleness": k}}
    return cfg


async def async_run(run_stack: Any, run_dir: Path, k: int) -> None:
    cfg = async_config(
        run_dir,
        f"async-{k}",
        k,
        max_steps=10,
        learning_rate=1e-2,
        intervals={"sync_every": 1, "eval_every": 5, "checkpoint_every": 5},
        rl={"prompts_per_step": 4, "group_size": 4, "max_tokens": 6},
        eval={"prompts": 16, "samples_per_prompt": 2, "max_tokens": 6},
    )
    summary = await run(cfg, connection=connection(run_stack))
    assert summary.status == "done" and summary.steps == 10
    check_exactly_once(run_dir, 10)
    trained = check_staleness(run_dir, k)
    assert max(r["staleness"] for r in trained) >= 1, "sampling overlapped training"
    evals = [r["score"] for r in rows(run_dir) if r["kind"] == "eval"]
    assert len(evals) == 3 and evals[-1] > evals[0], f"k={k}: the eval score rises: {evals}"
    records = journal(run_dir)
    assert "sampling" not in {r["state"] for r in records if r["event"] == "enter"}
    sampled = [
        r for r in records if r["event"] == "rollout" and r["phase"] == "exit" and r["state"] == "sampling"
    ]
    assert sorted(r["target"] for r in sampled) == list(range(1, 11)), "each step sampled once"


async def test_async_runs_with_k_1_and_2_learn_and_never_train_staler_than_k(
    run_stack: Any, tmp_path: Path
) -> None:
    # Both at once on one loop: their trainers and deployments start in parallel (the slow part).
    await asyncio.gather(*(async_run(run_stack, tmp_path / f"async-{k}", k) for k in (1, 2)))


# Learner states (the step is the committed one at entry), and the rollout machine mid-overlap (the
# step is the target it samples). Ordered so that each is reached again after the previous resume.
ASYNC_FAULTS = [
    "kill:REQUESTING:exit",
    "kill:WAITING:exit",  # the rollout machine would start now
    "kill:EVALUATING@0:exit",  # the rollout machine samples steps 1 and 2 meanwhile
    "kill:rollout.sampling@2:exit",  # step 2's batch sampled, not buffered: lost, redone
    "kill:TRAINING@0:exit",  # the optimizer step applied, not committed; step 2's batch buffered
    "kill:CHECKPOINTING@1:exit",
    "kill:SYNCING@1:exit",  # hot-loaded under the rollout machine's requests (keep)
    "kill:TRAINING@2:enter",
    "kill:rollout.sampling@4:enter",  # the learner on step 3 while step 4 is being sampled
]


def last_of(records: list[dict[str, Any]], rollout: bool) -> dict[str, Any]:
    return [r for r in records if (r["event"] == "rollout") == rollout][-1]


async def test_async_kill_in_every_learner_state_and_mid_overlap_then_resume(
    run_stack: Any, tmp_path: Path
) -> None:
    run_dir = tmp_path / "crash-async"
    config = tmp_path / "crash-async.yaml"
    cfg = async_config(run_dir, "crash-async", 1, backend=remote(run_stack), max_steps=4)
    config.write_text(yaml.safe_dump(cfg))
    base_env = {**os.environ, "HOTLOOP_API_KEY": run_stack.api_key, "TINKER_TELEMETRY": "0"}
    for i, fault in enumerate(ASYNC_FAULTS):
        args = (
            ["run", str(config), "--no-progress"] if i % 2 == 0 else ["resume", str(run_dir), "--no-progress"]
        )
        code, out = await hotloop_cli(args, {**base_env, "HOTLOOP_FAULT": fault})
        assert code == -signal.SIGKILL, f"{fault}: exit {code}\n{out[-3000:]}"
        target = fault.split(":")[1]
        in_rollout = target.startswith("rollout.")
        last = last_of(journal(run_dir), rollout=in_rollout)
        state, _, step = target.removeprefix("rollout.").partition("@")
        if in_rollout:  # the rollout machine was killed in that state, for that target
            assert last["phase"] == "enter" and last["state"] == state and last["target"] == int(step), last
        else:  # the learner's journal ends inside the faulted state: entered, never exited
            assert last["event"] == "enter" and last["state"] == state.lower(), (fault, last)
    code, out = await hotloop_cli(["resume", str(run_dir), "--no-progress"], base_env)
    assert code == 0, out[-3000:]

    records = journal(run_dir)
    starts = [r for r in records if r["event"] == "start"]
    assert [s["generation"] for s in starts] == list(range(1, len(ASYNC_FAULTS) + 2))
    assert last_of(records, rollout=False)["event"] == "done"
    check_exactly_once(run_dir, 4)
    check_staleness(run_dir, 1)
    assert [r["step"] for r in rows(run_dir) if r["kind"] == "eval"] == [0, 2, 4]
    ledger = rows(run_dir, "checkpoints.jsonl")
    states = [r for r in ledger if r["kind"] == "state"]
    assert [(r["step"], r["optimizer_steps"]) for r in states] == [(n, n) for n in (1, 2, 3, 4)]
    assert await restored_optimizer_steps(run_stack, "crash-async-trainer", states[-1]["path"]) == 4
    last_sync = [r for r in ledger if r["kind"] == "sync"][-1]
    assert last_sync["step"] == 4
    assert await served_identity(run_stack, "crash-async-serving") == last_sync["identity"]
