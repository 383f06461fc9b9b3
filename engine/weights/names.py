"""Snapshot identities: the one rule for what a snapshot may be called (no torch, no I/O).

Identities become directory names in a bucket, so they are restricted to a safe alphabet. The SDK
validates names with this module alone; ``engine.weights.snapshot`` (which needs torch) re-exports it.
"""

from __future__ import annotations

import re
from pathlib import Path

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,127}$")
# A training run id (tinker's ``<session>:train:<n>``): the first segment of a per-run identity.
_RUN_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9:._\-]{0,200}$")


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


def check_identity(identity: str) -> str:
    """A snapshot identity: a bare name, or ``<run_id>/<name>`` for a snapshot a trainer keeps per
    training run (``tinker://<run_id>/sampler_weights/<name>``), stored in the run's folder."""
    if not isinstance(identity, str):
        raise SnapshotError(f"invalid snapshot name {identity!r}: not a string")
    run, sep, name = identity.rpartition("/")
    if sep and (not _RUN_SEGMENT.match(run) or ".." in run):
        raise SnapshotError(
            f"invalid snapshot name {identity!r}: the run segment before '/' must be 1-201 letters, "
            "digits, ':', '.', '_' or '-'"
        )
    check_name(name)
    return identity


def run_identity(run_id: str, name: str) -> str:
    """The identity of snapshot ``name`` of training run ``run_id``."""
    return check_identity(f"{run_id}/{check_name(name)}")


def identity_parts(identity: str) -> tuple[str, ...]:
    """The directory components of an identity below the bucket (one, or run then name)."""
    return tuple(check_identity(identity).split("/"))


def flat_name(identity: str) -> str:
    """One directory name for an identity (``<run>~<name>``; '~' is in neither segment's alphabet, so
    the mapping is one to one), for stores that keep every snapshot side by side."""
    return check_identity(identity).replace("/", "~")


def contained(root: Path, *parts: str) -> Path:
    """``root/parts...``, refused if any component below ``root`` is a symlink (or ``..``): a
    writer of the bucket must not make a reader open, hash or load a file outside it."""
    path = Path(root).joinpath(*parts)
    real_root = Path(root).resolve()
    unsafe = any(p in ("", ".", "..") or "/" in p or "\0" in p for p in parts)
    if unsafe or path.resolve() != real_root.joinpath(*parts):
        raise SnapshotError(f"{'/'.join(parts)!r} leaves {root} (symlinks and '..' are not followed)")
    return path
