"""``VllmHotLoader``: push a hotloop snapshot into a running vLLM and read back what it serves.

One load: materialize the snapshot's full weights directory (nothing on the server is touched if the
chain is missing, corrupt or does not fit the served model), pause, ``reload_weights`` from that
directory, reset the prefix cache (its blocks hold the old weights' keys and values), set the weight
version label to the snapshot identity, resume, and report success only once ``/weight_info`` returns
that identity. The identity is the label: vLLM's fresh ``"default"`` means the initial weights (None).

Pause mode ``wait`` (default): requests in flight finish on the weights they started with and new ones
queue until the resume, so no completion mixes two weight versions (``keep`` would freeze them and
continue on the new weights, silently mixing; ``abort`` ends them with ``finish_reason: abort``, which
the sampler retries from scratch). hotloop syncs between sampling phases, so normally nothing is in
flight and ``wait`` costs nothing; a straggler that does not drain within ``drain_timeout_s`` is
aborted (the sampler retries it on the new weights).

A failed reload leaves vLLM's layers on the meta device (it reloads in place, layer by layer) and the
next forward pass would kill the engine. So, still paused, the loader reloads what was served before
(its directory under the work dir, re-materialized from the store if pruned, or rebuilt from the
launch checkpoint for the initial weights) and puts its label back; only then does it resume and raise
``VllmHotloadError`` (the chain's next snapshot is then a base). If even that fails it labels the
server ``unknown:...``, an identity no chain holds, so the next read-back says so. A load once begun
runs to its end (each step bounded) even if the caller is cancelled: a resume during a reload would
let requests run on half-loaded weights.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from engine.backends.base import SamplerSnapshot, SnapshotStore
from engine.backends.vllm.admin import INITIAL_VERSION, PauseMode, VllmAdminClient
from engine.backends.vllm.errors import VllmHotloadError, VllmUnavailableError
from engine.backends.vllm.materialize import WeightsMaterializer
from engine.clock import SYSTEM_CLOCK, Clock
from engine.errors import ConfigError, HotloopError, StuckError
from engine.log import get_logger
from engine.weights.names import SnapshotError

_log = get_logger("backends.vllm.hotload")
UNKNOWN_PREFIX = "unknown:"


class VllmHotLoader:
    """Satisfies ``engine.backends.base.HotLoader`` for one vLLM server."""

    def __init__(
        self,
        admin: VllmAdminClient,
        materializer: WeightsMaterializer,
        store: SnapshotStore | None,
        *,
        initial_weights_dir: Path | None = None,
        pause_mode: PauseMode = "wait",
        drain_timeout_s: float = 60.0,
        reload_timeout_s: float = 600.0,
        timeout_s: float = 600.0,
        poll_interval_s: float = 0.5,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        for name, value in (
            ("drain_timeout_s", drain_timeout_s),
            ("reload_timeout_s", reload_timeout_s),
            ("timeout_s", timeout_s),
            ("poll_interval_s", poll_interval_s),
        ):
            if value <= 0:
                raise ConfigError(f"{name}: must be > 0, got {value}")
        self.admin = admin
        self.materializer = materializer
        self.store = store
        self.initial_weights_dir = initial_weights_dir
        self.pause_mode: PauseMode = pause_mode
        self.drain_timeout_s = drain_timeout_s
        self.reload_timeout_s = reload_timeout_s
        self.timeout_s = timeout_s
        self.poll_interval_s = poll_interval_s
        self.clock = clock
        self.last_timing: dict[str, float] = {}
        self._lock = asyncio.Lock()

    async def read_identity(self) -> tuple[bool, str | None]:
        try:
            label = await self.admin.weight_version()
        except VllmUnavailableError:
            return False, None
        return True, None if label == INITIAL_VERSION else label

    async def load(self, snapshot: SamplerSnapshot, *, parent: str | None) -> None:
        identity = snapshot.snapshot_name
        if self.store is None:
            raise ConfigError(
                "deployment: a vLLM deployment reloads from local files and needs the trainer's snapshot"
                " store (the trainer backend gave none)"
            )
        async with self._lock:
            t0 = time.perf_counter()
            try:
                path = await self.materializer.materialize(identity, self.store)
            except (SnapshotError, OSError) as exc:
                raise VllmHotloadError(
                    f"hot-load of {identity!r}: cannot build its weights directory (vLLM untouched): {exc}",
                    identity=identity,
                ) from exc
            t1 = time.perf_counter()
            reported, previous = await self.read_identity()
            if not reported:
                raise VllmHotloadError(
                    f"hot-load of {identity!r}: vLLM at {self.admin.base_url} does not answer",
                    identity=identity,
                )
            _log.info(
                "hot-load", identity=identity, kind=snapshot.checkpoint_type, parent=parent, served=previous
            )
            swap = asyncio.ensure_future(self._swap(path, identity, previous))
            try:
                await asyncio.shield(swap)
            except asyncio.CancelledError:
                await asyncio.wait({swap})  # each step is bounded; see the module doc
                raise
            t2 = time.perf_counter()
            await self._verify(identity)
            await asyncio.to_thread(self.materializer.prune, [identity])  # rmtree: off the loop
            self.last_timing = {
                "materialize_s": t1 - t0,
                "swap_s": t2 - t1,
                "total_s": time.perf_counter() - t0,
            }
            _log.info(
                "hot-load served", identity=identity, **{k: round(v, 4) for k, v in self.last_timing.items()}
            )

    async def _swap(self, path: Path, identity: str, previous: str | None) -> None:
        failure: BaseException | None = None
        try:
            await self._pause()
            try:
                await self.admin.reload_weights(str(path), timeout_s=self.reload_timeout_s)
                await self._reset_prefix_cache()
                await self.admin.update_weight_version(identity)
            except HotloopError as exc:
                outcome = await self._rollback(previous)
                keep = [previous, *([] if outcome.startswith("rolled") else [identity])]
                await asyncio.to_thread(self.materializer.prune, keep)
                failure = VllmHotloadError(
                    f"hot-load of {identity!r} failed: {exc}; {outcome}", identity=identity
                )
                failure.__cause__ = exc
        except HotloopError as exc:  # the pause itself failed: nothing was reloaded
            failure = VllmHotloadError(f"hot-load of {identity!r}: pause failed: {exc}", identity=identity)
            failure.__cause__ = exc
        finally:
            resumed = await self._resume()
        if failure is not None:
            raise failure
        if resumed is not None:
            raise VllmHotloadError(
                f"hot-load of {identity!r}: weights reloaded but vLLM stays paused: {resumed}",
                identity=identity,
            )

    async def _pause(self) -> None:
        try:
            await self.admin.pause(self.pause_mode, timeout_s=self.drain_timeout_s)
        except VllmUnavailableError as exc:
            if self.pause_mode != "wait" or exc.status is not None:
                raise
            _log.warning("requests did not drain; aborting them", drain_timeout_s=self.drain_timeout_s)
            await self.admin.pause("abort")

    async def _reset_prefix_cache(self) -> None:
        deadline = self.clock.monotonic() + 10.0
        while not await self.admin.reset_prefix_cache():
            if self.clock.monotonic() >= deadline:
                raise StuckError("POST /reset_prefix_cache: vLLM kept reporting blocks in use for 10 s")
            await self.clock.sleep(0.1)

    async def _rollback(self, previous: str | None) -> str:
        """Reload what was served before (still paused); returns what happened, for the error message."""
        target: Path | None = None
        try:
            if previous is None:
                if self.initial_weights_dir is not None:
                    target = await self.materializer.materialize_initial(self.initial_weights_dir)
            elif self.materializer.ready(previous):
                target = self.materializer.path_for(previous)
            elif not previous.startswith(UNKNOWN_PREFIX) and self.store is not None:
                target = await self.materializer.materialize(previous, self.store)
        except (SnapshotError, OSError) as exc:
            _log.warning("cannot rebuild the previous weights", previous=previous, error=str(exc))
        try:
            if target is None:
                raise SnapshotError(f"no weights directory for the previously served {previous!r}")
            await self.admin.reload_weights(str(target), timeout_s=self.reload_timeout_s)
            await self._reset_prefix_cache()
            await self.admin.update_weight_version(previous or INITIAL_VERSION)
            _log.warning("hot-load failed; previous weights reloaded", previous=previous)
            return f"rolled back to {previous or 'the initial weights'}"
        except (HotloopError, SnapshotError) as exc:
            label = f"{UNKNOWN_PREFIX}after-failed-load"
            try:
                await self.admin.update_weight_version(label)
            except HotloopError as label_exc:
                _log.warning("cannot label the server unknown", error=str(label_exc))
            _log.error("hot-load rollback failed; served weights unknown", previous=previous, error=str(exc))
            return f"rollback to {previous!r} failed too ({exc}); the server is labelled {label!r}"

    async def _resume(self) -> str | None:
        """Resume (a few bounded tries); None when vLLM reports it is no longer paused."""
        error = "not attempted"
        for _ in range(3):
            try:
                await self.admin.resume()
                if not await self.admin.is_paused():
                    return None
                error = "GET /is_paused still true after POST /resume"
            except HotloopError as exc:
                error = str(exc)
            await self.clock.sleep(self.poll_interval_s)
        _log.error("vLLM did not resume", error=error)
        return error

    async def _verify(self, identity: str) -> None:
        deadline = self.clock.monotonic() + self.timeout_s
        while True:
            reported, served = await self.read_identity()
            if reported and served == identity:
                return
            if self.clock.monotonic() >= deadline:
                raise StuckError(
                    f"vLLM at {self.admin.base_url} reports {served!r} {self.timeout_s:g} s after"
                    f" loading {identity!r}"
                )
            await self.clock.sleep(self.poll_interval_s)
