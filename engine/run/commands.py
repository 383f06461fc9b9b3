"""The ``hotloop run`` and ``hotloop resume`` commands.

``hotloop run [CONFIG.yaml]`` runs an experiment; with no config, the bundled demo (RL on the
``digits`` task with the ``small`` model) on an embedded stack the command starts and stops. Pointed
(``--run-dir`` or the config's ``run_dir``) at a directory holding an unfinished run with the same
config, it resumes that run. ``hotloop resume RUN_DIR`` continues an unfinished run with its stored
config (see engine.run.replay for what is restored and why nothing is lost or repeated). Both show
live progress (state, step, reward, eval score, concurrency window, sync time), write
``summary.json`` in the run directory and print where it is.
Exit status: 0 done, 1 failed, 2 bad config, 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Command:
    configure: Callable[[argparse.ArgumentParser], None]
    main: Callable[[argparse.Namespace], int]


def configure_run(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="YAML run config (default: the bundled demo)")
    parser.add_argument("--run-dir", type=Path, default=None, help="run directory (resumed if unfinished)")
    parser.add_argument("--max-steps", type=int, default=None, help="override max_steps")
    parser.add_argument("--model", default=None, help="override the model (embedded name or HF dir)")
    parser.add_argument("--no-progress", action="store_true", help="plain logs instead of the live display")


async def execute(config: Any, run_dir: Path | None, progress: bool) -> int:
    from engine.errors import ConfigError, HotloopError
    from engine.run.display import LiveRunTable
    from engine.run.orchestrator import start
    from engine.run.rundir import RunDir

    display = LiveRunTable(str(run_dir) if run_dir else None) if progress else None
    try:
        handle = start(config, run_dir=run_dir, on_event=display)
    except ConfigError as exc:
        print(f"hotloop run: {exc}", file=sys.stderr)
        return 2
    if display is not None:
        display.live.start()
    try:
        summary = await handle.wait()
    except ConfigError as exc:
        print(f"hotloop run: {exc}", file=sys.stderr)
        return 2
    except HotloopError as exc:
        print(f"hotloop run: {exc}", file=sys.stderr)
        where = run_dir or (config.run_dir if config is not None else None)
        if where is not None and RunDir(where).exists():
            print(
                f"run directory: {RunDir(where).path} (fix the cause, then `hotloop resume` it)",
                file=sys.stderr,
            )
        return 1
    finally:
        if display is not None:
            display.live.stop()
    print(f"run directory: {summary.run_dir}")
    print(
        f"steps: {summary.steps}  eval score: first {summary.eval_score_first} -> "
        f"last {summary.eval_score_last}  wall: {summary.wall_s:.1f}s  status: {summary.status}"
    )
    print(f"summary: {Path(summary.run_dir) / 'summary.json'}")
    return 0 if summary.status == "done" else 1


def main_run(args: argparse.Namespace) -> int:
    import asyncio

    from engine import log
    from engine.config import load_config
    from engine.errors import ConfigError

    overrides = {k: v for k, v in (("max_steps", args.max_steps), ("model", args.model)) if v is not None}
    try:
        config = load_config(args.config, overrides)
    except ConfigError as exc:
        print(f"hotloop run: {exc}", file=sys.stderr)
        return 2
    progress = not args.no_progress
    if progress and args.log_level is None:
        log.configure(args.log_format, "WARNING")  # the live display replaces routine logs
    run_dir = args.run_dir
    if run_dir is None and config.run_dir is None:
        from engine.run.rundir import default_run_dir

        run_dir = default_run_dir(config)
    if run_dir is not None:
        print(f"run directory: {Path(run_dir).resolve()}", flush=True)
    try:
        return asyncio.run(execute(config, run_dir, progress))
    except KeyboardInterrupt:
        return 130


def configure_resume(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="a run directory written by `hotloop run`")
    parser.add_argument("--no-progress", action="store_true", help="plain logs instead of the live display")


def main_resume(args: argparse.Namespace) -> int:
    import asyncio

    from engine import log

    progress = not args.no_progress
    if progress and args.log_level is None:
        log.configure(args.log_format, "WARNING")
    print(f"run directory: {args.run_dir.resolve()}", flush=True)
    try:
        return asyncio.run(execute(None, args.run_dir, progress))
    except KeyboardInterrupt:
        return 130


RUN = Command(configure_run, main_run)
RESUME = Command(configure_resume, main_resume)
