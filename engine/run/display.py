"""``LiveRunTable``: the live progress of ``hotloop run`` as a rich table, fed by lifecycle events.

The callback only reads typed facts (engine.run.records) off the events and updates numbers; rich
redraws at its own pace. Nothing here touches the run.
"""

from __future__ import annotations

from typing import Any

from engine.lifecycle.events import LifecycleEvent
from engine.run.records import EvalCommitted, StepCommitted, Synced

ROWS = ("run dir", "state", "step", "reward", "eval score", "window", "sync s", "train s")


class LiveRunTable:
    def __init__(self, run_dir: str | None) -> None:
        from rich.console import Console
        from rich.live import Live

        self.values: dict[str, Any] = {"run dir": run_dir or "-", "state": "starting", "step": 0}
        self.console = Console(stderr=True)
        self.live = Live(self._table(), console=self.console, refresh_per_second=4, transient=False)

    def _table(self) -> Any:
        from rich.table import Table

        table = Table(title="hotloop run", show_header=False, min_width=60)
        for key in ROWS:
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
        elif event.kind == "record":
            fact = event.record
            if isinstance(fact, StepCommitted):
                row = fact.row
                self.values.update(step=fact.step, reward=row.get("reward_mean"), window=row.get("window"))
                self.values["train s"] = row.get("train_s")
            elif isinstance(fact, EvalCommitted):
                self.values["eval score"] = fact.row.get("score")
            elif isinstance(fact, Synced):
                self.values["sync s"] = fact.seconds
        self.live.update(self._table())
