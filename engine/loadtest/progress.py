"""Live progress display (rich): counts, achieved vs target rate, recent latencies, window, errors.

Counters are updated on the event loop per finished request (O(1)); rich renders them from its own
refresh thread a few times a second, so the display costs the generator almost nothing.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from engine.loadtest.metrics import RequestRecord, e2e_ms, percentile, ttft_ms


class LiveProgress:
    def __init__(self, enabled: bool = True, console: Console | None = None) -> None:
        self.enabled = enabled
        self.console = console or Console(stderr=True)
        self._live: Live | None = None
        self.cell = ""
        self.planned: int | None = None
        self.target_rate: float | None = None
        self.window: int | None = None
        self._reset()

    def _reset(self) -> None:
        self.done = self.ok = 0
        self.errors: Counter[str] = Counter()
        self.ttft: deque[float] = deque(maxlen=256)
        self.e2e: deque[float] = deque(maxlen=256)
        self.lag: deque[float] = deque(maxlen=256)
        self.started = time.perf_counter()

    def start_cell(self, label: str, planned: int | None, target_rate: float | None = None) -> None:
        self.cell, self.planned, self.target_rate = label, planned, target_rate
        self._reset()

    def on_record(self, rec: RequestRecord) -> None:
        self.done += 1
        if rec.ok:
            self.ok += 1
            t, e = ttft_ms(rec), e2e_ms(rec)
            if t is not None:
                self.ttft.append(t)
            if e is not None:
                self.e2e.append(e)
        else:
            self.errors[rec.error_kind or "unknown"] += 1
        if rec.intended_s is not None:
            self.lag.append((rec.sent_s - rec.intended_s) * 1000.0)
        self.window = rec.window

    def render(self) -> Table:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        table = Table(title=f"hotloop loadtest · {self.cell}", show_header=False, expand=False)

        def p(values: deque[float], q: float) -> str:
            return f"{percentile(list(values), q):.1f}" if values else "–"

        planned = f"/{self.planned}" if self.planned else ""
        rate = f"{self.done / elapsed:.2f} req/s"
        if self.target_rate:
            rate += f" (target {self.target_rate:g})"
        table.add_row("finished", f"{self.done}{planned}  ok {self.ok}  elapsed {elapsed:.1f}s")
        table.add_row("rate", rate)
        table.add_row("TTFT ms (recent)", f"p50 {p(self.ttft, 50)}  p99 {p(self.ttft, 99)}")
        table.add_row("E2E ms (recent)", f"p50 {p(self.e2e, 50)}  p99 {p(self.e2e, 99)}")
        if self.lag:
            table.add_row("dispatch lag ms", f"p50 {p(self.lag, 50)}  p99 {p(self.lag, 99)}")
        if self.window is not None:
            table.add_row("window", str(self.window))
        table.add_row("errors", ", ".join(f"{k}: {v}" for k, v in self.errors.items()) or "none")
        return table

    def __enter__(self) -> LiveProgress:
        if self.enabled:
            self._live = Live(get_renderable=self.render, console=self.console, refresh_per_second=4)
            self._live.__enter__()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> Any:
        if self._live is not None:
            self._live.__exit__(exc_type, exc, tb)
            self._live = None
        return None
