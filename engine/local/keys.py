"""API keys of the embedded servers: from the command line, an environment variable or a file.

``--api-key KEY`` still works but shows the key to every user of the host (``ps``);
``--api-key-env NAME`` reads it from the environment (``/proc/PID/environ`` is private to the
owner) and ``--api-key-file PATH`` from a file only its owner may read (mode 0600 or stricter).
The control plane hands each child it spawns a fresh key through :data:`CHILD_KEY_ENV`.
Kept free of heavy imports: the CLI configures every subcommand at start.
"""

from __future__ import annotations

import argparse
import os
import secrets
import stat
from pathlib import Path

from engine.errors import ConfigError

# The variable through which the control plane hands a child process its key (never argv).
CHILD_KEY_ENV = "HOTLOOP_CHILD_API_KEY"
_MAX_KEY_FILE_BYTES = 4096


def add_key_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--api-key", default=None, help=f"{what} (visible in ps: prefer --api-key-env or --api-key-file)"
    )
    group.add_argument(
        "--api-key-env", metavar="NAME", default=None, help="read the key from environment variable NAME"
    )
    group.add_argument(
        "--api-key-file",
        metavar="PATH",
        type=Path,
        default=None,
        help="read the key from the first line of PATH (mode 0600: no group or other access)",
    )


def read_key_file(path: Path) -> str:
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"--api-key-file {path}: not a regular file")
        if info.st_mode & 0o077:
            raise ConfigError(
                f"--api-key-file {path}: readable by group or others (mode {stat.S_IMODE(info.st_mode):o}); "
                "chmod 600 it"
            )
        if hasattr(os, "getuid") and info.st_uid != os.getuid():
            raise ConfigError(f"--api-key-file {path}: owned by another user")
        with path.open("rb") as fh:
            text = fh.read(_MAX_KEY_FILE_BYTES).decode("utf-8", "replace")
    except OSError as exc:
        raise ConfigError(f"--api-key-file {path}: {exc.strerror or exc}") from exc
    key = text.splitlines()[0].strip() if text.strip() else ""
    if not key:
        raise ConfigError(f"--api-key-file {path}: empty")
    return key


def resolve_key(args: argparse.Namespace) -> str | None:
    """The key the flags name, or None (no key: the server accepts any caller)."""
    if getattr(args, "api_key", None):
        return str(args.api_key)
    name = getattr(args, "api_key_env", None)
    if name:
        key = os.environ.pop(name, "").strip()  # popped: nothing this process starts inherits it
        if not key:
            raise ConfigError(f"--api-key-env {name}: the environment variable is unset or empty")
        return key
    path = getattr(args, "api_key_file", None)
    return read_key_file(path) if path is not None else None


def new_key(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(24)
