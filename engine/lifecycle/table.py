"""The lifecycle's states and its literal transition table (h11's ``_state.py`` is the model).

Nothing here does I/O. The table says which state may follow which; the Schedule
(engine.lifecycle.schedule) decides which one does, and the Runner checks every decision here: an
illegal one (a bug in the Schedule or in the counters a state left) raises ``IllegalTransition``
naming both states.

The shape of one run::

    REQUESTING -> WAITING -> (SAMPLING ->) TRAINING -> CHECKPOINTING -> SYNCING -> EVALUATING -> ...
                                                                                        ... -> DONE

- WAITING goes to the first work state: a fresh run evaluates the untouched policy first (the
  baseline) or starts training; a resumed run whose deployment does not serve the restored step
  owes a snapshot (CHECKPOINTING) before anything else; a run that had finished its work is DONE.
- TRAINING goes to CHECKPOINTING when the Schedule says a training state save or a weight sync is
  due, otherwise on to the next step (SAMPLING for RL, TRAINING again for SFT).
- CHECKPOINTING is followed by SYNCING when it wrote a sampler snapshot, otherwise by the next step.
- SYNCING is the only way into EVALUATING from training, because evaluation goes through the
  deployment and must see the step's weights.
- FAILED is reachable from every non-terminal state; DONE and FAILED have no way out.
"""

from __future__ import annotations

import enum

from engine.errors import FatalError


class State(enum.StrEnum):
    REQUESTING = "requesting"
    WAITING = "waiting"
    TRAINING = "training"
    CHECKPOINTING = "checkpointing"
    SYNCING = "syncing"
    SAMPLING = "sampling"
    EVALUATING = "evaluating"
    DONE = "done"
    FAILED = "failed"


S = State

TRANSITIONS: dict[State, frozenset[State]] = {
    S.REQUESTING: frozenset({S.WAITING, S.FAILED}),
    S.WAITING: frozenset({S.SAMPLING, S.TRAINING, S.CHECKPOINTING, S.EVALUATING, S.DONE, S.FAILED}),
    S.SAMPLING: frozenset({S.TRAINING, S.FAILED}),
    S.TRAINING: frozenset({S.TRAINING, S.SAMPLING, S.CHECKPOINTING, S.FAILED}),
    S.CHECKPOINTING: frozenset({S.SYNCING, S.SAMPLING, S.TRAINING, S.FAILED}),
    S.SYNCING: frozenset({S.EVALUATING, S.SAMPLING, S.TRAINING, S.DONE, S.FAILED}),
    S.EVALUATING: frozenset({S.SAMPLING, S.TRAINING, S.DONE, S.FAILED}),
    S.DONE: frozenset(),
    S.FAILED: frozenset(),
}

INITIAL = S.REQUESTING
TERMINAL = frozenset({S.DONE, S.FAILED})
# The states that do the run's work; a resumed run re-enters the loop at one of them.
WORK_STATES = frozenset({S.SAMPLING, S.TRAINING, S.CHECKPOINTING, S.SYNCING, S.EVALUATING})


class IllegalTransition(FatalError):
    """A state proposed a successor the table does not allow (a bug in a state or the Schedule)."""

    def __init__(self, source: State, target: State) -> None:
        allowed = ", ".join(sorted(s.name for s in TRANSITIONS[source])) or "nothing (terminal)"
        super().__init__(
            f"illegal lifecycle transition {source.name} -> {target.name}; "
            f"allowed from {source.name}: {allowed}"
        )
        self.source = source
        self.target = target


def check_transition(source: State, target: State) -> State:
    """Return ``target`` if the table allows ``source -> target``, else raise IllegalTransition."""
    if target not in TRANSITIONS[source]:
        raise IllegalTransition(source, target)
    return target
