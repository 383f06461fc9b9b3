"""hotloop: run, resume and serve research training loops of language models.

Each subcommand lives next to what it drives and is imported lazily, so `hotloop --help` stays fast
and a broken optional part never breaks the others. A subcommand is a module (or ``module:NAME``, an
object in it) with ``configure(parser: argparse.ArgumentParser) -> None`` and
``main(args: argparse.Namespace) -> int``; heavy imports (torch, transformers) go inside ``main``.
This command is the only place that configures logging.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Any

from engine import log

# (command path, module, help)
SUBCOMMANDS: list[tuple[tuple[str, ...], str, str]] = [
    (("run",), "engine.run.commands:RUN", "run an experiment (the demo when no config is given)"),
    (("resume",), "engine.run.commands:RESUME", "resume an unfinished run directory"),
    (("report",), "engine.report.cli", "write a run's HTML report (plots, state timeline); overlay two runs"),
    (("up",), "engine.local.controlplane.cli", "start the embedded control plane"),
    (("serve", "trainer"), "engine.local.trainer.cli", "start the embedded trainer service"),
    (("serve", "deployment"), "engine.local.deployment.cli", "start the embedded deployment server"),
    (("loadtest",), "engine.loadtest.cli", "load-test a completions deployment"),
    (("models", "build"), "engine.local.models.cli", "build (or locate) an embedded model directory"),
    (("cookbook",), "engine.local.cookbook", "run a tinker-cookbook module against a hotloop trainer"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hotloop", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--log-format", choices=["console", "json"], default=None)
    parser.add_argument("--log-level", default=None)
    top = parser.add_subparsers(dest="command", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    for path, module_name, help_text in SUBCOMMANDS:
        if len(path) == 1:
            sub = top.add_parser(path[0], help=help_text)
        else:
            if path[0] not in groups:
                group_parser = top.add_parser(path[0], help=f"{path[0]} commands")
                groups[path[0]] = group_parser.add_subparsers(dest=f"{path[0]}_command", required=True)
            sub = groups[path[0]].add_parser(path[1], help=help_text)
        sub.set_defaults(_module=module_name)
        try:
            command = _command(module_name)
        except ImportError as exc:  # a part not built yet must not break the rest of the CLI
            sub.set_defaults(_import_error=str(exc))
            continue
        command.configure(sub)
    return parser


def _command(ref: str) -> Any:
    module_name, _, attr = ref.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attr) if attr else module


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    log.configure(args.log_format, args.log_level)
    if getattr(args, "_import_error", None):
        print(f"hotloop: {args._module} is unavailable: {args._import_error}", file=sys.stderr)
        return 2
    try:
        return int(_command(args._module).main(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
