"""Writing a run's results: requests.jsonl after each cell, summary.json and report.html at the end.

``finish`` is called on every exit path (success, abort, bad input, Ctrl-C), so whatever was
measured before a failure is always on disk, and the summary's counts are computed from exactly
the records written to requests.jsonl.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import IO, Any

from engine.files import write_atomic
from engine.loadtest.metrics import GoodputTargets, RequestRecord, row, summarize_cell
from engine.loadtest.report import build_html
from engine.loadtest.runner import CellResult
from engine.loadtest.schedules import AdaptiveLoad, ClosedLoop, OpenLoop, load_kind

SUMMARY_VERSION = 1


def load_description(load: ClosedLoop | OpenLoop | AdaptiveLoad) -> dict[str, Any]:
    desc: dict[str, Any] = {"kind": load_kind(load), "value": load.value}
    if isinstance(load, OpenLoop):
        desc.update(arrival=load.arrival, burstiness=load.burstiness, seed=load.seed)
    elif isinstance(load, AdaptiveLoad):
        desc.update(
            initial_window=load.initial_window,
            min_window=load.min_window,
            max_window=load.max_window,
            prefill_queue_target=load.prefill_queue_target,
            adjustment_interval=load.adjustment_interval,
        )
    return desc


def _clean(obj: Any) -> Any:
    """JSON-safe: NaN/inf become null (summary.json must parse in strict readers)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


class RunOutput:
    """Owns the output directory of one ``hotloop loadtest`` invocation."""

    def __init__(self, out_dir: Path, targets: GoodputTargets) -> None:
        self.dir = out_dir
        self.targets = targets
        self.cells: list[CellResult] = []
        self._rows: list[dict[str, Any]] = []
        self._pending: list[RequestRecord] = []
        out_dir.mkdir(parents=True, exist_ok=True)
        self._fh: IO[str] | None = (out_dir / "requests.jsonl").open("w", encoding="utf-8")
        self.started_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    def new_cell(self, result: CellResult) -> CellResult:
        self.cells.append(result)
        return result

    def add(self, rec: RequestRecord) -> None:
        """Keep a finished request; it is serialized at the next flush, not on the hot path."""
        self._pending.append(rec)

    def flush(self) -> None:
        """Append the pending rows to requests.jsonl (called between cells and at the end)."""
        rows = [_clean(row(rec, self.targets)) for rec in self._pending]
        self._pending.clear()
        self._rows.extend(rows)
        if self._fh is not None:
            self._fh.write("".join(json.dumps(r) + "\n" for r in rows))
            self._fh.flush()

    def cell_summaries(self) -> list[dict[str, Any]]:
        return [
            summarize_cell(
                c.records,
                label=c.label,
                load={**load_description(c.load), "planned_requests": c.planned},
                targets=self.targets,
                window_series=c.window_series,
            )
            | ({"aborted": c.aborted} if c.aborted else {})
            for c in self.cells
        ]

    def finish(
        self,
        *,
        run_info: dict[str, Any],
        status: str,
        error: str | None,
        search: dict[str, Any] | None = None,
        cells: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Close requests.jsonl and write summary.json and report.html; returns the summary."""
        self.flush()
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        cells = cells if cells is not None else self.cell_summaries()
        summary = _clean(
            {
                "hotloop_loadtest": SUMMARY_VERSION,
                "status": status,
                "error": error,
                "started_at": self.started_at,
                "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                **run_info,
                "goodput_targets": self.targets.as_dict(),
                "totals": {
                    "requests": sum(c["requests"] for c in cells),
                    "completed": sum(c["completed"] for c in cells),
                    "failed": sum(c["failed"] for c in cells),
                },
                "search": search,
                "cells": cells,
                "files": {"requests": "requests.jsonl", "report": "report.html"},
            }
        )
        write_atomic(self.dir / "summary.json", json.dumps(summary, indent=2).encode())
        write_atomic(self.dir / "report.html", build_html(summary, self._rows).encode())
        return summary
