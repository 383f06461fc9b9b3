"""One module per lifecycle state; each exports one coroutine ``run(ctx: RunContext) -> State``.

``HANDLERS`` maps every non-terminal state to its coroutine, for the Runner.
"""

from __future__ import annotations

from typing import Any

from engine.lifecycle.table import State


def handlers() -> dict[State, Any]:
    from states import checkpointing, evaluating, requesting, sampling, syncing, training, waiting

    return {
        State.REQUESTING: requesting.run,
        State.WAITING: waiting.run,
        State.SAMPLING: sampling.run,
        State.TRAINING: training.run,
        State.CHECKPOINTING: checkpointing.run,
        State.SYNCING: syncing.run,
        State.EVALUATING: evaluating.run,
    }
