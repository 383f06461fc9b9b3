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

Asynchronous RL (``rl.async_rollouts``) runs a second machine on the same loop, the rollout machine,
with its own table (``ROLLOUT_TRANSITIONS``) and Schedule (engine.lifecycle.rollout). The learner
above then never enters SAMPLING: TRAINING takes each step's batch from a bounded buffer the rollout
machine fills::

    IDLE -> SAMPLING -> SAMPLING -> ... -> IDLE -> SAMPLING -> ... -> DONE

- IDLE lasts until the rollout Schedule allows a target step (a sync, a trained step, room in the
  buffer) or the learner has trained the last step (DONE).
- SAMPLING samples the batch of one target step and puts it in the buffer; then the next target,
  or IDLE when none is allowed yet. It never goes to DONE directly: the last step is done when the
  learner trained it, not when it was sampled (a stale batch may still have to be re-sampled).
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


class RolloutState(enum.StrEnum):
    """The rollout machine's states (asynchronous RL); see the module docstring."""

    IDLE = "idle"
    SAMPLING = "sampling"
    DONE = "done"
    FAILED = "failed"


R = RolloutState

ROLLOUT_TRANSITIONS: dict[RolloutState, frozenset[RolloutState]] = {
    R.IDLE: frozenset({R.SAMPLING, R.DONE, R.FAILED}),
    R.SAMPLING: frozenset({R.SAMPLING, R.IDLE, R.FAILED}),
    R.DONE: frozenset(),
    R.FAILED: frozenset(),
}

ROLLOUT_INITIAL = R.IDLE
ROLLOUT_TERMINAL = frozenset({R.DONE, R.FAILED})


def _table(state: State | RolloutState) -> tuple[str, frozenset[State | RolloutState]]:
    if isinstance(state, RolloutState):
        return "rollout", frozenset(ROLLOUT_TRANSITIONS[state])
    return "lifecycle", frozenset(TRANSITIONS[state])


class IllegalTransition(FatalError):
    """A state proposed a successor the table does not allow (a bug in a state or the Schedule)."""

    def __init__(self, source: State | RolloutState, target: State | RolloutState) -> None:
        machine, targets = _table(source)
        allowed = ", ".join(sorted(s.name for s in targets)) or "nothing (terminal)"
        super().__init__(
            f"illegal {machine} transition {source.name} -> {target.name}; "
            f"allowed from {source.name}: {allowed}"
        )
        self.source = source
        self.target = target


def check_transition(source: State, target: State) -> State:
    """Return ``target`` if the table allows ``source -> target``, else raise IllegalTransition."""
    if target not in TRANSITIONS[source]:
        raise IllegalTransition(source, target)
    return target


def check_rollout_transition(source: RolloutState, target: RolloutState) -> RolloutState:
    """The rollout machine's check against ``ROLLOUT_TRANSITIONS``."""
    if target not in ROLLOUT_TRANSITIONS[source]:
        raise IllegalTransition(source, target)
    return target
