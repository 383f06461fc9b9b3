"""``hotloop report RUN_DIR [RUN_DIR2]``: write (or refresh, on a live run) ``RUN_DIR/report.html``.

With a second run directory the report overlays both runs (e.g. sync vs async, two learning rates);
it is written into the first. Exit status: 0 written, 2 not a run directory.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="a run directory (finished, failed or still running)")
    parser.add_argument("other", type=Path, nargs="?", default=None, help="a second run to overlay")


def main(args: argparse.Namespace) -> int:
    from engine.report import write_report
    from engine.run.rundir import CONFIG, JOURNAL

    dirs = [d for d in (args.run_dir, args.other) if d is not None]
    for d in dirs:
        if not (d / CONFIG).exists() and not (d / JOURNAL).exists():
            print(f"hotloop report: {d} is not a run directory (no {CONFIG} or {JOURNAL})", file=sys.stderr)
            return 2
    path = write_report(*dirs)
    print(f"report: {path}")
    print(f"open it: {path.as_uri()}")
    return 0
