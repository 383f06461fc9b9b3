"""``hotloop run [CONFIG.yaml]``: run an experiment; with no config, the bundled demo (RL on the
``digits`` task with the ``small`` model) on an embedded stack the command starts and stops.

Pointed (``--run-dir`` or the config's ``run_dir``) at a directory holding an unfinished run with
the same config, it resumes that run. Shows live progress (state, step, reward, eval score,
concurrency window, sync time), writes ``summary.json`` in the run directory and prints where it is.
Exit status: 0 done, 1 failed, 2 bad config, 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="YAML run config (default: the bundled demo)")
    parser.add_argument("--run-dir", type=Path, default=None, help="run directory (resumed if unfinished)")
    parser.add_argument("--max-steps", type=int, default=None, help="override max_steps")
    parser.add_argument("--model", default=None, help="override the model (embedded name or HF dir)")
    parser.add_argument("--no-progress", action="store_true", help="plain logs instead of the live display")


class Progress:
    """A rich live table fed by lifecycle events (the callback only updates numbers)."""

    def __init__(self, run_dir: str | None) -> None:
        from rich.console import Console
        from rich.live import Live

        self.values: dict[str, Any] = {"run dir": run_dir or "-", "state": "starting", "step": 0}
        self.console = Console(stderr=True)
        self.live = Live(self._table(), console=self.console, refresh_per_second=4, transient=False)

    def _table(self) -> Any:
        from rich.table import Table

        table = Table(title="hotloop run", show_header=False, min_width=60)
        for key in ("run dir", "state", "step", "reward", "eval score", "window", "sync s", "train s"):
            value = self.values.get(key)
            table.add_row(
                key, "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)
            )
        return table

    def __call__(self, event: Any) -> None:
        if event.kind == "enter":
            self.values["state"] = event.state.name
        elif event.kind in ("done", "failed", "cancelled"):
            self.values["state"] = event.kind.upper() + (f": {event.error}" if event.error else "")
        elif event.kind == "record":
            rec = event.record
            row = rec.get("row") or {}
            if rec["kind"] == "step":
                window = row.get("window")
                self.values.update(step=row.get("step"), reward=row.get("reward_mean"))
                self.values["window"] = None if window is None else int(window)
                self.values["train s"] = row.get("train_s")
            elif rec["kind"] == "eval":
                self.values["eval score"] = row.get("score")
            elif rec["kind"] == "sync":
                self.values["sync s"] = rec.get("seconds")
        self.live.update(self._table())


async def execute(config: Any, run_dir: Path | None, progress: bool) -> int:
    from engine.api import start
    from engine.errors import ConfigError, HotloopError
    from engine.lifecycle.rundir import RunDir

    display = Progress(str(run_dir) if run_dir else None) if progress else None
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


def main(args: argparse.Namespace) -> int:
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
        from engine.lifecycle.rundir import default_run_dir

        run_dir = default_run_dir(config)
    if run_dir is not None:
        print(f"run directory: {Path(run_dir).resolve()}", flush=True)
    try:
        return asyncio.run(execute(config, run_dir, progress))
    except KeyboardInterrupt:
        return 130
