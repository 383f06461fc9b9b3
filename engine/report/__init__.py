"""The run report: ``hotloop report RUN_DIR [RUN_DIR2]`` writes ``RUN_DIR/report.html``.

One self-contained HTML file (inline SVG and CSS, no scripts, no network) with the curves (reward,
eval score with snapshot identity and prompt-set hash, objective or loss, window, staleness), the
lifecycle states as a Gantt strip with the time per state, sync and hot-load seconds, snapshot sizes,
failures, interruptions and recoveries, the generations of a resumed run, the steps and the checkpoint
ledger linked to each other, the config and the environment. A second run directory is overlaid.

The orchestrator writes it when a run ends; on a live run directory the command refreshes it (the
journal and metrics are read tolerantly, see engine.report.data).

    data       a run directory -> RunView (tolerant reads)
    timeline   the journal -> visits, generations, marks (pure)
    charts     the SVG charts (pure)
    html       the page (pure)
    cli        the ``hotloop report`` command
"""

from __future__ import annotations

import os
import time
from pathlib import Path

REPORT = "report.html"


def write_report(run_dir: str | os.PathLike[str], *others: str | os.PathLike[str]) -> Path:
    """Write ``run_dir/report.html`` (overlaying ``others``) and return its path. Blocking file I/O:
    an async caller runs it in a thread."""
    from engine.report.data import distinct_labels, environment, load_run
    from engine.report.html import build_report

    now = time.time()
    runs = [load_run(p, now=now) for p in (run_dir, *others)]
    distinct_labels(runs)
    html = build_report(runs, environment(), generated=now)
    target = runs[0].path / REPORT
    tmp = target.with_name(f".{REPORT}.tmp")
    tmp.write_text(html, encoding="utf-8")
    os.replace(tmp, target)  # a browser reloading the page never sees half a file
    return target
