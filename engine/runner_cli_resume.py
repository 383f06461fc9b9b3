"""``hotloop resume RUN_DIR``: continue an unfinished run with its stored config (see
engine.lifecycle.replay for what is restored and why nothing is lost or repeated)."""

from __future__ import annotations

import argparse
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="a run directory written by `hotloop run`")
    parser.add_argument("--no-progress", action="store_true", help="plain logs instead of the live display")


def main(args: argparse.Namespace) -> int:
    import asyncio

    from engine import log
    from engine.runner_cli import execute

    progress = not args.no_progress
    if progress and args.log_level is None:
        log.configure(args.log_format, "WARNING")
    print(f"run directory: {args.run_dir.resolve()}", flush=True)
    try:
        return asyncio.run(execute(None, args.run_dir, progress))
    except KeyboardInterrupt:
        return 130
