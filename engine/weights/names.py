"""Snapshot identities: the one rule for what a snapshot may be called, and where a bucket keeps one
(no torch; the only I/O is looking a name up in a bucket).

Identities become directory names in a bucket, so they are restricted to a safe alphabet. The SDK
validates names with this module alone; ``engine.weights.snapshot`` (which needs torch) re-exports it.
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path

from engine.errors import ConfigError

MANIFEST = "manifest.json"  # a snapshot directory's manifest; its presence marks the snapshot
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


def resolve(bucket: Path, identity: str) -> str:
    """The identity a snapshot is stored under. ``<run>/<name>`` is exact; a bare ``name`` is the
    snapshot of that name at the bucket's top, else in the one training run that has it (a client
    that names snapshots itself, as Fireworks' SDK does, hot-loads the name it saved under; two runs
    holding one name are ambiguous, and refused)."""
    parts = identity_parts(identity)
    if len(parts) > 1 or contained(Path(bucket), *parts, MANIFEST).exists():
        return identity
    runs = sorted(p.parent.parent.name for p in Path(bucket).glob(f"*/{parts[0]}/{MANIFEST}"))
    if len(runs) == 1:
        return check_identity(f"{runs[0]}/{parts[0]}")
    if runs:
        raise SnapshotError(
            f"snapshot {identity!r} is ambiguous in {bucket}: training runs {runs} all have it"
        )
    raise SnapshotError(f"snapshot {identity!r} not found in {bucket}")


def session_tag(tag: str | None = None) -> str:
    """The tag that qualifies one training session's snapshot names (``f"{name}-{tag}"``, as
    Fireworks' client does it, so two sessions or a resumed one never write the same identity):
    ``tag``, checked, or 8 random hex digits."""
    tag = secrets.token_hex(4) if tag is None else tag
    if not 1 <= len(tag) <= 32:
        raise ConfigError(f"session_tag: must be 1-32 characters, got {len(tag)}")
    try:
        check_name(f"x-{tag}")
    except SnapshotError as exc:
        raise ConfigError(f"session_tag: {exc}") from exc
    return tag


def session_qualified(name: str, tag: str) -> str:
    """Snapshot ``name`` as the session tagged ``tag`` writes it."""
    try:
        return check_name(f"{name}-{tag}")
    except SnapshotError as exc:
        raise ConfigError(f"name: {exc}") from exc
