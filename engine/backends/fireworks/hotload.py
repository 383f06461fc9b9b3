"""Hot-loading through Fireworks' hot-load API (``/hot_load/v1/models/hot_load``), which the embedded
control plane and deployment speak too.

A delta is announced with ``incremental_snapshot_metadata``: the parent identity plus the compression
and checksum formats the trainer reports for what it wrote (``SamplerSnapshot.delta_format``). The
deployment reports what it serves as ``replicas[0].current_snapshot_identity``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any, Protocol

from engine.backends.base import SamplerSnapshot, SnapshotStore
from engine.backends.fireworks.phases import first_replica, served_identity
from engine.errors import StuckError


class HotloadApi(Protocol):
    """What the loader needs of a ``DeploymentManager`` (tests script it). A manager may also say why
    a wait ended unserved in ``last_hotload_error_message``."""

    async def hotload(
        self,
        deployment_id: str,
        base_model: str,
        snapshot_identity: str,
        incremental_snapshot_metadata: dict[str, Any] | None = None,
    ) -> Any: ...

    async def hotload_check_status(self, deployment_id: str, base_model: str) -> dict[str, Any]: ...

    async def wait_for_hotload(
        self,
        deployment_id: str,
        base_model: str,
        expected_identity: str,
        timeout_seconds: float = ...,
        poll_interval: float = ...,
    ) -> bool: ...


def incremental_metadata(snapshot: SamplerSnapshot, parent: str | None) -> dict[str, str] | None:
    """The ``incremental_snapshot_metadata`` of a hot-load (None: a full load)."""
    if parent is None:
        return None
    compression, checksum = snapshot.delta_format
    return {
        "previous_snapshot_identity": parent,
        "compression_format": compression,
        "checksum_format": checksum,
    }


def _copy_in(src: Path, dst: Path) -> None:
    """Copy a snapshot directory into a bucket, atomically (a reader never sees half of it)."""
    if dst.exists() or src.resolve() == dst.resolve():
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.staging")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    os.replace(tmp, dst)


def replica_identity(status: dict[str, Any]) -> tuple[bool, str | None]:
    """(reported, identity) of a hot-load status; reported is False while no replica answers. Raises
    HotloadError (fatal) for a body that is not a hot-load status."""
    replica = first_replica(status)
    return (False, None) if replica is None else (True, served_identity(replica))


class ControlPlaneHotLoader:
    """``HotLoader`` for one deployment behind a Fireworks-shaped hot-load API."""

    def __init__(
        self,
        api: HotloadApi,
        deployment_id: str,
        base_model: str,
        *,
        timeout_s: float = 600.0,
        poll_interval_s: float = 1.0,
        stage: tuple[SnapshotStore, Path] | None = None,
    ) -> None:
        self.api = api
        # (the trainer's store, the deployment's local bucket): a deployment that does not share its
        # trainer's bucket (a Tinker trainer's exports) gets each snapshot copied in before its load.
        self.stage = stage
        self.deployment_id = deployment_id
        self.base_model = base_model
        self.timeout_s = timeout_s
        self.poll_interval_s = poll_interval_s

    async def read_identity(self) -> tuple[bool, str | None]:
        return replica_identity(await self.api.hotload_check_status(self.deployment_id, self.base_model))

    async def load(self, snapshot: SamplerSnapshot, *, parent: str | None) -> None:
        identity = snapshot.snapshot_name
        if self.stage is not None:
            store, bucket = self.stage
            await asyncio.to_thread(_copy_in, await store.local_dir(identity), bucket / identity)
        metadata = incremental_metadata(snapshot, parent)
        await self.api.hotload(self.deployment_id, self.base_model, identity, metadata)
        served = await self.api.wait_for_hotload(
            self.deployment_id,
            self.base_model,
            identity,
            timeout_seconds=self.timeout_s,
            poll_interval=self.poll_interval_s,
        )
        if not served:
            reason = getattr(self.api, "last_hotload_error_message", None)
            raise StuckError(reason or f"deployment did not serve {identity!r} within {self.timeout_s:g}s")
