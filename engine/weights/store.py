"""``DirectoryStore``: the SnapshotStore of a trainer whose bucket is a local directory (the embedded
trainer's): snapshot ``identity`` lives in ``BUCKET/<identity>/`` in hotloop's format (per-run
identities ``<run>/<name>`` in the run's folder)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from engine.weights.names import SnapshotError, contained, identity_parts, resolve


class DirectoryStore:
    def __init__(self, bucket: Path) -> None:
        self.bucket = Path(bucket)

    async def local_dir(self, identity: str) -> Path:
        # a bare name is the one training run's snapshot of that name (Fireworks' clients name them so)
        try:
            stored = await asyncio.to_thread(resolve, self.bucket, identity)
        except SnapshotError:
            stored = identity  # not a stored snapshot: refused below, by name
        path = contained(self.bucket, *identity_parts(stored))
        if not await asyncio.to_thread(path.is_dir):
            raise SnapshotError(f"snapshot {identity!r} not found in {self.bucket}")
        return path
