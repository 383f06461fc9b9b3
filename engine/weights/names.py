"""Snapshot identities: the one rule for what a snapshot may be called (no torch, no I/O).

Identities become directory names in a bucket, so they are restricted to a safe alphabet. The SDK
validates names with this module alone; ``engine.weights.snapshot`` (which needs torch) re-exports it.
"""

from __future__ import annotations

import re
from pathlib import Path

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,127}$")


class SnapshotError(ValueError):
    """A snapshot that is missing, malformed, corrupt, or does not fit its parent."""


def check_name(name: str) -> str:
    """Snapshot identities become directory names: letters, digits, '.', '_' and '-' only."""
    if not isinstance(name, str) or not _SAFE_NAME.match(name) or ".." in name:
        raise SnapshotError(
            f"invalid snapshot name {name!r}: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def contained(root: Path, *parts: str) -> Path:
    """``root/parts...``, refused if any component below ``root`` is a symlink (or ``..``): a
    writer of the bucket must not make a reader open, hash or load a file outside it."""
    path = Path(root).joinpath(*parts)
    real_root = Path(root).resolve()
    unsafe = any(p in ("", ".", "..") or "/" in p or "\0" in p for p in parts)
    if unsafe or path.resolve() != real_root.joinpath(*parts):
        raise SnapshotError(f"{'/'.join(parts)!r} leaves {root} (symlinks and '..' are not followed)")
    return path
