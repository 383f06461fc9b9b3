"""A Tinker service as a run's trainer: a base URL and a key, no jobs to create.

Sampler snapshots reach the deployment the way they leave Tinker's cloud: each one is an external
weights export (``save_weights_external``, Hugging Face safetensors), downloaded through the signed
URLs Tinker's REST API gives (``get_external_weights_urls``) and written locally as a hotloop
``base`` snapshot, which any deployment backend can load. Nothing assumes a shared bucket, so the
same code drives a remote Tinker service and ``hotloop serve trainer`` standing in for one. Every
export is a full snapshot: Tinker writes no deltas a deployment could apply.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from engine.backends.base import (
    CheckpointType,
    Health,
    RestorePoint,
    SamplerSnapshot,
    SnapshotStore,
    TrainerRef,
    TrainerSession,
    TrainerSpec,
)
from engine.backends.tinker.edge import tinker_credentials
from engine.backends.tinker.session import TokenizerLoader, TrainingSession
from engine.errors import ConfigError, FatalError, RetryableError, StuckError
from engine.log import get_logger
from engine.weights.names import SnapshotError

KIND = "tinker"
HEALTH_POLL_S = 0.5
HEALTH_READ_S = 10.0  # one health read; a service slower than this is unreachable to the run
DOWNLOAD_TIMEOUT_S = 600.0
DOWNLOAD_CHUNK = 1 << 20
_log = get_logger("backends.tinker")


class ExportingSession:
    """A TrainingSession whose sampler snapshots are external weights exports (always full)."""

    def __init__(self, session: TrainingSession, exports: dict[str, str]) -> None:
        self.inner = session
        self._exports = exports  # identity -> tinker:// path of its export, shared with the store

    # Everything but the sampler save is the session's own.
    @property
    def lora_rank(self) -> int:
        return self.inner.lora_rank

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    @property
    def tokenizer(self) -> Any:
        return self.inner.tokenizer

    @property
    def optimizer_steps(self) -> int:
        return self.inner.optimizer_steps

    def forward_backward(
        self, data: Sequence[Any], loss_fn: Any, loss_fn_config: Mapping[str, float | str] | None = None
    ) -> Coroutine[Any, Any, Any]:
        return self.inner.forward_backward(data, loss_fn, loss_fn_config)

    def forward_backward_custom(self, data: Sequence[Any], fn: Any) -> Coroutine[Any, Any, Any]:
        return self.inner.forward_backward_custom(data, fn)

    def optim_step(self, adam_params: Any) -> Coroutine[Any, Any, Any]:
        return self.inner.optim_step(adam_params)

    def save_state(self, name: str) -> Coroutine[Any, Any, str]:
        return self.inner.save_state(name)

    async def save_weights_for_sampler(
        self, name: str, checkpoint_type: CheckpointType = "base", parent_snapshot_identity: str | None = None
    ) -> SamplerSnapshot:
        identity = self.inner.qualify(name)
        path = await self.inner.save_weights_external(identity)
        self._exports[identity] = path
        return SamplerSnapshot(path=path, snapshot_name=identity, checkpoint_type="base")

    async def close(self) -> None:
        await self.inner.close()


class ExportStore:
    """Downloads an export once and keeps it as a hotloop base snapshot under ``root/<identity>``."""

    def __init__(self, root: Path, exports: dict[str, str], base_model: str) -> None:
        self.root = root
        self.exports = exports
        self.base_model = base_model
        self.session: TrainingSession | None = None
        self._lock = asyncio.Lock()

    async def local_dir(self, identity: str) -> Path:
        from engine.weights.names import check_name

        target = self.root / check_name(identity)
        async with self._lock:
            if await asyncio.to_thread(target.is_dir):
                return target
            path = self.exports.get(identity)
            if path is None or self.session is None:
                raise SnapshotError(f"snapshot {identity!r} was not exported by this run's Tinker session")
            urls = await self.session.external_weights_urls(path)
            staging = Path(
                await asyncio.to_thread(tempfile.mkdtemp, prefix=".export-", dir=self._ensure_root())
            )
            try:
                await _download(urls, staging)
                await asyncio.to_thread(_to_snapshot, staging, self.root, identity, self.base_model)
            finally:
                await asyncio.to_thread(shutil.rmtree, staging, True)
            _log.info("tinker export downloaded", identity=identity, files=len(urls))
            return target

    def _ensure_root(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        return self.root


def _destinations(into: Path, urls: dict[str, str]) -> dict[Path, str]:
    """Where each file of an export goes; a name that would leave ``into`` is refused."""
    base = into.resolve()
    out: dict[Path, str] = {}
    for name, url in sorted(urls.items()):
        dest = (into / name).resolve()
        if not dest.is_relative_to(base) or urlsplit(url).scheme not in ("http", "https"):
            raise FatalError(f"tinker export: refusing file {name!r} at {url[:80]!r}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        out[dest] = url
    return out


async def _download(urls: dict[str, str], into: Path) -> None:
    """Every file of an export, streamed to disk; the whole download is bounded by DOWNLOAD_TIMEOUT_S."""
    destinations = await asyncio.to_thread(_destinations, into, urls)
    try:
        # total=None: aiohttp's default 5-minute cap per request would cut a large file short; the
        # one deadline below bounds every file together.
        async with (
            asyncio.timeout(DOWNLOAD_TIMEOUT_S),
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as http,
        ):
            for dest, url in destinations.items():
                await _fetch(http, dest, url)
    except TimeoutError as exc:
        raise RetryableError(
            f"tinker export: {len(destinations)} files not downloaded within {DOWNLOAD_TIMEOUT_S:g}s"
        ) from exc


async def _fetch(http: aiohttp.ClientSession, dest: Path, url: str) -> None:
    """One file, chunk by chunk (an export's file can be gigabytes), written off the event loop."""
    try:
        async with http.get(url) as resp:
            if resp.status >= 400:
                err = RetryableError if resp.status >= 500 or resp.status == 429 else FatalError
                raise err(f"tinker export: GET {dest.name!r}: HTTP {resp.status}")
            out = await asyncio.to_thread(dest.open, "wb")
            try:
                async for chunk in resp.content.iter_chunked(DOWNLOAD_CHUNK):
                    await asyncio.to_thread(out.write, chunk)
            finally:
                out.close()  # synchronous: it must run even when the deadline cancelled the copy
    except aiohttp.ClientError as exc:
        raise RetryableError(f"tinker export: GET {dest.name!r}: {type(exc).__name__}: {exc}") from exc


def _to_snapshot(export_dir: Path, bucket: Path, identity: str, base_model: str) -> None:
    import torch
    from safetensors.torch import load_file

    from engine.weights.snapshot import write_base

    files = sorted(export_dir.rglob("*.safetensors"))
    if not files:
        raise SnapshotError(f"tinker export {identity!r} holds no .safetensors file")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    write_base(bucket, identity, state, base_model)


class TinkerTrainer:
    """TrainerBackend for a Tinker service at ``base_url``."""

    kind = KIND

    def __init__(
        self, base_url: str, api_key: str, *, exports_dir: Path, tokenizer_loader: TokenizerLoader | None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._tokenizer_loader = tokenizer_loader
        self.exports: dict[str, str] = {}
        self.exports_dir = exports_dir
        self._store: ExportStore | None = None

    async def provision(self, spec: TrainerSpec, known: TrainerRef | None) -> TrainerRef:
        # A Tinker service has no resources to create: the run's model is created when it connects.
        return TrainerRef(KIND, known.resource_id if known else spec.resource_id, {"base_url": self.base_url})

    def _http(self) -> aiohttp.ClientSession:
        key, extra = tinker_credentials(self._api_key)
        return aiohttp.ClientSession(headers={"X-API-Key": key, **extra})

    async def _healthz(self, http: aiohttp.ClientSession) -> tuple[int | None, str]:
        """One ``GET /api/v1/healthz``: its status (None: no answer) and what to say about it."""
        try:
            async with http.get(
                f"{self.base_url}/api/v1/healthz", timeout=aiohttp.ClientTimeout(total=HEALTH_READ_S)
            ) as resp:
                return resp.status, f"HTTP {resp.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            return None, f"{type(exc).__name__}: {exc}"

    async def wait_ready(self, ref: TrainerRef, *, reattach: bool, timeout_s: float) -> TrainerRef:
        last = "no answer"
        try:
            async with asyncio.timeout(timeout_s), self._http() as http:
                while True:
                    status, last = await self._healthz(http)
                    if status == 200:
                        return ref
                    if status in (401, 403):
                        raise self._refused(last)
                    await asyncio.sleep(HEALTH_POLL_S)
        except TimeoutError:
            raise StuckError(
                f"Tinker service at {self.base_url} not healthy within {timeout_s:g}s ({last})"
            ) from None

    def _refused(self, what: str) -> ConfigError:
        # A rejected key does not heal by waiting: a ConfigError fails the run (unrecoverable) at once.
        return ConfigError(f"api_key: the Tinker service at {self.base_url} refused it ({what})")

    async def health(self, ref: TrainerRef) -> Health:
        """Raises ConfigError when the service refuses the key (not ``unreachable``: retrying cannot help)."""
        # A service, not a job: hotloop cannot see it fail, only stop answering.
        async with self._http() as http:
            status, what = await self._healthz(http)
        if status in (401, 403):
            raise self._refused(what)
        if status == 200:
            return Health("ok", f"Tinker service at {self.base_url} answers /api/v1/healthz")
        return Health("unreachable", f"Tinker service at {self.base_url}: {what}")

    async def recover(self, ref: TrainerRef, *, timeout_s: float) -> TrainerRef:
        # Nothing to restart from here: wait for the service; the run restores its last full state.
        return await self.wait_ready(ref, reattach=True, timeout_s=timeout_s)

    async def open_session(
        self, ref: TrainerRef, spec: TrainerSpec, restore: RestorePoint | None
    ) -> TrainerSession:
        if restore is not None:
            session = await TrainingSession.from_state(
                self.base_url,
                self._api_key,
                restore.state_path,
                with_optimizer=True,
                tokenizer_loader=self._tokenizer_loader,
                optimizer_steps=restore.optimizer_steps,
            )
        else:
            session = await TrainingSession.connect(
                self.base_url,
                self._api_key,
                spec.base_model,
                spec.lora_rank,
                tokenizer_loader=self._tokenizer_loader,
            )
        self.store(spec.base_model).session = session
        return ExportingSession(session, self.exports)

    def store(self, base_model: str) -> ExportStore:
        if self._store is None:
            self._store = ExportStore(self.exports_dir, self.exports, base_model)
        return self._store

    def snapshot_store(self, ref: TrainerRef) -> SnapshotStore | None:
        return self._store

    async def release(self, ref: TrainerRef, *, delete: bool) -> None:
        return None  # nothing was created on the service but the session's model, closed with it

    async def aclose(self) -> None:
        return None
