"""``TrainingSession``: one tinker training client, usable from inside a running event loop.

The tinker 0.38 client builds its session synchronously (three blocking round trips) on the first
call that needs it, so ``connect``/``from_state`` make that call in a worker thread. Every other
method submits to tinker at call time -- so calls execute on the trainer in the order they were
made, and ``forward_backward`` + ``optim_step`` can be pipelined -- and returns a coroutine that
awaits the result from the caller's loop, bounded by ``op_timeout_s``.

Sampler snapshot names are session-qualified the way Fireworks does it: ``f"{name}-{tag}"`` with an
8-hex tag per session, so two sessions (or a resumed one) never write the same identity. The identity
a deployment loads is the ``snapshot_name`` the trainer answers with: the embedded trainer keeps
snapshots per training run and answers ``<run_id>/<name>-<tag>`` (engine.weights.snapshot).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp
import tinker
from tinker import types

from engine.backends.base import HOTLOOP_DELTA_FORMAT, CheckpointType, SamplerSnapshot
from engine.backends.tinker.edge import (
    await_future,
    create_client,
    map_error,
    save_weights_for_sampler_ext,
    service_client,
    tinker_credentials,
)
from engine.errors import ConfigError, FatalError, RetryableError
from engine.log import get_logger
from engine.weights.names import check_identity, session_qualified
from engine.weights.names import session_tag as session_tag_checked

T = TypeVar("T")
CustomLossFn = Any  # (data: list[Datum], logprobs: list[torch.Tensor]) -> (loss, metrics)
TokenizerLoader = Callable[[str], Any]
"""base model name -> tokenizer; raises when it does not know the name."""

_log = get_logger("engine.backends.tinker")
DEFAULT_CONNECT_TIMEOUT_S = 300.0
DEFAULT_OP_TIMEOUT_S = 900.0


class TrainingSession:
    """A connected tinker training client. Build it with ``connect`` or ``from_state``."""

    def __init__(
        self,
        service: tinker.ServiceClient,
        client: tinker.TrainingClient,
        *,
        base_url: str,
        api_key: str,
        base_model: str,
        lora_rank: int,
        session_tag: str,
        resumed_steps: int,
        tokenizer: Any,
        tokenizer_error: str | None,
        op_timeout_s: float,
    ) -> None:
        self._service = service
        self._client = client
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self.base_model = base_model
        self.lora_rank = lora_rank
        self.session_tag = session_tag
        self.resumed_steps = resumed_steps
        self._local_steps = 0
        self._tokenizer = tokenizer
        self._tokenizer_error = tokenizer_error
        self.op_timeout_s = op_timeout_s
        self._closed = False
        self._http: aiohttp.ClientSession | None = None
        self._log = _log.bind(model_id=client.model_id, session_tag=session_tag)

    # ---- construction -------------------------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        base_url: str,
        api_key: str,
        base_model: str,
        lora_rank: int = 0,
        *,
        session_tag: str | None = None,
        timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        op_timeout_s: float = DEFAULT_OP_TIMEOUT_S,
        tokenizer_loader: TokenizerLoader | None = None,
    ) -> TrainingSession:
        """Create a model on the trainer (``lora_rank`` 0 = full-parameter) and connect to it.

        tinker sends ``lora_config.rank`` as given; rank 0 is how a Fireworks/hotloop trainer is
        asked for full-parameter training, and it must match the trainer job's rank.
        """
        if not isinstance(lora_rank, int) or lora_rank < 0:
            raise ConfigError(f"lora_rank: must be an integer >= 0, got {lora_rank!r}")
        if not base_model:
            raise ConfigError("base_model: empty")
        tag = session_tag_checked(session_tag)
        service = service_client(base_url, api_key)

        def _submit() -> Any:
            # The first call builds tinker's session synchronously: keep it off the caller's loop.
            return service.create_lora_training_client(base_model, rank=lora_rank)

        client = await create_client(service, _submit, timeout_s, f"connect to trainer {base_url}")
        session = await cls._finish(
            service,
            client,
            base_url,
            api_key,
            tag,
            op_timeout_s,
            timeout_s,
            tokenizer_loader,
            base_model,
            lora_rank,
        )
        session.resumed_steps = 0  # a new model has taken no optimizer step
        return session

    @classmethod
    async def from_state(
        cls,
        base_url: str,
        api_key: str,
        state_path: str,
        with_optimizer: bool = True,
        *,
        session_tag: str | None = None,
        timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        op_timeout_s: float = DEFAULT_OP_TIMEOUT_S,
        tokenizer_loader: TokenizerLoader | None = None,
        optimizer_steps: int | None = None,
    ) -> TrainingSession:
        """A new model on the trainer loaded from a ``save_state`` path (``tinker://.../weights/x``).

        With the optimizer, ``optimizer_steps`` continues from the trainer's count: read once from the
        trainer's hotloop extension, else taken from ``optimizer_steps`` (what the caller's journal
        committed for that state).
        """
        if not state_path.startswith("tinker://"):
            raise ConfigError(f"state_path: must be a tinker:// path from save_state, got {state_path!r}")
        tag = session_tag_checked(session_tag)
        service = service_client(base_url, api_key)

        def _submit() -> Any:
            if with_optimizer:
                return service.create_training_client_from_state_with_optimizer(state_path)
            return service.create_training_client_from_state(state_path)

        client = await create_client(service, _submit, timeout_s, f"load state {state_path}")
        session = await cls._finish(
            service, client, base_url, api_key, tag, op_timeout_s, timeout_s, tokenizer_loader
        )
        if with_optimizer:
            try:
                info = await session.trainer_info(timeout_s=min(timeout_s, 60.0))
            except BaseException:
                await session.close()  # the caller never gets the session: stop its heartbeat here
                raise
            reported = info.get("optimizer_steps") if info else None
            session.resumed_steps = int(reported) if reported is not None else int(optimizer_steps or 0)
        return session

    @classmethod
    async def _finish(
        cls,
        service: tinker.ServiceClient,
        client: tinker.TrainingClient,
        base_url: str,
        api_key: str,
        tag: str,
        op_timeout_s: float,
        timeout_s: float,
        tokenizer_loader: TokenizerLoader | None,
        base_model: str | None = None,
        lora_rank: int | None = None,
    ) -> TrainingSession:
        info = client.get_info()  # cached at creation: no I/O
        if base_model is None:
            base_model = info.model_data.model_name or info.model_name or ""
        if lora_rank is None:
            lora_rank = int(info.lora_rank or 0) if info.is_lora is not False else 0
        try:
            tokenizer, error = await asyncio.wait_for(
                asyncio.to_thread(_load_tokenizer, client, tokenizer_loader), timeout_s
            )
        except TimeoutError:
            tokenizer, error = None, f"loading the tokenizer took over {timeout_s:g}s"
        session = cls(
            service,
            client,
            base_url=base_url,
            api_key=api_key,
            base_model=base_model,
            lora_rank=lora_rank,
            session_tag=tag,
            resumed_steps=0,
            tokenizer=tokenizer,
            tokenizer_error=error,
            op_timeout_s=op_timeout_s,
        )
        session._log.info("training session connected", base_model=base_model, lora_rank=lora_rank)
        return session

    # ---- properties ---------------------------------------------------------------------------

    @property
    def model_id(self) -> str:
        return str(self._client.model_id)

    @property
    def optimizer_steps(self) -> int:
        """The trainer's optimizer step count: the restored state's, then each ``optim_step``'s report
        (``optimizer_step:max``, hotloop's trainer), else one more per completed ``optim_step``."""
        return self.resumed_steps + self._local_steps

    @property
    def policy_version(self) -> int:
        """The policy this session trains now: its optimizer step count (``optimizer_steps``)."""
        return self.optimizer_steps

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            raise ConfigError(f"tokenizer for {self.base_model!r} unavailable: {self._tokenizer_error}")
        return self._tokenizer

    @property
    def training_client(self) -> tinker.TrainingClient:
        """The underlying tinker client, for calls this class does not wrap."""
        return self._client

    def qualify(self, name: str) -> str:
        """The session-qualified snapshot identity for ``name``."""
        return session_qualified(name, self.session_tag)

    # ---- training (submitted at call time, awaited by the caller) ----------------------------

    def forward(
        self, data: Sequence[types.Datum], loss_fn: types.LossFnType = "cross_entropy"
    ) -> Coroutine[Any, Any, types.ForwardBackwardOutput]:
        fut = self._client.forward(list(data), loss_fn)
        return await_future(fut, self.op_timeout_s, "forward")

    def forward_backward(
        self,
        data: Sequence[types.Datum],
        loss_fn: types.LossFnType,
        loss_fn_config: Mapping[str, float | str] | None = None,
    ) -> Coroutine[Any, Any, types.ForwardBackwardOutput]:
        fut = self._client.forward_backward(list(data), loss_fn, loss_fn_config)
        return await_future(fut, self.op_timeout_s, "forward_backward")

    def forward_backward_custom(
        self, data: Sequence[types.Datum], fn: CustomLossFn
    ) -> Coroutine[Any, Any, types.ForwardBackwardOutput]:
        # tinker runs ``fn`` (local autograd) on its own custom-loss thread, not on our loop.
        fut = self._client.forward_backward_custom(list(data), fn)
        return await_future(fut, self.op_timeout_s, "forward_backward_custom")

    def optim_step(self, adam_params: types.AdamParams) -> Coroutine[Any, Any, types.OptimStepResponse]:
        fut = self._client.optim_step(adam_params)

        async def _wait() -> types.OptimStepResponse:
            result = await await_future(fut, self.op_timeout_s, "optim_step")
            reported = (result.metrics or {}).get("optimizer_step:max")
            if reported is not None:
                self._local_steps = int(reported) - self.resumed_steps
            else:
                self._local_steps += 1
            return result

        return _wait()

    def save_state(self, name: str) -> Coroutine[Any, Any, str]:
        """Save weights + optimizer; returns the ``tinker://<run>/weights/<name>`` path."""
        fut = self._client.save_state(name)

        async def _wait() -> str:
            result = await await_future(fut, self.op_timeout_s, f"save_state {name!r}")
            return str(result.path)

        return _wait()

    def save_weights_external(self, name: str) -> Coroutine[Any, Any, str]:
        """Export the current weights in Hugging Face format (Tinker's ``save_weights_external``);
        returns the ``tinker://`` path that ``external_weights_urls`` signs download URLs for."""
        fut = self._client.save_weights_external(name)

        async def _wait() -> str:
            result = await await_future(fut, self.op_timeout_s, f"save_weights_external {name!r}")
            return str(result.path)

        return _wait()

    async def external_weights_urls(self, tinker_path: str) -> dict[str, str]:
        """Signed download URL per file of an external weights export (Tinker's REST API)."""
        rest = self._service.create_rest_client()
        result = await await_future(
            rest.get_external_weights_urls(tinker_path),
            self.op_timeout_s,
            f"external_weights_urls {tinker_path!r}",
        )
        return dict(result.urls)

    def save_weights_for_sampler(
        self,
        name: str,
        checkpoint_type: CheckpointType = "base",
        parent_snapshot_identity: str | None = None,
    ) -> Coroutine[Any, Any, SamplerSnapshot]:
        """Write a sampler snapshot named ``f"{name}-{session_tag}"`` into the trainer's bucket."""
        if checkpoint_type not in ("base", "delta"):
            raise ConfigError(f"checkpoint_type: must be 'base' or 'delta', got {checkpoint_type!r}")
        identity = self.qualify(name)
        extra: dict[str, Any] = {"checkpoint_type": checkpoint_type}
        if parent_snapshot_identity is not None:
            extra["parent_snapshot_identity"] = check_identity(parent_snapshot_identity)
        fut = save_weights_for_sampler_ext(self._client, identity, extra)

        async def _wait() -> SamplerSnapshot:
            r = await await_future(fut, self.op_timeout_s, f"save_weights_for_sampler {identity!r}")
            reported = r.checkpoint_type or checkpoint_type
            if reported not in ("base", "delta"):
                raise FatalError(f"save_weights_for_sampler {identity!r}: trainer reported type {reported!r}")
            kind: CheckpointType = "base" if reported == "base" else "delta"
            snap = SamplerSnapshot(
                path=r.path,
                snapshot_name=r.snapshot_name or identity,
                checkpoint_type=kind,
                size_bytes=r.size_bytes,
                parent_snapshot_identity=r.parent_snapshot_identity,
                encode_seconds=r.encode_seconds,
                # The trainer names what it wrote; a tinker-protocol trainer is hotloop's own.
                delta_format=(r.compression_format, r.checksum_format)
                if kind == "delta" and r.compression_format and r.checksum_format
                else HOTLOOP_DELTA_FORMAT,
            )
            self._log.info("sampler snapshot saved", identity=snap.snapshot_name, kind=kind)
            return snap

        return _wait()

    # ---- hotloop trainer extension --------------------------------------------------------------

    async def trainer_info(self, *, timeout_s: float = 30.0) -> dict[str, Any] | None:
        """``GET /api/v1/hotloop/models/{model_id}`` (None when the trainer has no such endpoint)."""
        tinker_key, headers = tinker_credentials(self._api_key)
        url = f"{self.base_url}/api/v1/hotloop/models/{quote(self.model_id, safe='')}"
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession()  # one per session, born on the caller's loop
        try:
            async with (
                asyncio.timeout(timeout_s),
                self._http.get(url, headers={"X-API-Key": tinker_key, **headers}) as resp,
            ):
                if resp.status == 404:
                    return None
                if resp.status >= 400:
                    text = (await resp.text())[:500]
                    err = RetryableError if resp.status >= 500 or resp.status == 429 else FatalError
                    raise err(f"GET {url}: HTTP {resp.status}: {text}")
                data: dict[str, Any] = await resp.json()
                return data
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise map_error(exc, f"GET {url}") from exc

    async def close(self, *, timeout_s: float = 30.0) -> None:
        """Finish the tinker session (idempotent); training state stays on the trainer."""
        if self._closed:
            return
        self._closed = True
        if self._http is not None and not self._http.closed:
            await self._http.close()
        try:
            await await_future(self._service.close("success"), timeout_s, "close session")
        except Exception as exc:  # closing is best effort: the trainer also expires idle sessions
            self._log.warning("closing the tinker session failed", error=str(exc))

    async def __aenter__(self) -> TrainingSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _load_tokenizer(client: tinker.TrainingClient, loader: TokenizerLoader | None) -> tuple[Any, str | None]:
    """The caller's tokenizer for the base model (an embedded model's, say), else tinker's (HF) lookup."""
    name = client.get_info().model_data.model_name or ""
    first_error = ""
    if loader is not None:
        try:
            return loader(name), None
        except Exception as exc:
            first_error = f"{exc}; "
    try:
        return client.get_tokenizer(), None
    except Exception as exc:
        return None, f"{first_error}{exc}"
