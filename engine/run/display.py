"""``LiveRunTable``: the live progress of ``hotloop run`` as a rich table, fed by lifecycle events.

The callback only reads typed facts (engine.run.records) off the events and updates numbers; rich
redraws at its own pace. Nothing here touches the run. In asynchronous RL the rollout machine's
events add what it samples, how full the buffer is, and the staleness of each trained batch. A
recovery (engine.run.recovery) shows in the state row while it happens and is counted, with the last
one's failure and action, in the ``recoveries`` row.
"""

from __future__ import annotations

from typing import Any

from engine.lifecycle.events import LifecycleEvent, RolloutProgress
from engine.run.records import EvalCommitted, StepCommitted, Synced
from engine.run.recovery import Decision

ROWS = ("run dir", "state", "step", "reward", "eval score", "window", "sync s", "train s", "recoveries")
ASYNC_ROWS = ("rollouts", "buffer", "staleness")


def rollout_text(event: LifecycleEvent, progress: RolloutProgress) -> str:
    """The rollout machine's state, e.g. ``SAMPLING step 5`` or ``IDLE (learner at 3, synced 2)``."""
    name = event.state.name
    if progress.phase == "failed":
        return f"FAILED: {event.error}" if event.error else "FAILED"
    if progress.phase == "enter" and progress.target is not None:
        return f"{name} step {progress.target}"
    return f"{name} (learner at {progress.trained}, synced {progress.synced})"


def buffer_text(progress: RolloutProgress) -> str:
    """Batches waiting / capacity, with the steps, e.g. ``2/3 (steps 4, 5)``."""
    steps = ", ".join(str(s) for s in progress.buffered)
    return f"{len(progress.buffered)}/{progress.capacity}" + (f" (steps {steps})" if steps else "")


def recovery_text(count: int, decision: Any) -> str:
    """``2 (last: trainer_failed -> reconnect_trainer)``."""
    return f"{count} (last: {decision.failure.kind} -> {decision.action})"


def staleness_text(row: Any) -> str | None:
    if row.get("staleness") is None:
        return None
    dropped = row.get("stale_dropped")
    text = f"max {row['staleness']}, mean {row.get('staleness_mean', row['staleness'])}"
    return text + (f", {dropped} dropped" if dropped else "")


class LiveRunTable:
    def __init__(self, run_dir: str | None) -> None:
        from rich.console import Console
        from rich.live import Live

        self.values: dict[str, Any] = {
            "run dir": run_dir or "-",
            "state": "starting",
            "step": 0,
            "recoveries": 0,
        }
        self.overlap = False  # set by the first rollout event: show the async rows
        self.recoveries = 0
        self.console = Console(stderr=True)
        self.live = Live(self._table(), console=self.console, refresh_per_second=4, transient=False)

    def _table(self) -> Any:
        from rich.table import Table

        table = Table(title="hotloop run", show_header=False, min_width=60)
        for key in ROWS + (ASYNC_ROWS if self.overlap else ()):
            value = self.values.get(key)
            table.add_row(
                key, "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)
            )
        return table

    def __call__(self, event: LifecycleEvent) -> None:
        if event.kind == "enter":
            self.values["state"] = event.state.name
        elif event.terminal:
            self.values["state"] = event.kind.upper() + (f": {event.error}" if event.error else "")
        elif event.kind == "recovery" and isinstance(event.record, Decision):
            decision = event.record
            if decision.action != "fail":
                self.recoveries += 1
                self.values["state"] = f"RECOVERING ({decision.action}): {decision.failure.cause}"[:200]
            self.values["recoveries"] = recovery_text(self.recoveries, decision)
        elif event.kind == "rollout" and isinstance(event.record, RolloutProgress):
            self.overlap = True
            self.values["rollouts"] = rollout_text(event, event.record)
            self.values["buffer"] = buffer_text(event.record)
        elif event.kind == "record":
            fact = event.record
            if isinstance(fact, StepCommitted):
                row = fact.row
                self.values.update(step=fact.step, reward=row.get("reward_mean"), window=row.get("window"))
                self.values["train s"] = row.get("train_s")
                self.values["staleness"] = staleness_text(row)
            elif isinstance(fact, EvalCommitted):
                self.values["eval score"] = fact.row.get("score")
            elif isinstance(fact, Synced):
                self.values["sync s"] = fact.seconds
        self.live.update(self._table())
