"""The one way hotloop replaces a file: write a temporary file beside it, then rename it over the old
one, so a reader (or a process killed mid-write) sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def write_atomic(path: Path, data: bytes, *, durable: bool = False) -> None:
    """Replace ``path`` with ``data``. ``durable``: fsync the file and its directory first, so the
    new contents survive a power loss (the run directory's files; not needed for rebuildable ones)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not "*.json": a loader globbing for records never picks up a temp file a crash left behind.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """``data`` as indented JSON, replaced atomically (the embedded stack's records and metadata)."""
    write_atomic(path, json.dumps(data, indent=1).encode())
