"""Hot-loading snapshots into the serving weights (Fireworks' hot-load API shape, SYNC transition).

Stages: ``idle`` -> ``loading`` -> ``idle`` (success) or ``error`` (failure, old weights still
serving). A load reads and verifies the snapshot off the event loop (a delta is applied to the
weights being served, and must name them as its parent), then asks the scheduler for a swap: the
worker stops admitting, lets in-flight sequences finish on the old weights, and swaps between
batches. Nothing about the served weights changes until that swap, so every failure before it
leaves the deployment exactly as it was.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from engine.local.deployment.protocol import HotLoadRequest
from engine.local.deployment.scheduler import Scheduler
from engine.log import get_logger
from engine.weights.snapshot import Manifest, SnapshotError, check_identity, load_snapshot

log = get_logger(__name__)
Stage = Literal["idle", "loading", "error"]


class HotLoadBusyError(Exception):
    """A load is already running; the caller should retry later (425)."""


@dataclass(frozen=True)
class LedgerEntry:
    identity: str
    kind: str
    parent: str | None
    loaded_at: float
    load_seconds: float


class HotLoader:
    def __init__(
        self,
        scheduler: Scheduler,
        bucket: Path | None,
        swap_timeout_s: float = 600.0,
        on_outcome: Callable[[str], None] | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.bucket = Path(bucket) if bucket is not None else None
        self.swap_timeout_s = swap_timeout_s
        self.stage: Stage = "idle"
        self.target: str | None = None
        self.error: str | None = None
        self.ledger: list[LedgerEntry] = []
        self._task: asyncio.Task[None] | None = None
        # The served weights' identity as the bucket stores it (``<run>/<name>``), which a delta's
        # manifest names as its parent; a client may have named it bare when it hot-loaded it.
        self._held: str | None = None
        self._on_outcome = on_outcome or (lambda _outcome: None)

    @property
    def current_identity(self) -> str | None:
        return self.scheduler.identity

    @property
    def loading(self) -> bool:
        return self.stage == "loading"

    def status(self) -> dict[str, Any]:
        """The GET body: one replica, as Fireworks' hot-load status reports it."""
        return {
            "replicas": [
                {
                    "current_snapshot_identity": self.current_identity,
                    "readiness": True,  # old weights keep serving during a load and after a failure
                    "loading_state": {
                        "stage": self.stage,
                        "target_snapshot_identity": self.target,
                        "error_message": self.error,
                    },
                    "loaded_adapters": [],
                    "ledger": [asdict(e) for e in self.ledger],
                }
            ]
        }

    def begin(self, req: HotLoadRequest) -> None:
        """Start loading ``req.identity`` in the background; poll ``status()`` for the outcome."""
        if self.loading:
            raise HotLoadBusyError(f"hot-load of {self.target!r} is in progress")
        if req.identity == self.current_identity:  # a retried request: already serving it
            self.stage, self.target, self.error = "idle", req.identity, None
            return
        self.stage, self.target, self.error = "loading", req.identity, None
        self._task = asyncio.create_task(self._load(req), name=f"hot-load {req.identity}")

    async def wait(self) -> None:
        """Until the current load (if any) has settled; for callers that want to block."""
        if self._task is not None:
            await asyncio.shield(self._task)

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()

    async def _load(self, req: HotLoadRequest) -> None:
        start = time.perf_counter()
        identity = req.identity
        try:
            manifest = await self._prepare_and_swap(req)
        except asyncio.CancelledError:
            self.stage, self.error = "error", f"hot-load of {identity!r} was cancelled"
            raise
        except Exception as exc:
            self.stage, self.error = "error", _message(identity, exc)
            self._on_outcome("error")
            log.warning("hot-load failed", identity=identity, error=self.error, serving=self.current_identity)
            return
        elapsed = time.perf_counter() - start
        self.ledger.append(LedgerEntry(identity, manifest.kind, manifest.parent, time.time(), elapsed))
        self.stage, self.error = "idle", None
        self._on_outcome("success")
        log.info("hot-load done", identity=identity, kind=manifest.kind, seconds=round(elapsed, 3))

    async def _prepare_and_swap(self, req: HotLoadRequest) -> Manifest:
        identity = check_identity(req.identity)  # a bare name or <run>/<name>
        if self.bucket is None:
            raise SnapshotError("this deployment was started without --bucket")
        serving = self.current_identity
        meta = req.incremental_snapshot_metadata
        if meta is not None:
            previous = meta.get("previous_snapshot_identity")
            if previous not in (serving, self._held):
                raise SnapshotError(
                    f"incremental_snapshot_metadata.previous_snapshot_identity is {previous!r} "
                    f"but this deployment serves {serving!r}"
                )
        held = self._held if self._held is not None else serving
        manifest, state = await asyncio.to_thread(self._read, identity, held)
        future = self.scheduler.request_swap(identity, state)
        try:
            async with asyncio.timeout(self.swap_timeout_s):
                await asyncio.shield(future)
        except TimeoutError:
            if self.scheduler.withdraw_swap(future):
                raise SnapshotError(
                    f"in-flight requests did not drain within {self.swap_timeout_s:.0f}s; load abandoned"
                ) from None
            await future  # it was already being applied: let it finish
        self._held = manifest.identity
        return manifest

    def _read(self, identity: str, held: str | None) -> tuple[Manifest, dict[str, torch.Tensor]]:
        """Runs in a worker thread: read, verify and (for a delta) apply the snapshot onto the weights
        served, ``held`` (load_snapshot refuses a delta whose parent they are not)."""
        assert self.bucket is not None
        current = (held, self.scheduler.runner.state_dict()) if held is not None else None
        manifest, state = load_snapshot(self.bucket, identity, current)
        self.scheduler.runner.check_compatible(state)
        return manifest, state


def _message(identity: str, exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if identity in text else f"hot-load of {identity!r} failed: {text}"
