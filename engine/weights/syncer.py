"""``WeightSyncer``: save sampler snapshots and hot-load them into a deployment, base then deltas.

The decisions (base or delta, against which parent, with which incremental metadata) live in
``engine.weights.chain`` as pure functions; this class does the I/O around them:

1. before the first decision, and after any failure, read back what the deployment really holds
   (``hotload_check_status``), waiting for its hot-load manager to report a replica;
2. save through the ``TrainingSession`` (session-qualified identity);
3. hot-load with the chain's metadata and wait until the deployment reports the identity
   (``wait_for_hotload``) -- only then is success reported and the chain advanced;
4. record ``last_timing`` (``save_time_s``, ``hotload_time_s``, ``total_time_s``).

A failed hot-load makes the next snapshot a full one. Operations of one syncer are serialized.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from engine.clock import SYSTEM_CLOCK, Clock
from engine.errors import ConfigError, FatalError, HotloopError, StuckError
from engine.log import get_logger
from engine.weights import chain
from engine.weights.chain import CheckpointType

if TYPE_CHECKING:
    from engine.backends.tinker.session import SamplerSnapshot

_log = get_logger("engine.weights.syncer")


class HotloadFailedError(FatalError):
    """A hot-load did not end with the deployment serving the snapshot; the chain falls back to base."""

    def __init__(self, message: str, *, identity: str) -> None:
        super().__init__(message)
        self.identity = identity


class _Session(Protocol):
    lora_rank: int

    def save_weights_for_sampler(
        self, name: str, checkpoint_type: CheckpointType = "base", parent_snapshot_identity: str | None = None
    ) -> Any: ...


class _DeployMgr(Protocol):
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


@dataclass(frozen=True)
class _Readback:
    identity: str | None


def replica_identity(status: dict[str, Any]) -> _Readback | None:
    """``replicas[0].current_snapshot_identity`` of a hot-load status; None while no replica reports."""
    replicas = status.get("replicas")
    if not isinstance(replicas, list):
        raise FatalError(f"unrecognized hot-load status (replicas is not a list): {status!r:.300}")
    if not replicas:
        return None
    ident = replicas[0].get("current_snapshot_identity") if isinstance(replicas[0], dict) else None
    return _Readback(ident if isinstance(ident, str) and ident else None)


class WeightSyncer:
    """Keeps a deployment on the latest snapshot of one training session."""

    def __init__(
        self,
        session: _Session,
        deploy_mgr: _DeployMgr,
        deployment_id: str,
        base_model: str,
        *,
        hotload_timeout_s: float = 600.0,
        full_every: int = 20,
        poll_interval_s: float = 1.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if not deployment_id:
            raise ConfigError("deployment_id: empty")
        if not base_model:
            raise ConfigError("base_model: empty")
        if hotload_timeout_s <= 0:
            raise ConfigError(f"hotload_timeout_s: must be > 0, got {hotload_timeout_s}")
        try:
            self._state = chain.ChainState(lora=session.lora_rank > 0, full_every=full_every)
        except chain.ChainError as exc:
            raise ConfigError(f"full_every: {exc}") from exc
        self.session = session
        self.deploy_mgr = deploy_mgr
        self.deployment_id = deployment_id
        self.base_model = base_model
        self.hotload_timeout_s = hotload_timeout_s
        self.poll_interval_s = poll_interval_s
        self.clock = clock
        self.last_timing: dict[str, float] = {}
        self.last_snapshot: SamplerSnapshot | None = None
        self._lock = asyncio.Lock()
        self._log = _log.bind(deployment_id=deployment_id)

    @property
    def state(self) -> chain.ChainState:
        """The chain state (immutable snapshot), for inspection and tests."""
        return self._state

    @property
    def deployed_identity(self) -> str | None:
        """The identity the deployment holds as far as this syncer verified it (None: unknown/none)."""
        return self._state.held if self._state.held_known else None

    # ---- public operations ----------------------------------------------------------------------

    async def save_and_hotload(self, name: str, checkpoint_type: CheckpointType | None = None) -> str:
        """Save ``name`` (base or delta per the chain), hot-load it, wait until it is served.

        Returns the snapshot identity. Raises ``HotloadFailedError`` (the next save is then base).
        """
        async with self._lock:
            t0 = self.clock.monotonic()
            snap = await self._save(name, checkpoint_type)
            t1 = self.clock.monotonic()
            await self._hotload(snap.snapshot_name, snap.checkpoint_type)
            t2 = self.clock.monotonic()
            self.last_timing = {"save_time_s": t1 - t0, "hotload_time_s": t2 - t1, "total_time_s": t2 - t0}
            return snap.snapshot_name

    async def save_only(self, name: str, checkpoint_type: CheckpointType | None = None) -> SamplerSnapshot:
        """Save a snapshot without hot-loading it (its delta parent is what the deployment holds)."""
        async with self._lock:
            t0 = self.clock.monotonic()
            snap = await self._save(name, checkpoint_type)
            self.last_timing = {"save_time_s": self.clock.monotonic() - t0}
            return snap

    async def hotload(self, snapshot_name: str, checkpoint_type: CheckpointType) -> None:
        """Hot-load a saved snapshot and wait until the deployment serves it."""
        async with self._lock:
            t0 = self.clock.monotonic()
            await self._hotload(snapshot_name, checkpoint_type)
            self.last_timing = {"hotload_time_s": self.clock.monotonic() - t0}

    def reset_delta_chain(self) -> None:
        """Forget the chain (e.g. after attaching a new trainer): the next snapshot is base."""
        self._state = chain.apply(self._state, chain.Reset())
        self._log.info("delta chain reset")

    async def check_deployment_state(self) -> str | None:
        """Read back the deployment's identity now (and record it)."""
        async with self._lock:
            await self._readback()
            return self._state.held

    # ---- internals ------------------------------------------------------------------------------

    async def _save(self, name: str, override: CheckpointType | None) -> SamplerSnapshot:
        if chain.needs_readback(self._state):
            await self._readback()
        try:
            plan = chain.plan_save(self._state, override)
        except chain.ChainError as exc:
            raise ConfigError(f"checkpoint_type: {exc}") from exc
        snap: SamplerSnapshot = await self.session.save_weights_for_sampler(
            name, plan.checkpoint_type, plan.parent
        )
        # The trainer has the last word on what it wrote (a LoRA trainer always writes base).
        parent = (snap.parent_snapshot_identity or plan.parent) if snap.checkpoint_type == "delta" else None
        self._state = chain.apply(self._state, chain.Saved(snap.snapshot_name, snap.checkpoint_type, parent))
        self.last_snapshot = snap
        self._log.info(
            "snapshot saved", identity=snap.snapshot_name, kind=snap.checkpoint_type, parent=parent
        )
        return snap

    async def _hotload(self, identity: str, checkpoint_type: CheckpointType) -> None:
        if chain.needs_readback(self._state):
            await self._readback()
        if self._state.held == identity:
            return  # already served: a repeat hot-load of the same identity is a no-op
        try:
            metadata = chain.hotload_metadata(self._state, identity, checkpoint_type)
        except chain.ChainError as exc:
            raise ConfigError(f"checkpoint_type: {exc}") from exc
        try:
            await self.deploy_mgr.hotload(self.deployment_id, self.base_model, identity, metadata)
            served = await self.deploy_mgr.wait_for_hotload(
                self.deployment_id,
                self.base_model,
                identity,
                timeout_seconds=self.hotload_timeout_s,
                poll_interval=self.poll_interval_s,
            )
            if not served:
                reason = getattr(self.deploy_mgr, "last_hotload_error_message", None)
                raise StuckError(
                    reason or f"deployment did not serve {identity!r} within {self.hotload_timeout_s:g}s"
                )
        except asyncio.CancelledError:
            # Cancelled mid hot-load (a state timeout, shutdown): the deployment may now hold either
            # snapshot, so the next decision must read it back instead of diffing against a guess.
            self._state = chain.apply(self._state, chain.HotloadFailed(identity))
            raise
        except (HotloopError, TimeoutError) as exc:
            self._state = chain.apply(self._state, chain.HotloadFailed(identity))
            self._log.warning("hot-load failed; next snapshot is base", identity=identity, error=str(exc))
            try:
                await self._readback()
            except HotloopError as rb_exc:
                self._log.warning("read-back after failed hot-load failed", error=str(rb_exc))
            raise HotloadFailedError(
                f"hot-load of {identity!r} into {self.deployment_id!r} failed: {exc}", identity=identity
            ) from exc
        self._state = chain.apply(self._state, chain.HotloadSucceeded(identity))
        self._log.info("hot-load served", identity=identity, kind=checkpoint_type, incremental=bool(metadata))

    async def _readback(self) -> None:
        """Record the deployment's identity, waiting (bounded) for a replica to report one."""
        deadline = self.clock.monotonic() + self.hotload_timeout_s
        while True:
            status = await self.deploy_mgr.hotload_check_status(self.deployment_id, self.base_model)
            got = replica_identity(status)
            if got is not None:
                self._state = chain.apply(self._state, chain.Observed(got.identity))
                self._log.info("deployment identity read back", identity=got.identity)
                return
            if self.clock.monotonic() >= deadline:
                raise StuckError(
                    f"deployment {self.deployment_id!r}: hot-load manager reported no replica within "
                    f"{self.hotload_timeout_s:g}s"
                )
            await self.clock.sleep(self.poll_interval_s)
