"""``hotloop serve trainer``: run the embedded trainer until SIGINT/SIGTERM.

Prints exactly one stdout line once listening, ``HOTLOOP_TRAINER_URL=http://HOST:PORT`` (the
control plane parses it); logs go to stderr. Exits 0 on SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path

from engine.errors import ConfigError
from engine.local.keys import add_key_arguments, resolve_key


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0 picks a free one)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--model", default="tiny", help="embedded model name (tiny, small) or a HF model dir")
    parser.add_argument("--bucket", type=Path, required=True, help="directory for sampler snapshots")
    parser.add_argument(
        "--state-dir", type=Path, default=None, help="save_state checkpoints (default: <bucket>/../state)"
    )
    add_key_arguments(parser, "require this X-API-Key (default: accept any)")
    parser.add_argument("--max-body-mb", type=float, default=64.0, help="largest request body (413 beyond)")
    parser.add_argument(
        "--seq-gap-timeout",
        type=float,
        default=60.0,
        help="seconds a request ahead of a missing seq_id is held before failing",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: cores)")
    parser.add_argument("--poll-timeout", type=float, default=25.0, help="retrieve_future long-poll seconds")
    parser.add_argument(
        "--sample-batch-rows",
        type=int,
        default=32,
        help="most sequences sampled together in one batch (1: one request at a time)",
    )
    parser.add_argument(
        "--alias",
        action="append",
        default=[],
        metavar="NAME",
        help="also serve --model under NAME, e.g. Qwen/Qwen3-8B (repeatable)",
    )


async def _serve(args: argparse.Namespace, api_key: str | None) -> int:
    from engine.local.aliases import AliasError, parse_aliases
    from engine.local.trainer.config import TrainerConfig
    from engine.local.trainer.logs import LazyLogger
    from engine.local.trainer.server import TrainerServer

    log = LazyLogger("trainer.cli")

    aliases = parse_aliases(args.alias, args.model)
    foreign = sorted(name for name, model in aliases.items() if model != args.model)
    if foreign:
        raise AliasError(f"--alias {foreign}: this trainer serves only --model {args.model!r}")
    config = TrainerConfig(
        model=args.model,
        bucket=args.bucket.resolve(),
        state_dir=args.state_dir.resolve() if args.state_dir else None,
        host=args.host,
        port=args.port,
        api_key=api_key,
        max_body_bytes=int(args.max_body_mb * 1024 * 1024),
        seq_gap_timeout_s=args.seq_gap_timeout,
        poll_timeout_s=args.poll_timeout,
        torch_threads=args.threads,
        aliases=tuple(aliases),
        sample_batch_rows=max(1, args.sample_batch_rows),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server = TrainerServer(config)
    url = await server.start()
    print(f"HOTLOOP_TRAINER_URL={url}", flush=True)
    try:
        await stop.wait()
    finally:
        log.info("trainer_stopping")
        await server.stop()
        log.info("trainer_stopped")
    return 0


def main(args: argparse.Namespace) -> int:
    from engine.local.aliases import AliasError

    try:
        api_key = resolve_key(args)
    except ConfigError as exc:
        print(f"hotloop serve trainer: {exc}", file=sys.stderr)
        return 2
    try:
        code = asyncio.run(_serve(args, api_key))
    except AliasError as exc:
        print(f"hotloop serve trainer: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. the port is taken
        print(f"hotloop serve trainer: {exc}", file=sys.stderr)
        return 1
    # Everything is stopped and written (saves are atomic); skip the interpreter's teardown of torch
    # and transformers, which takes seconds and would make supervisors wait on a finished server.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
