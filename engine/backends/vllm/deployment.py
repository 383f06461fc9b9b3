"""``VllmDeployment``: a vLLM server as a run's deployment (satisfies ``DeploymentBackend``).

Either attach to a running server (``base_url``) or let hotloop start one (``launch``, a
``VllmLaunchSpec``); see the package docstring for the constructor. The server must run with
``VLLM_SERVER_DEV_MODE=1`` (a launched one does) and read the same filesystem as hotloop: hot-loads
hand it a directory under ``work_dir``.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.backends.base import (
    DeploymentRef,
    DeploymentSpec,
    Health,
    HotloadPolicy,
    SnapshotStore,
    TrainerRef,
)
from engine.backends.vllm.admin import PauseMode, VllmAdminClient
from engine.backends.vllm.dialect import VllmDialect
from engine.backends.vllm.errors import VllmAdminError, VllmUnavailableError
from engine.backends.vllm.hotload import VllmHotLoader
from engine.backends.vllm.launcher import VllmLaunchSpec, VllmServer
from engine.backends.vllm.materialize import Layout, WeightsMaterializer, read_layout
from engine.errors import ConfigError, StuckError
from engine.log import get_logger
from engine.processes import describe_exit
from engine.weights.names import SnapshotError

if TYPE_CHECKING:
    from engine.sampling.controllers import ConcurrencyController
    from engine.sampling.retry import SamplingRetryPolicy
    from engine.sampling.sampler import DeploymentSampler

_log = get_logger("backends.vllm.deployment")
WEIGHT_VERSIONS_SINCE = (0, 33)
"""vLLM release whose ``/v1/completions`` reports ``weight_versions`` per completion."""


def parse_version(text: str) -> tuple[int, ...]:
    """``"0.32.0"`` / ``"0.33.1+cpu"`` -> (0, 32, 0) / (0, 33, 1); unparsable parts end the tuple."""
    out: list[int] = []
    for part in text.split("+")[0].split("."):
        m = re.match(r"\d+", part)
        if m is None:
            break
        out.append(int(m.group()))
    return tuple(out)


class VllmDeployment:
    kind = "vllm"

    def __init__(
        self,
        *,
        work_dir: str | os.PathLike[str],
        base_url: str | None = None,
        launch: VllmLaunchSpec | None = None,
        served_model_name: str | None = None,
        api_key_env: str | None = None,
        model_dir: str | os.PathLike[str] | None = None,
        pause_mode: PauseMode = "wait",
        drain_timeout_s: float = 60.0,
        request_timeout_s: float = 30.0,
        start_timeout_s: float = 300.0,
        warmup: bool = True,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        if (base_url is None) == (launch is None):
            raise ConfigError("deployment: give exactly one of base_url (attach) or launch (start one)")
        env = os.environ if environ is None else environ
        self._api_key: str | None = None
        if api_key_env:
            self._api_key = env.get(api_key_env) or None
            if self._api_key is None:
                raise ConfigError(
                    f"deployment.api_key_env: environment variable {api_key_env} is not set or empty"
                )
        self.work_dir = Path(work_dir)
        self.base_url = base_url.rstrip("/") if base_url else None
        self.launch = launch
        self.served_model_name = served_model_name or (launch.served_model_name if launch else None)
        self.model_dir = Path(model_dir) if model_dir else (Path(launch.model_dir) if launch else None)
        self.pause_mode: PauseMode = pause_mode
        self.drain_timeout_s = drain_timeout_s
        self.request_timeout_s = request_timeout_s
        self.start_timeout_s = start_timeout_s
        self.warmup = warmup
        self.per_completion_identity = False
        # Under overlap (asynchronous RL), a hot-load must drain the sampler's in-flight attempts
        # unless every completion names the weights that generated it (0.33's weight versions).
        self.hotload_policy: HotloadPolicy = "drain"
        """True once ``wait_ready`` found a server that reports weight versions per completion."""
        self.vllm_version: str | None = None
        self._server: VllmServer | None = None
        self._admin: VllmAdminClient | None = None
        # Clients of a server that moved (a relaunch on a new port): closed by the next async call.
        self._retired: list[VllmAdminClient] = []
        self._materializer: WeightsMaterializer | None = None

    def __repr__(self) -> str:
        return f"VllmDeployment(base_url={self.base_url!r}, launch={self.launch is not None})"

    def _admin_for(self, ref: DeploymentRef) -> VllmAdminClient:
        url = ref.attrs.get("base_url") or self.base_url
        if not url:
            raise ConfigError("deployment: no base_url known (provision first)")
        if self._admin is None or self._admin.base_url != url.rstrip("/"):
            if self._admin is not None:
                self._retired.append(self._admin)  # its session is closed, never dropped open
            self._admin = VllmAdminClient(url, api_key=self._api_key, timeout_s=self.request_timeout_s)
        return self._admin

    async def _admin_async(self, ref: DeploymentRef) -> VllmAdminClient:
        """``_admin_for``, closing the sessions of clients it replaced."""
        admin = self._admin_for(ref)
        await self._close_retired()
        return admin

    async def _close_retired(self) -> None:
        while self._retired:
            await self._retired.pop().aclose()

    async def provision(
        self, spec: DeploymentSpec, trainer: TrainerRef, known: DeploymentRef | None
    ) -> DeploymentRef:
        """Attach (``base_url``) or start the server. A launched server dies with the process that
        started it, so a resumed run (``known`` set) starts a fresh one; its weights are then the
        initial ones, which the next read-back reports."""
        url = self.base_url
        if self.launch is not None:
            if self._server is None or self._server.proc is None or self._server.proc.returncode is not None:
                self._server = VllmServer(self.launch, self.work_dir / "vllm.log", api_key=self._api_key)
                url = await self._server.start(self.start_timeout_s)
            else:
                url = self._server.base_url
        assert url is not None
        self.base_url = url
        attrs = {"base_url": url, "launched": "1" if self.launch is not None else "0"}
        if self.served_model_name:
            attrs["model"] = self.served_model_name
        return DeploymentRef(self.kind, spec.resource_id, attrs)

    async def wait_ready(self, ref: DeploymentRef, *, timeout_s: float) -> DeploymentRef:
        """Until vLLM answers with its engine up, the served model listed and the dev endpoints on;
        learns its version (per-completion weight versions from 0.33) and, with ``warmup``, runs one
        token through it (vLLM's first forward pass on CPU takes seconds; better here than in a rollout)."""
        admin = await self._admin_async(ref)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not await admin.health():
            if loop.time() >= deadline:
                raise StuckError(f"vLLM at {admin.base_url}: /health not 200 within {timeout_s:g} s")
            await asyncio.sleep(0.5)
        cards = await admin.models()
        names = [str(c.get("id")) for c in cards if c.get("parent") is None]
        model = self.served_model_name or (names[0] if names else None)
        if model is None or model not in names:
            raise ConfigError(
                f"deployment.served_model_name: vLLM at {admin.base_url} serves {names}, not {model!r}"
            )
        self.served_model_name = model
        if self.model_dir is None:
            root = next((c.get("root") for c in cards if c.get("id") == model), None)
            if isinstance(root, str) and await asyncio.to_thread(Path(root).is_dir):
                self.model_dir = Path(root)  # the launch directory, readable here: same machine
        try:
            await admin.weight_version()
        except VllmAdminError as exc:
            raise ConfigError(
                f"deployment: vLLM at {admin.base_url} has no weight endpoints ({exc}); start it with"
                " VLLM_SERVER_DEV_MODE=1"
            ) from exc
        self.vllm_version = await admin.version()
        self.per_completion_identity = parse_version(self.vllm_version) >= WEIGHT_VERSIONS_SINCE
        self.hotload_policy = "keep" if self.per_completion_identity else "drain"
        await self._load_materializer()
        if self.warmup:
            await self._warm(admin, model)
        _log.info("vllm ready", url=admin.base_url, model=model, version=self.vllm_version)
        return DeploymentRef(
            ref.kind, ref.resource_id, {**ref.attrs, "model": model, "vllm_version": self.vllm_version}
        )

    async def _warm(self, admin: VllmAdminClient, model: str) -> None:
        body = {"model": model, "prompt": [0], "max_tokens": 1, "temperature": 0.0}
        try:
            await admin.request(
                "POST", "/v1/completions", body=body, timeout_s=max(60.0, self.request_timeout_s)
            )
        except (VllmUnavailableError, VllmAdminError) as exc:
            _log.warning("vllm warm-up completion failed", error=str(exc))

    def _read_layout(self) -> Layout | None:
        if self.model_dir is None:
            return None
        try:
            return read_layout(self.model_dir)
        except (SnapshotError, OSError, ValueError) as exc:
            _log.warning("served layout unreadable; snapshots are not checked against it", error=str(exc))
            return None

    async def _load_materializer(self) -> None:
        # The layout is read from disk (safetensors headers): off the event loop, once, at wait_ready.
        if self._materializer is None:
            layout = await asyncio.to_thread(self._read_layout)
            if self._materializer is None:
                self._materializer = WeightsMaterializer(self.work_dir / "weights", layout=layout)

    def materializer(self) -> WeightsMaterializer:
        """One per deployment: it keeps the last materialized state for the next delta. Built by
        ``wait_ready``; read here (blocking) only if asked for before it."""
        if self._materializer is None:
            self._materializer = WeightsMaterializer(self.work_dir / "weights", layout=self._read_layout())
        return self._materializer

    def hot_loader(
        self, ref: DeploymentRef, store: SnapshotStore | None, *, timeout_s: float, poll_interval_s: float
    ) -> VllmHotLoader:
        return VllmHotLoader(
            self._admin_for(ref),
            self.materializer(),
            store,
            initial_weights_dir=self.model_dir,
            pause_mode=self.pause_mode,
            drain_timeout_s=self.drain_timeout_s,
            reload_timeout_s=timeout_s,
            timeout_s=timeout_s,
            poll_interval_s=poll_interval_s,
        )

    def sampler(
        self,
        ref: DeploymentRef,
        *,
        tokenizer: Any,
        controller: ConcurrencyController,
        retry_policy: SamplingRetryPolicy,
    ) -> DeploymentSampler:
        from engine.sampling.sampler import DeploymentSampler

        url = ref.attrs.get("base_url") or self.base_url
        model = ref.attrs.get("model") or self.served_model_name
        if not url or not model:
            raise ConfigError("deployment: sampler asked for before provision/wait_ready named the server")
        return DeploymentSampler(
            inference_url=url,
            model=model,
            api_key=self._api_key or "",
            tokenizer=tokenizer,
            concurrency_controller=controller,
            retry_policy=retry_policy,
            dialect=VllmDialect(weight_versions=self.per_completion_identity),
        )

    async def release(self, ref: DeploymentRef, *, delete: bool) -> None:
        """A server hotloop started is stopped (it is the run's); an attached one is left running."""
        if self._server is not None:
            await self._server.stop()
            self._server = None

    async def health(self, ref: DeploymentRef) -> Health:
        """A launched server: its process first (a dead one is ``failed``, with its exit and log);
        then ``/health`` (an attached server that does not answer is ``unreachable``)."""
        server = self._server
        if self.launch is not None and server is not None and server.proc is not None:
            code = server.proc.returncode
            if code is not None:
                lines = [line.strip() for line in server.log_tail(800).splitlines() if line.strip()]
                tail = " | ".join(lines[-3:])
                return Health(
                    "failed",
                    f"the vLLM server hotloop launched (pid {server.proc.pid}) {describe_exit(code)}"
                    + (f"; its log ends: {tail}" if tail else ""),
                )
        admin = await self._admin_async(ref)
        if await admin.health():
            return Health("ok", f"vLLM at {admin.base_url} answers /health")
        return Health("unreachable", f"vLLM at {admin.base_url} does not answer /health with 200")

    async def recover(self, ref: DeploymentRef, trainer: TrainerRef, *, timeout_s: float) -> DeploymentRef:
        """Relaunch a launched server that died (its weights are then the initial ones); wait for an
        attached one to answer again."""
        attrs = dict(ref.attrs)
        if self.launch is not None:
            if self._server is not None:
                await self._server.stop()
            if self._admin is not None:
                await self._admin.aclose()  # the relaunched server may listen on another port
                self._admin = None
            self._server = VllmServer(self.launch, self.work_dir / "vllm.log", api_key=self._api_key)
            attrs["base_url"] = self.base_url = await self._server.start(min(timeout_s, self.start_timeout_s))
        return await self.wait_ready(DeploymentRef(ref.kind, ref.resource_id, attrs), timeout_s=timeout_s)

    async def aclose(self) -> None:
        await self._close_retired()
        if self._admin is not None:
            await self._admin.aclose()
            self._admin = None
        if self._server is not None:
            await self._server.stop()
            self._server = None
