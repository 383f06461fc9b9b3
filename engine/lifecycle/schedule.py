"""The Schedule: which state comes next, as a pure function of the run's counters.

The Runner asks ``Schedule.after(state, counters)`` once a state's work is done; the transition table
(engine.lifecycle.table) checks the answer. States never pick their successor: they do their work and
move the counters with the effect methods of ``Counters`` (``trained``, ``synced``...), which the
simulation tests apply too, so the states and the tests cannot drift apart.

Counters are facts the journal can restore (step, last saved training state, last sampler
snapshot, the step whose weights the deployment verifiably serves, last evaluation) plus one
volatile fact (whether a rollout batch for the next step is in hand). The Schedule never does I/O,
never looks at a clock, and is exhaustively unit-tested against the transition table.

Decisions, in priority order (the first that applies wins):

1. a full training state save is due (every ``checkpoint_every`` steps and at the last step), or a
   weight sync is due and no snapshot of this step exists yet -> CHECKPOINTING;
2. a snapshot of this step exists that the deployment does not serve yet -> SYNCING;
3. an evaluation is due (step 0 as the baseline, every ``eval_every`` steps, the last step) and the
   deployment serves this step's weights -> EVALUATING;
4. the last step is done -> DONE;
5. the recipe needs rollouts and none are in hand for the next step -> SAMPLING;
6. otherwise -> TRAINING.

A sync is due when the deployment lags by ``sync_every`` steps (bounded staleness: RL samples are
never more than ``sync_every - 1`` policy versions old), at a step that is a multiple of
``sync_every``, when an evaluation is due (evaluations see the step's weights), at the last step
(the deployment ends on the final snapshot), or when ``force_sync`` is set (a resumed run whose
deployment serves something other than the restored step).

Asynchronous RL runs this Schedule with ``needs_rollouts=False`` (the rollout machine samples,
engine.lifecycle.rollout), and its staleness bound is ``max_staleness`` instead of
``sync_every - 1`` (the config requires ``sync_every <= max_staleness + 1``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from engine.lifecycle.table import State


@dataclass(frozen=True)
class Counters:
    """Where a run is. ``-1`` means "never"; step 0 is the untouched starting policy."""

    step: int = 0  # optimizer steps committed
    state_step: int = 0  # step of the last full training state (step 0: the base model itself)
    snapshot_step: int = -1  # step of the last sampler snapshot written in this session
    synced_step: int = 0  # step whose weights the deployment serves (it starts on the base model)
    evaluated_step: int = -1  # step of the last evaluation
    rollout_step: int = -1  # the step a rollout batch in hand will train (volatile)
    force_sync: bool = False

    def replace(self, **changes: int | bool) -> Counters:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    # What each work state does to the counters once its work succeeded: one definition, used by the
    # states and by the tests that simulate whole runs against the Schedule.
    def sampled(self) -> Counters:
        """SAMPLING holds rollouts for the next step."""
        return self.replace(rollout_step=self.step + 1)

    def trained(self) -> Counters:
        """TRAINING committed one more optimizer step."""
        return self.replace(step=self.step + 1)

    def checkpointed(self, *, state: bool, snapshot: bool) -> Counters:
        """CHECKPOINTING saved the full training state and/or a sampler snapshot of this step."""
        out = self.replace(state_step=self.step) if state else self
        return out.replace(snapshot_step=self.step) if snapshot else out

    def synced(self) -> Counters:
        """SYNCING verified the deployment serves the snapshot of ``snapshot_step``."""
        return self.replace(synced_step=self.snapshot_step, force_sync=False)

    def evaluated(self) -> Counters:
        return self.replace(evaluated_step=self.step)

    @classmethod
    def restored(cls, step: int, evaluated_step: int, serves_restored_step: bool) -> Counters:
        """WAITING after (re)connecting: the last full training state ``step`` (0 on a fresh run), the
        evaluations committed up to it, and whether the deployment was verified to serve that step."""
        return cls(
            step=step,
            state_step=step,
            snapshot_step=-1,
            synced_step=step if serves_restored_step else -1,
            evaluated_step=min(evaluated_step, step),
            force_sync=not serves_restored_step,
        )


@dataclass(frozen=True)
class Schedule:
    max_steps: int
    sync_every: int = 1
    eval_every: int = 0  # 0: never evaluate
    checkpoint_every: int = 1
    needs_rollouts: bool = True  # RL samples before each step; SFT does not

    def __post_init__(self) -> None:
        for name in ("sync_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps < 0:
            raise ValueError(f"max_steps must be >= 0, got {self.max_steps}")
        if self.eval_every < 0:
            raise ValueError(f"eval_every must be >= 0, got {self.eval_every}")

    # Each predicate below is one rule of the docstring, so tests can name what they check.
    def eval_due(self, c: Counters) -> bool:
        if self.eval_every == 0 or c.evaluated_step >= c.step:
            return False
        return c.step % self.eval_every == 0 or c.step == self.max_steps

    def state_due(self, c: Counters) -> bool:
        if c.step <= c.state_step:
            return False
        return c.step % self.checkpoint_every == 0 or c.step >= self.max_steps

    def sync_due(self, c: Counters) -> bool:
        if c.force_sync:
            return True
        if c.step <= c.synced_step:
            return False
        return (
            c.step - c.synced_step >= self.sync_every
            or c.step % self.sync_every == 0
            or c.step >= self.max_steps
            or self.eval_due(c)
        )

    def saves_due(self, c: Counters) -> tuple[bool, bool]:
        """What CHECKPOINTING saves: (the full training state, a sampler snapshot)."""
        return self.state_due(c), self.sync_due(c) and c.snapshot_step < c.step

    def after(self, state: State, c: Counters) -> State:
        """The successor of ``state`` (the Runner's one question): the setup states lead into the work
        loop, whose states all continue with ``next``."""
        if state is State.REQUESTING:
            return State.WAITING
        return self.next(c)

    def next(self, c: Counters) -> State:
        sync = self.sync_due(c)
        if self.state_due(c) or (sync and c.snapshot_step < c.step):
            return State.CHECKPOINTING
        if sync:
            return State.SYNCING
        if self.eval_due(c):
            return State.EVALUATING
        if c.step >= self.max_steps:
            return State.DONE
        if self.needs_rollouts and c.rollout_step != c.step + 1:
            return State.SAMPLING
        return State.TRAINING
