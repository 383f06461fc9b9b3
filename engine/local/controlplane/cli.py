"""`hotloop up`: start the embedded control plane on 127.0.0.1 and print how to reach it."""

from __future__ import annotations

import argparse
from pathlib import Path

from engine.errors import ConfigError
from engine.local.keys import add_key_arguments, new_key, resolve_key


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0 = any free port)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--state-dir", default=None, help="jobs' buckets, states and logs (default: a temp dir)"
    )
    parser.add_argument("--model", default=None, help="local model for base models this stack does not know")
    parser.add_argument(
        "--startup-timeout", type=float, default=300.0, help="seconds a child may take to print its URL line"
    )
    parser.add_argument(
        "--alias",
        action="append",
        default=[],
        metavar="NAME[=MODEL]",
        help="serve MODEL (default: --model) to jobs and deployments whose base model is NAME (repeatable)",
    )
    parser.add_argument(
        "--model-root",
        action="append",
        type=Path,
        default=[],
        help="a directory whose model directories baseModel may name (repeatable; default: none)",
    )
    add_key_arguments(parser, "the stack's API key (default: a new random key, printed at start)")


def main(args: argparse.Namespace) -> int:
    import asyncio
    import sys
    import tempfile

    from engine.local.aliases import AliasError, parse_aliases

    try:
        args.aliases = parse_aliases(args.alias, args.model)
    except AliasError as exc:
        print(f"hotloop up: {exc}", file=sys.stderr)
        return 2
    try:
        api_key = resolve_key(args) or new_key("hl-")
    except ConfigError as exc:
        print(f"hotloop up: {exc}", file=sys.stderr)
        return 2
    root = Path(args.state_dir or tempfile.mkdtemp(prefix="hotloop-stack-")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return asyncio.run(serve(args, root, api_key))


async def serve(args: argparse.Namespace, root: Path, api_key: str) -> int:
    import asyncio
    import atexit
    import signal
    import sys

    from engine.local.controlplane.plane import ControlPlane
    from engine.local.controlplane.server import build_app
    from engine.local.http_server import make_runner, start_site
    from engine.log import get_logger

    log = get_logger("controlplane.cli")
    plane = ControlPlane(
        root,
        default_model=args.model,
        aliases=args.aliases,
        startup_timeout_s=args.startup_timeout,
        model_roots=getattr(args, "model_root", []),
    )
    plane.restore()
    atexit.register(plane.kill_all_now)  # last resort if the loop dies without the clean path below
    runner = make_runner(build_app(plane, api_key))
    await runner.setup()
    try:
        port = await start_site(runner, args.host, args.port)
    except OSError as exc:  # e.g. the port is taken
        print(f"hotloop up: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        await plane.close()  # restore() may already have started children
        await runner.cleanup()
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"HOTLOOP_BASE_URL=http://{args.host}:{port}", flush=True)
    print(f"HOTLOOP_API_KEY={api_key}", flush=True)
    log.info("control plane up", port=port, state_dir=str(root))
    try:
        await stop.wait()
        log.info("stopping: shutting down children")
    finally:
        await plane.close()
        await runner.cleanup()
    log.info("control plane stopped")
    return 0
