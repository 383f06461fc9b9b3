"""`hotloop serve deployment`: run the embedded deployment until SIGINT/SIGTERM.

Prints exactly one line to stdout once listening, ``HOTLOOP_DEPLOYMENT_URL=http://HOST:PORT``
(flushed), so a parent process can read the port chosen by ``--port 0``; logs go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from engine.errors import ConfigError
from engine.local.keys import add_key_arguments, resolve_key


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0 picks a free one)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--model", default="tiny", help="embedded model name or HF model directory")
    parser.add_argument("--bucket", type=Path, default=None, help="snapshot bucket directory for hot-loads")
    parser.add_argument("--max-batch", type=int, default=32, help="most sequences in the running batch")
    parser.add_argument("--max-waiting", type=int, default=512, help="waiting-queue bound (429 beyond)")
    parser.add_argument(
        "--prefill-token-budget", type=int, default=2048, help="padded prompt tokens per prefill"
    )
    parser.add_argument(
        "--prompt-cache-tokens", type=int, default=8192, help="LRU prompt K/V cache size in tokens (0: off)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads for the engine thread")
    add_key_arguments(parser, "require this key (Bearer or X-Api-Key)")
    parser.add_argument(
        "--max-body-mb", type=float, default=16.0, help="largest request body, decoded (413 beyond)"
    )
    parser.add_argument(
        "--hot-load-mode",
        choices=["wait", "reject"],
        default="wait",
        help="during a hot-load, new requests wait (SYNC) or get 425",
    )


def main(args: argparse.Namespace) -> int:
    from engine.local.deployment.app import DeploymentServerSettings

    if args.max_batch < 1 or args.max_waiting < 1:
        print("hotloop serve deployment: --max-batch and --max-waiting must be >= 1", file=sys.stderr)
        return 2
    try:
        api_key = resolve_key(args)
    except ConfigError as exc:
        print(f"hotloop serve deployment: {exc}", file=sys.stderr)
        return 2
    config = DeploymentServerSettings(
        model=args.model,
        bucket=args.bucket,
        max_batch=args.max_batch,
        max_waiting=args.max_waiting,
        prefill_token_budget=args.prefill_token_budget,
        api_key=api_key,
        max_body_bytes=int(args.max_body_mb * 1024 * 1024),
        threads=args.threads,
        prompt_cache_tokens=args.prompt_cache_tokens,
        reject_during_load=args.hot_load_mode == "reject",
    )
    try:
        asyncio.run(_serve(config, args.host, args.port))
    except OSError as exc:  # e.g. the port is taken: one line, as `hotloop serve trainer` says it
        print(f"hotloop serve deployment: {exc}", file=sys.stderr)
        return 1
    return 0


async def _serve(config: object, host: str, port: int) -> None:
    from engine.local.deployment.app import DeploymentServer, DeploymentServerSettings
    from engine.log import get_logger

    assert isinstance(config, DeploymentServerSettings)
    log = get_logger("engine.local.deployment")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server = DeploymentServer(config, host=host, port=port)
    await server.start()
    try:
        print(f"HOTLOOP_DEPLOYMENT_URL={server.url}", flush=True)
        log.info("deployment listening", url=server.url, model=config.model, bucket=str(config.bucket))
        await stop.wait()
    finally:
        await server.stop()
    log.info("deployment stopped")
