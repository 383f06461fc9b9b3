"""One module per lifecycle state; each exports one coroutine ``run(ctx: RunContext) -> None``.

A state does its work, records what it learned (engine.run.records) and moves the counters; the
Runner asks the Schedule what comes next. States reach trainers and deployments only through the
backends seam (engine.backends.base): a test reads these modules and fails on an import of a
concrete backend. ``engine.states.rollout`` holds the rollout machine's SAMPLING (asynchronous RL), which
the orchestrator hands to that machine rather than to the learner's Runner.
"""

from __future__ import annotations

from typing import Any

from engine.lifecycle.table import State


def handlers() -> dict[State, Any]:
    from engine.states import checkpointing, evaluating, requesting, sampling, syncing, training, waiting

    return {
        State.REQUESTING: requesting.run,
        State.WAITING: waiting.run,
        State.SAMPLING: sampling.run,
        State.TRAINING: training.run,
        State.CHECKPOINTING: checkpointing.run,
        State.SYNCING: syncing.run,
        State.EVALUATING: evaluating.run,
    }
