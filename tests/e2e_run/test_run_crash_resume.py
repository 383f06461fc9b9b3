"""Crash safety: SIGKILL the run process inside each lifecycle state in turn, resume each time.

One run (a ``hotloop run CONFIG`` subprocess, tiny model, 3 RL steps) is killed by fault injection
(``HOTLOOP_FAULT``) at a different state every time, alternately resumed by ``hotloop run CONFIG``
(automatic) and ``hotloop resume RUN_DIR``. Most kills happen once the state's work is done but
before its exit is journaled -- an optimizer step applied, a checkpoint written, a snapshot
hot-loaded -- which is where a careless engine repeats or loses work.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
import yaml
from run_support import (
    check_exactly_once,
    journal,
    remote,
    restored_optimizer_steps,
    rows,
    served_identity,
    tiny_config,
)
from support.launch import hotloop_cli

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="session")]

FAULTS = [
    "kill:REQUESTING:exit",
    "kill:WAITING:exit",
    "kill:EVALUATING@0:exit",
    "kill:SAMPLING@0:exit",
    "kill:TRAINING@0:exit",  # the optimizer step is applied on the trainer, not committed
    "kill:CHECKPOINTING@1:exit",  # the state and the snapshot are written, not committed
    "kill:SYNCING@1:exit",  # the deployment serves a snapshot the journal never heard of
    "kill:TRAINING@2:enter",
]


async def test_kill_in_every_state_and_resume(run_stack: Any, tmp_path: Path) -> None:
    run_dir = tmp_path / "crash"
    config = tmp_path / "crash.yaml"
    config.write_text(yaml.safe_dump(tiny_config(run_dir, "crash", backend=remote(run_stack))))
    base_env = {**os.environ, "HOTLOOP_API_KEY": run_stack.api_key, "TINKER_TELEMETRY": "0"}
    for i, fault in enumerate(FAULTS):
        args = (
            ["run", str(config), "--no-progress"] if i % 2 == 0 else ["resume", str(run_dir), "--no-progress"]
        )
        code, out = await hotloop_cli(args, {**base_env, "HOTLOOP_FAULT": fault})
        assert code == -signal.SIGKILL, f"{fault}: exit {code}\n{out[-3000:]}"
        # The journal ends inside the faulted state: entered, never exited.
        last = journal(run_dir)[-1]
        state = fault.split(":")[1].split("@")[0].lower()
        assert last["event"] == "enter" and last["state"] == state, (fault, last)
    code, out = await hotloop_cli(["resume", str(run_dir), "--no-progress"], base_env)
    assert code == 0, out[-3000:]

    records = journal(run_dir)
    starts = [r for r in records if r["event"] == "start"]
    assert [s["generation"] for s in starts] == list(range(1, len(FAULTS) + 2))
    assert records[-1]["event"] == "done" and records[-1]["step"] == 3

    # Each step's row exactly once, and the trainer applied exactly one optimizer step per row.
    check_exactly_once(run_dir, 3)
    assert [r["step"] for r in rows(run_dir) if r["kind"] == "eval"] == [0, 2, 3]
    # The trainer's own counter: every committed state says how many optimizer steps it holds, and
    # the final one, loaded back with its optimizer, has exactly one per step.
    ledger = rows(run_dir, "checkpoints.jsonl")
    states = [r for r in ledger if r["kind"] == "state"]
    assert [(r["step"], r["optimizer_steps"]) for r in states] == [(n, n) for n in (1, 2, 3)]
    assert await restored_optimizer_steps(run_stack, "crash-trainer", states[-1]["path"]) == 3

    # The deployment ends on the final snapshot, as the ledger and the summary say.
    last_sync = [r for r in ledger if r["kind"] == "sync"][-1]
    assert last_sync["step"] == 3
    assert await served_identity(run_stack, "crash-serving") == last_sync["identity"]
    summary = yaml.safe_load((run_dir / "summary.json").read_text())
    assert summary["status"] == "done" and summary["steps"] == 3
    assert summary["served_identity"] == last_sync["identity"]
