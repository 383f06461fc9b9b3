"""``WeightSyncer``: save sampler snapshots and hot-load them into a deployment, base then deltas.

The decisions (base or delta, against which parent) live in ``engine.weights.chain`` as pure
functions; how a deployment is loaded and read back is its backend's ``HotLoader``
(engine.backends.base). This class does the sequencing around them:

1. before the first decision, and after any failure, read back what the deployment really holds,
   waiting for it to report a replica;
2. save through the training session (session-qualified identity);
3. hot-load with the chain's parent and return only once the loader saw the deployment serve the
   identity -- only then is the chain advanced;
4. record ``last_timing`` (``save_time_s``, ``hotload_time_s``, ``total_time_s``).

A failed hot-load makes the next snapshot a full one. Operations of one syncer are serialized.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from engine.backends.base import HOTLOOP_DELTA_FORMAT, CheckpointType, HotLoader, SamplerSnapshot
from engine.clock import SYSTEM_CLOCK, Clock
from engine.errors import ConfigError, FatalError, HotloopError, StuckError
from engine.log import get_logger
from engine.weights import chain

_log = get_logger("engine.weights.syncer")


class HotloadFailedError(FatalError):
    """A hot-load did not end with the deployment serving the snapshot; the chain falls back to base."""

    def __init__(self, message: str, *, identity: str) -> None:
        super().__init__(message)
        self.identity = identity


class _Session(Protocol):
    @property
    def lora_rank(self) -> int: ...

    def save_weights_for_sampler(
        self, name: str, checkpoint_type: CheckpointType = "base", parent_snapshot_identity: str | None = None
    ) -> Any: ...


def _hot_loader(
    target: Any, deployment_id: str | None, base_model: str | None, timeout_s: float, poll_interval_s: float
) -> HotLoader:
    """``target`` itself when it is a hot loader; else a Fireworks-shaped ``DeploymentManager`` (the
    seed's ``WeightSyncer(policy_client, deploy_mgr, deployment_id, base_model)`` call), wrapped."""
    if hasattr(target, "read_identity") and hasattr(target, "load"):
        return target
    if not deployment_id:
        raise ConfigError("deployment_id: empty")
    if not base_model:
        raise ConfigError("base_model: empty")
    from engine.backends.fireworks.hotload import ControlPlaneHotLoader

    return ControlPlaneHotLoader(
        target, deployment_id, base_model, timeout_s=timeout_s, poll_interval_s=poll_interval_s
    )


class WeightSyncer:
    """Keeps a deployment on the latest snapshot of one training session.

    ``target`` is the deployment's ``HotLoader`` (engine.backends), or, as in Fireworks' SDK, a
    ``DeploymentManager`` together with ``deployment_id`` and ``base_model``.
    """

    def __init__(
        self,
        session: _Session,
        target: Any,
        deployment_id: str | None = None,
        base_model: str | None = None,
        *,
        hotload_timeout_s: float = 600.0,
        full_every: int = 20,
        poll_interval_s: float = 1.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if hotload_timeout_s <= 0:
            raise ConfigError(f"hotload_timeout_s: must be > 0, got {hotload_timeout_s}")
        try:
            self._state = chain.ChainState(lora=session.lora_rank > 0, full_every=full_every)
        except chain.ChainError as exc:
            raise ConfigError(f"full_every: {exc}") from exc
        self.loader = _hot_loader(target, deployment_id, base_model, hotload_timeout_s, poll_interval_s)
        self.session = session
        self.hotload_timeout_s = hotload_timeout_s
        self.poll_interval_s = poll_interval_s
        self.clock = clock
        self.last_timing: dict[str, float] = {}
        self.last_snapshot: SamplerSnapshot | None = None
        self._lock = asyncio.Lock()
        self._where = repr(deployment_id) if deployment_id else "the deployment"
        self._log = _log.bind(deployment_id=deployment_id) if deployment_id else _log

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

    async def hotload(self, snapshot_name: str, checkpoint_type: CheckpointType) -> str:
        """Hot-load a saved snapshot; returns the identity once the deployment was seen serving it."""
        async with self._lock:
            t0 = self.clock.monotonic()
            await self._hotload(snapshot_name, checkpoint_type)
            self.last_timing = {"hotload_time_s": self.clock.monotonic() - t0}
            return snapshot_name

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
            parent = chain.load_parent(self._state, identity, checkpoint_type)
        except chain.ChainError as exc:
            raise ConfigError(f"checkpoint_type: {exc}") from exc
        saved = self.last_snapshot
        # The snapshot just saved carries what its trainer said of it (type, encoding, size).
        snapshot = (
            saved
            if saved is not None and saved.snapshot_name == identity
            else SamplerSnapshot(
                path="",
                snapshot_name=identity,
                checkpoint_type=checkpoint_type,
                # Saved elsewhere: its encoding is the one this session's trainer writes (a session
                # that does not say is a tinker-protocol one, hotloop's own format).
                delta_format=getattr(self.session, "default_delta_format", HOTLOOP_DELTA_FORMAT),
            )
        )
        try:
            await self.loader.load(snapshot, parent=parent)
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
                f"hot-load of {identity!r} into {self._where} failed: {exc}", identity=identity
            ) from exc
        self._state = chain.apply(self._state, chain.HotloadSucceeded(identity))
        self._log.info("hot-load served", identity=identity, kind=checkpoint_type, parent=parent)

    async def _readback(self) -> None:
        """Record the deployment's identity, waiting (bounded) for a replica to report one."""
        deadline = self.clock.monotonic() + self.hotload_timeout_s
        while True:
            reported, identity = await self.loader.read_identity()
            if reported:
                self._state = chain.apply(self._state, chain.Observed(identity))
                self._log.info("deployment identity read back", identity=identity)
                return
            if self.clock.monotonic() >= deadline:
                raise StuckError(
                    f"the deployment reported no replica within {self.hotload_timeout_s:g}s of asking "
                    "what it serves"
                )
            await self.clock.sleep(self.poll_interval_s)
