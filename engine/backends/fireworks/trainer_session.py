"""``FireworksTrainingSession``: hotloop's own client of a Fireworks trainer, in Fireworks' JSON
dialect (engine.backends.fireworks.trainer_wire), satisfying engine.backends.base.TrainerSession.

Why hotloop's own client and not ``fireworks-ai``'s ``FiretitanTrainingClient`` wrapped: that client
runs its own event-loop thread with sync ``.result()`` calls and a second retry owner, and its
``training-sdk`` extra pins ``pydantic<2.13`` and ``pyqwest==0.10.0`` exactly, which a run should not
inherit. The wire it speaks is small (a handful of JSON bodies over tinker's future protocol) and is
held to the SDK's, request by request, by a contract test; this client is native asyncio, every
await bounded, errors typed.

Ordering is the protocol's: every training call takes the next request id at call time
(``seq_id = id + 1``) and is sent only after every earlier one was accepted, so calls made back to
back pipeline on the trainer in call order. A custom loss takes two ids at once (its forward and its
backward), so an ``optim_step`` called before it finished still follows its backward. A call whose
submission fails poisons the session, as in Fireworks' client: the trainer's sequence can no longer
be known.

Snapshot names are session-qualified as Fireworks does (``f"{name}-{tag}"``, an 8-hex tag per
session). Fireworks' trainer writes a delta against the snapshot it saved last, so a delta asked
against any other parent is saved as a base instead; a delta's encoding is what the trainer names
in its answer, else Fireworks' (``arc_v2``/``alder32``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, TypeVar

from tinker import types

from engine.backends.base import CheckpointType, SamplerSnapshot
from engine.backends.fireworks import trainer_wire as wire
from engine.backends.fireworks.trainer_futures import TrainerRest, heartbeat, log, trainer_rest
from engine.errors import ConfigError, FatalError, StuckError
from engine.weights.names import session_qualified
from engine.weights.names import session_tag as session_tag_checked

T = TypeVar("T")
TokenizerLoader = Callable[[str], Any]
HEARTBEAT_S = 10.0
DEFAULT_OP_TIMEOUT_S = 900.0
DEFAULT_CONNECT_TIMEOUT_S = 300.0
POST_TIMEOUT_S = 60.0


class FireworksTrainingSession:
    """A connected training client in Fireworks' dialect. Build it with ``connect``."""

    def __init__(
        self,
        rest: TrainerRest,
        session_id: str,
        *,
        base_model: str,
        lora_rank: int,
        tag: str,
        op_timeout_s: float,
    ) -> None:
        self._rest = rest
        self.session_id = session_id
        self.base_model = base_model
        self._lora_rank = lora_rank
        self.session_tag = tag
        self.op_timeout_s = op_timeout_s
        self._model_id = ""
        self._tokenizer: Any = None
        self._tokenizer_error: str | None = None
        self.resumed_steps = 0
        self._local_steps = 0
        self._last_saved: str | None = None
        self._next_id = 0
        self._turn = 0
        self._advanced = asyncio.Event()
        self._failed: str | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._heartbeat: asyncio.Task[None] | None = None
        self.heartbeat_s = HEARTBEAT_S
        self._closed = False

    # ---- construction -------------------------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        base_url: str,
        api_key: str,
        base_model: str,
        lora_rank: int = 0,
        *,
        restore_path: str | None = None,
        optimizer_steps: int = 0,
        session_tag: str | None = None,
        tokenizer_loader: TokenizerLoader | None = None,
        timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        op_timeout_s: float = DEFAULT_OP_TIMEOUT_S,
    ) -> FireworksTrainingSession:
        """``create_session`` + ``create_model`` (``lora_rank`` 0 = full-parameter, matching the job);
        with ``restore_path``, then ``load_weights`` of that ``save_state`` path with its optimizer,
        the step count continuing from ``optimizer_steps`` (what the caller's journal committed)."""
        if not isinstance(lora_rank, int) or lora_rank < 0:
            raise ConfigError(f"lora_rank: must be an integer >= 0, got {lora_rank!r}")
        if not base_model:
            raise ConfigError("base_model: empty")
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"base_url: must be an http(s) URL, got {base_url!r}")
        tag = session_tag_checked(session_tag)
        rest = trainer_rest(base_url.rstrip("/"), api_key)
        session: FireworksTrainingSession | None = None
        try:
            async with asyncio.timeout(timeout_s):
                tags = os.environ.get("TINKER_TAGS")
                created = await rest.post(
                    "/api/v1/create_session",
                    {
                        "tags": sorted(set(tags.split(","))) if tags else [],
                        "user_metadata": {},
                        "sdk_version": wire.PROTOCOL_VERSION,
                        "type": "create_session",
                    },
                    "create_session",
                    timeout_s=POST_TIMEOUT_S,
                )
                session = cls(
                    rest,
                    str(created["session_id"]),
                    base_model=base_model,
                    lora_rank=lora_rank,
                    tag=tag,
                    op_timeout_s=op_timeout_s,
                )
                session._heartbeat = asyncio.create_task(session._beat())
                await session._create_model(timeout_s)
                if restore_path is not None:
                    await session._load(restore_path)
                    session.resumed_steps = int(optimizer_steps)
                session._tokenizer, session._tokenizer_error = await asyncio.to_thread(
                    _load_tokenizer, tokenizer_loader, base_model
                )
        except BaseException as exc:
            if session is not None:
                await session.close(unload=False)
            else:
                await rest.aclose()
            if isinstance(exc, TimeoutError):
                raise StuckError(f"connect to trainer {base_url}: no model within {timeout_s:g}s") from exc
            raise
        log.info("training session connected", model_id=session.model_id, lora_rank=lora_rank, tag=tag)
        return session

    async def _create_model(self, timeout_s: float) -> None:
        body = wire.create_model_body(self.session_id, self.base_model, self._lora_rank)
        answer = await self._rest.post("/api/v1/create_model", body, "create_model", timeout_s=POST_TIMEOUT_S)
        deadline = asyncio.get_running_loop().time() + timeout_s
        result = await self._rest.result(str(answer["request_id"]), "CreateModel", "create_model", deadline)
        self._model_id = str(result["model_id"])

    async def _load(self, path: str) -> None:
        body = {"model_id": self._model_id, "path": path, "optimizer": True, "type": "load_weights"}
        await self._submit(self._reserve(), "/api/v1/load_weights", body, "load_weights", "LoadWeights")

    # ---- properties -----------------------------------------------------------------------------

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def default_delta_format(self) -> tuple[str, str]:
        """How this trainer's deltas are encoded when a save's answer does not say: Fireworks'."""
        return wire.FIREWORKS_DELTA_FORMAT

    @property
    def lora_rank(self) -> int:
        return self._lora_rank

    @property
    def optimizer_steps(self) -> int:
        """The restored state's count, then each ``optim_step``'s ``optimizer_step:max`` (hotloop's
        trainer reports it), else one more per completed ``optim_step``."""
        return self.resumed_steps + self._local_steps

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            raise ConfigError(f"tokenizer for {self.base_model!r} unavailable: {self._tokenizer_error}")
        return self._tokenizer

    def qualify(self, name: str) -> str:
        return session_qualified(name, self.session_tag)

    # ---- ordering ---------------------------------------------------------------------------------

    def _reserve(self, n: int = 1) -> int:
        if self._failed is not None:
            raise FatalError(f"training session {self._model_id} is poisoned: {self._failed}")
        if self._closed:
            raise FatalError(f"training session {self._model_id} is closed")
        rid, self._next_id = self._next_id, self._next_id + n
        return rid

    def _advance(self, rid: int) -> None:
        """Turn ``rid`` is over (sent, or given up): wake the calls waiting for theirs."""
        self._turn = max(self._turn, rid + 1)
        woken, self._advanced = self._advanced, asyncio.Event()
        woken.set()

    def _poison(self, reason: str) -> None:
        if self._failed is None:
            self._failed = reason
            log.warning("training session poisoned", model_id=self._model_id, reason=reason)
        self._advance(self._turn)  # waiters see the failure at once

    async def _submit(self, rid: int, path: str, body: dict[str, Any], what: str, request_type: str) -> Any:
        """Send in turn ``rid`` (``seq_id = rid + 1``), then await the result (bounded). A call that
        is not accepted leaves a hole in the trainer's sequence: the session is poisoned."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.op_timeout_s
        try:
            async with asyncio.timeout(self.op_timeout_s):
                while self._turn < rid and self._failed is None:
                    await self._advanced.wait()
                if self._failed is not None:
                    raise FatalError(f"{what}: training session is poisoned: {self._failed}")
                answer = await self._rest.post(
                    path, {**body, "seq_id": rid + 1}, what, timeout_s=POST_TIMEOUT_S
                )
        except BaseException as exc:
            self._poison(f"{what} (seq_id {rid + 1}) was not accepted: {exc!r}")
            if isinstance(exc, TimeoutError):
                raise StuckError(f"{what}: not accepted within {self.op_timeout_s:g}s") from exc
            raise
        self._advance(rid)
        return await self._rest.result(str(answer["request_id"]), request_type, what, deadline)

    def _spawn(self, coro: Coroutine[Any, Any, T]) -> Coroutine[Any, Any, T]:
        """Run ``coro`` now (submitted at call time); the caller awaits the returned coroutine."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

        async def wait() -> T:
            return await task

        return wait()

    # ---- training -----------------------------------------------------------------------------------

    def forward(
        self, data: Sequence[types.Datum], loss_fn: str = "cross_entropy"
    ) -> Coroutine[Any, Any, types.ForwardBackwardOutput]:
        body = wire.forward_body(self._model_id, data, loss_fn, None, backward=False)
        return self._spawn(self._forward(self._reserve(), body, "forward", backward=False))

    def forward_backward(
        self,
        data: Sequence[types.Datum],
        loss_fn: str,
        loss_fn_config: Mapping[str, float | str] | None = None,
    ) -> Coroutine[Any, Any, types.ForwardBackwardOutput]:
        body = wire.forward_body(self._model_id, data, loss_fn, loss_fn_config, backward=True)

        async def run(rid: int) -> types.ForwardBackwardOutput:
            out = await self._forward(rid, body, "forward_backward", backward=True)
            if loss_fn == "cross_entropy":  # Fireworks' client adds this metric itself
                out.metrics.setdefault("response_tokens", wire.response_tokens(data))
            return out

        return self._spawn(run(self._reserve()))

    async def _forward(
        self, rid: int, body: dict[str, Any], what: str, *, backward: bool
    ) -> types.ForwardBackwardOutput:
        path, kind = (
            ("/api/v1/forward_backward", "ForwardBackward") if backward else ("/api/v1/forward", "Forward")
        )
        result = await self._submit(rid, path, body, what, kind)
        return (
            result if isinstance(result, types.ForwardBackwardOutput) else wire.forward_output(result, what)
        )

    def forward_backward_custom(self, data: Sequence[types.Datum], fn: Any) -> Coroutine[Any, Any, Any]:
        """Fireworks' custom loss: a cross-entropy forward for the logprobs, ``fn(data, logprobs)``
        with local autograd (in a worker thread, not on the loop), then a cross-entropy backward whose
        weights are ``-d loss / d logprobs``; the backward's metrics gain ``fn``'s."""
        wire.check_custom_data(data)
        fwd_body = wire.forward_body(
            self._model_id, wire.custom_forward_data(data), "cross_entropy", None, backward=False
        )
        rid = self._reserve(2)

        async def run() -> types.ForwardBackwardOutput:
            try:
                fwd = await self._forward(rid, fwd_body, "forward_backward_custom (forward)", backward=False)
                linear, metrics = await asyncio.to_thread(wire.linearize, data, fn, fwd)
                body = wire.forward_body(self._model_id, linear, "cross_entropy", None, backward=True)
            except BaseException as exc:
                # The backward's seq_id was taken at call time and will never be sent.
                self._poison(f"forward_backward_custom failed before its backward: {exc!r}")
                raise
            out = await self._forward(rid + 1, body, "forward_backward_custom (backward)", backward=True)
            out.metrics.setdefault("response_tokens", wire.response_tokens(linear))
            out.metrics.update(metrics)
            return out

        return self._spawn(run())

    def optim_step(self, adam_params: types.AdamParams) -> Coroutine[Any, Any, types.OptimStepResponse]:
        body = {"adam_params": wire.adam_json(adam_params), "model_id": self._model_id, "type": "optim_step"}
        rid = self._reserve()

        async def run() -> types.OptimStepResponse:
            result = await self._submit(rid, "/api/v1/optim_step", body, "optim_step", "OptimStep")
            metrics = {k: float(v) for k, v in (result.get("metrics") or {}).items()}
            reported = metrics.get("optimizer_step:max")
            self._local_steps = (
                int(reported) - self.resumed_steps if reported is not None else self._local_steps + 1
            )
            return types.OptimStepResponse(metrics=metrics)

        return self._spawn(run())

    def save_state(self, name: str) -> Coroutine[Any, Any, str]:
        """Weights + optimizer (Fireworks' DCP checkpoint); returns the path the trainer answers,
        which ``connect(restore_path=...)`` loads."""
        body = {"model_id": self._model_id, "path": name, "overwrite": False, "type": "save_weights"}
        rid = self._reserve()

        async def run() -> str:
            result = await self._submit(
                rid, "/api/v1/save_weights", body, f"save_state {name!r}", "SaveWeights"
            )
            return str(result.get("path") or name)

        return self._spawn(run())

    def save_weights_for_sampler(
        self, name: str, checkpoint_type: CheckpointType = "base", parent_snapshot_identity: str | None = None
    ) -> Coroutine[Any, Any, SamplerSnapshot]:
        if checkpoint_type not in ("base", "delta"):
            raise ConfigError(f"checkpoint_type: must be 'base' or 'delta', got {checkpoint_type!r}")
        identity = self.qualify(name)
        kind: CheckpointType = checkpoint_type
        if kind == "delta" and (
            self._last_saved is None or parent_snapshot_identity not in (None, self._last_saved)
        ):
            kind = "base"  # the trainer can only diff against the snapshot it saved last
        body = {"model_id": self._model_id, "path": identity, "type": "save_weights_for_sampler"}
        body["checkpoint_type"] = kind
        rid = self._reserve()
        parent = self._last_saved if kind == "delta" else None
        self._last_saved = identity

        async def run() -> SamplerSnapshot:
            what = f"save_weights_for_sampler {identity!r}"
            r = await self._submit(
                rid, "/api/v1/save_weights_for_sampler", body, what, "SaveWeightsForSampler"
            )
            snap = wire.sampler_snapshot(r, identity, kind, parent, what)
            log.info("sampler snapshot saved", identity=identity, kind=snap.checkpoint_type)
            return snap

        return self._spawn(run())

    # ---- lifecycle ----------------------------------------------------------------------------------

    async def _beat(self) -> None:
        await heartbeat(self._rest, self.session_id, lambda: self.heartbeat_s)

    async def close(self, *, unload: bool = True, timeout_s: float = 30.0) -> None:
        """Finish accepted work, ``unload_model`` (frees the model on the trainer), stop heartbeats.
        Idempotent and best effort: the trainer also ends idle sessions."""
        if self._closed:
            return
        self._closed = True
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        try:
            async with asyncio.timeout(timeout_s):
                if self._tasks:
                    await asyncio.gather(*self._tasks, return_exceptions=True)
                if unload and self._model_id and self._failed is None:
                    body = {"model_id": self._model_id, "type": "unload_model"}
                    answer = await self._rest.post(
                        "/api/v1/unload_model", body, "unload_model", timeout_s=timeout_s
                    )
                    deadline = asyncio.get_running_loop().time() + timeout_s
                    await self._rest.result(
                        str(answer["request_id"]), "Unload model", "unload_model", deadline
                    )
        except Exception as exc:  # closing is best effort
            log.warning("closing the training session failed", error=str(exc))
        finally:
            await self._rest.aclose()

    async def __aenter__(self) -> FireworksTrainingSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _load_tokenizer(loader: TokenizerLoader | None, base_model: str) -> tuple[Any, str | None]:
    """The caller's tokenizer for the base model (an embedded model's, say); Fireworks' trainer does
    not name one, so without a loader there is none."""
    if loader is None:
        return None, "no tokenizer loader was given (Fireworks' trainer does not serve one)"
    short = base_model.rsplit("/", 1)[-1] if base_model.startswith("accounts/") else base_model
    errors = []
    for name in dict.fromkeys((base_model, short)):
        try:
            return loader(name), None
        except Exception as exc:
            errors.append(f"{name}: {exc}")
    return None, "; ".join(errors)
