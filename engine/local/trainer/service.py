"""The trainer service: sessions, models and their ordered training operations.

Handlers (``app``) call these coroutines on the event loop. Validation that can fail fast runs
here and raises :class:`TrainerBadRequest` (an immediate 4xx); the compute is queued on the model's
worker thread and reported through the future store.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from engine.local.trainer import checkpoints, external, limits, params, provenance
from engine.local.trainer.config import Gone, NotFound, TrainerBadRequest, TrainerConfig
from engine.local.trainer.fireworks_routes import resolve_state
from engine.local.trainer.futures import FutureStore, Outcome
from engine.local.trainer.json_dialect import encode_json_forward
from engine.local.trainer.logs import LazyLogger
from engine.local.trainer.losses import NEEDS_STABILITY_RECORDS, get_loss
from engine.local.trainer.metadata import parse_user_metadata, read_run_record, write_run_record
from engine.local.trainer.models import LoraSpec, ModelState, build_module, check_tokens
from engine.local.trainer.ordering import OrderedQueue, run_guarded
from engine.local.trainer.proto import FwdBwdRequest, decode_forward_backward, encode_forward_backward
from engine.local.trainer.sampler_service import SampledModel, SamplerService
from engine.local.trainer.snapshots import save_for_sampler

log = LazyLogger("trainer.service")


@dataclass
class Session:
    session_id: str
    created: float = field(default_factory=time.time)
    last_heartbeat: float = field(default_factory=time.time)
    finished: str | None = None


@dataclass
class ModelEntry:
    model_id: str
    session_id: str
    queue: OrderedQueue
    executor: ThreadPoolExecutor
    lora: LoraSpec
    state: ModelState | None = None  # set on the worker thread once created
    created: float = field(default_factory=time.time)
    # The base model name the client created it with (the served model or one of its aliases).
    base_model_name: str = ""
    user_metadata: dict[str, str] | None = None

    def require_state(self) -> ModelState:
        if self.state is None:
            raise TrainerBadRequest(f"model {self.model_id} failed to initialize")
        return self.state


class LoadSource(NamedTuple):
    """The checkpoint a ``load_weights`` names, looked up off the event loop."""

    path: checkpoints.TinkerPath
    target: Path
    meta: dict[str, Any] | None  # a create-via-load's meta.json; None when absent or not read


class TrainerService:
    def __init__(self, config: TrainerConfig, base: Any, base_path: Path, tokenizer: Any) -> None:
        self.config = config
        self.base = base
        self.base_path = base_path
        self.tokenizer = tokenizer
        self.vocab_size = int(base.config.vocab_size)
        self.max_length = int(base.config.max_position_embeddings)
        self.eos_id = int(tokenizer.eos_token_id) if tokenizer.eos_token_id is not None else 2
        # Left padding of batched sampling (masked out, so any id works; the tokenizer's if it has one).
        self.pad_id = int(tokenizer.pad_token_id) if tokenizer.pad_token_id is not None else 0
        self.store = FutureStore(config.future_ttl_s, config.delivered_grace_s)
        self.sessions: dict[str, Session] = {}
        self.models: dict[str, ModelEntry] = {}
        self.sampler = SamplerService(
            base,
            tokenizer,
            SampledModel(config.model, self.vocab_size, self.max_length, self.eos_id, self.pad_id),
            config.bucket,
            self.store,
            session_id_of=lambda session_id: self.session(session_id).session_id,
            check_base_model=self.check_base_model,
            background=self.background,
            batch_rows=config.sample_batch_rows,
        )
        self.state_dir = config.resolved_state_dir
        self._tasks: set[asyncio.Task[None]] = set()

    def background(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` on the loop, holding a reference so it is not collected mid-flight."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- identity ---------------------------------------------------------------------------------

    def model_names(self) -> set[str]:
        # Fireworks users' scripts name base models by resource name (accounts/fireworks/models/<m>).
        fireworks_name = f"accounts/fireworks/models/{self.config.model}"
        return {
            self.config.model,
            str(self.base_path),
            self.base_path.name,
            fireworks_name,
            *self.config.aliases,
        }

    def check_base_model(self, name: Any, field_name: str = "base_model") -> str:
        if name not in self.model_names():
            raise TrainerBadRequest(
                f"{field_name} {name!r} is not served here; this trainer serves {self.config.model!r}"
            )
        return self.config.model

    def session(self, session_id: Any) -> Session:
        s = self.sessions.get(session_id) if isinstance(session_id, str) else None
        if s is None:
            raise NotFound(f"unknown session_id {session_id!r}")
        if s.finished is not None:
            raise Gone(f"session {session_id} is finished ({s.finished})")
        return s

    def entry(self, model_id: Any) -> ModelEntry:
        e = self.models.get(model_id) if isinstance(model_id, str) else None
        if e is None:
            raise NotFound(f"unknown model_id {model_id!r}")
        return e

    # --- sessions ---------------------------------------------------------------------------------

    def create_session(self, body: dict[str, Any]) -> dict[str, Any]:
        sid = str(uuid.uuid4())
        self.sessions[sid] = Session(sid)
        log.info("session_created", session_id=sid, tags=body.get("tags"))
        return {"type": "create_session", "session_id": sid}

    def heartbeat(self, body: dict[str, Any]) -> dict[str, Any]:
        self.session(body.get("session_id")).last_heartbeat = time.time()
        return {"type": "session_heartbeat"}

    def finish(self, session_id: str, body: dict[str, Any]) -> dict[str, Any]:
        s = self.sessions.get(session_id)
        if s is None:
            raise NotFound(f"unknown session_id {session_id!r}")
        reason = body.get("reason")
        if s.finished is None:  # first reason wins
            s.finished = str(reason.get("type") if isinstance(reason, dict) else reason or "success")
            log.info("session_finished", session_id=session_id, reason=s.finished)
            self.background(self._release(session_id))
        return {}

    async def _release(self, session_id: str) -> None:
        """Free a finished session's models (weights, Adam moments, threads) once their queued work
        is done, and its sampling sessions. Futures already issued stay retrievable."""
        for entry in [e for e in self.models.values() if e.session_id == session_id]:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(600):
                    await entry.queue.wait_idle()
            await entry.queue.close(f"session {session_id} is finished")
            self.models.pop(entry.model_id, None)
            entry.executor.shutdown(wait=False)
        self.sampler.drop_session(session_id)

    # --- models -----------------------------------------------------------------------------------

    def _new_entry(self, session_id: str, model_seq_id: Any, lora: LoraSpec) -> ModelEntry:
        limits.check_seq_id(model_seq_id, "model_seq_id")
        model_id = f"{session_id}:train:{model_seq_id}"
        if model_id in self.models:
            raise TrainerBadRequest(f"model {model_id} already exists (model_seq_id {model_seq_id} was used)")
        executor = ThreadPoolExecutor(1, thread_name_prefix=f"model-{model_seq_id}")
        queue = OrderedQueue(model_id, self.store, executor, self.config.seq_gap_timeout_s)
        entry = ModelEntry(model_id, session_id, queue, executor, lora)
        self.models[model_id] = entry
        return entry

    def _spawn(self, entry: ModelEntry, kind: str, fn: Callable[[], Outcome]) -> str:
        """Run ``fn`` on the model's thread outside the seq order (model creation is seq 0)."""
        rid = self.store.create(kind)

        async def run() -> None:
            outcome = await asyncio.get_running_loop().run_in_executor(entry.executor, fn)
            self.store.resolve(rid, outcome)

        self.background(run())
        return rid

    def _build(self, entry: ModelEntry, base_model: str, lora: LoraSpec) -> ModelState:
        state = ModelState(
            model_id=entry.model_id,
            base_model=base_model,
            lora=lora,
            module=build_module(self.base, lora),
            vocab_size=self.vocab_size,
            max_length=self.max_length,
            microbatch_bytes=self.config.microbatch_mb << 20,
        )
        entry.state = state
        return state

    def _record_run(self, entry: ModelEntry) -> None:
        """Blocking (model thread): the run record that outlives the model (see ``metadata``)."""
        write_run_record(
            self.state_dir / entry.model_id,
            entry.model_id,
            entry.base_model_name,
            entry.lora.rank,
            entry.user_metadata,
        )

    def create_model(self, body: dict[str, Any]) -> dict[str, Any]:
        session = self.session(body.get("session_id"))
        base_model = self.check_base_model(body.get("base_model"))
        lora = params.lora_spec(body)
        params.optimizer_config(body)
        user_metadata = parse_user_metadata(body)
        entry = self._new_entry(session.session_id, body.get("model_seq_id"), lora)
        entry.base_model_name, entry.user_metadata = str(body.get("base_model")), user_metadata

        def build() -> Outcome:
            self._build(entry, base_model, lora)
            self._record_run(entry)
            log.info("model_created", model_id=entry.model_id, lora_rank=lora.rank)
            return Outcome(json={"type": "create_model", "model_id": entry.model_id})

        rid = self._spawn(entry, "create_model", run_guarded(build, "create_model"))
        return {"request_id": rid, "model_id": entry.model_id}

    def get_info(self, body: dict[str, Any]) -> dict[str, Any]:
        entry = self.entry(body.get("model_id"))
        rank = entry.lora.rank
        return {
            "type": "get_info",
            "model_id": entry.model_id,
            "model_data": {
                "arch": str(self.base.config.model_type),
                "model_name": entry.base_model_name or self.config.model,
                "tokenizer_id": str(self.base_path),
            },
            "is_lora": rank > 0,
            "lora_rank": rank if rank > 0 else None,
            "model_name": entry.base_model_name or self.config.model,
            "optimizer_config": {"type": "adamw"},
        }

    def hotloop_model(self, model_id: str) -> dict[str, Any]:
        entry = self.entry(model_id)
        state = entry.state
        return {
            "model_id": entry.model_id,
            "base_model": self.config.model,
            "lora_rank": entry.lora.rank,
            "optimizer_steps": state.optimizer_steps if state else 0,
            "last_sampler_snapshot": state.last_snapshot_id if state else None,
        }

    def _ordered(
        self, body: dict[str, Any], kind: str, fn: Callable[[ModelState], Outcome]
    ) -> dict[str, Any]:
        entry = self.entry(body.get("model_id"))
        seq_id = params.field(body, "seq_id", int, required=False)
        if seq_id is not None:
            limits.check_seq_id(seq_id)
        rid = self.store.create(kind)
        entry.queue.submit(seq_id, rid, run_guarded(lambda: fn(entry.require_state()), kind), kind)
        return {"request_id": rid, "model_id": entry.model_id}

    def forward_backward(self, body: bytes | FwdBwdRequest) -> dict[str, Any]:
        """``body``: protobuf bytes, or already decoded from either dialect (the app decodes off the
        loop: a large batch takes a noticeable fraction of a second to parse)."""
        req = body if isinstance(body, FwdBwdRequest) else decode_forward_backward(body)
        entry = self.entry(req.model_id)
        get_loss(req.loss_fn)
        # Token ranges are the base model's, the same for every model of this trainer.
        check_tokens(req.data, self.vocab_size, self.max_length)
        if req.loss_fn in NEEDS_STABILITY_RECORDS:
            # Fails fast (a 400 naming the datum) on a span the records do not back.
            recorded = provenance.resolve(req.data, self.sampler.records, entry.session_id, req.loss_fn)
            for d, extra in zip(req.data, recorded, strict=True):
                d.inputs.update(extra)
        kind = "forward" if req.forward_only else "forward_backward"

        def run(state: ModelState) -> Outcome:
            outputs, metrics = state.forward_backward(
                req.data, req.loss_fn, req.loss_fn_config, req.forward_only
            )
            if req.dialect == "json":  # answered in the dialect it was asked in
                return Outcome(json=encode_json_forward(outputs, metrics))
            return Outcome(proto=encode_forward_backward(outputs, metrics))

        rid = self.store.create(kind)
        entry.queue.submit(req.seq_id, rid, run_guarded(lambda: run(entry.require_state()), kind), kind)
        return {"request_id": rid, "model_id": entry.model_id}

    def optim_step(self, body: dict[str, Any]) -> dict[str, Any]:
        hp = params.adam_hyper(body)
        return self._ordered(
            body, "optim_step", lambda s: Outcome(json={"type": "optim_step", "metrics": s.optim_step(hp)})
        )

    def save_weights(self, body: dict[str, Any]) -> dict[str, Any]:
        name = checkpoints.safe_name(params.field(body, "path", str))
        overwrite = bool(body.get("overwrite", False))
        model_id = self.entry(body.get("model_id")).model_id
        target = checkpoints.state_path(self.state_dir, model_id, name)
        user_metadata = parse_user_metadata(body)

        def run(state: ModelState) -> Outcome:
            meta = {**state.meta(), "user_metadata": user_metadata}
            size = checkpoints.save_state(target, state.trainable(), state.optimizer, meta, overwrite)
            log.info("state_saved", model_id=model_id, name=name, size_bytes=size)
            return Outcome(json={"type": "save_weights", "path": f"tinker://{model_id}/weights/{name}"})

        return self._ordered(body, "save_weights", run)

    def resolve_load(self, body: dict[str, Any]) -> LoadSource:
        """Blocking (a bare name globs the state dir; a create-via-load reads meta.json): the app
        calls it on a worker thread, then ``load_weights`` with its answer."""
        # Fireworks' client names checkpoints (it refuses URIs): the latest one of that name here.
        tp, target = resolve_state(self.state_dir, body.get("path"))
        meta = None
        if body.get("model_id") is None and (target / "meta.json").exists():
            meta = checkpoints.read_meta(target)
        return LoadSource(tp, target, meta)

    def load_weights(self, body: dict[str, Any], source: LoadSource | None = None) -> dict[str, Any]:
        tp, target, meta = source if source is not None else self.resolve_load(body)
        with_opt = bool(body.get("optimizer", False))
        if body.get("model_id") is not None:  # legacy form: an ordered op on an existing model
            # Existence is checked when it runs: a save queued just before it may write it.

            def load_into(state: ModelState) -> Outcome:
                state.load(checkpoints.read_state(target, with_opt), with_opt)
                return Outcome(json={"type": "load_weights", "path": str(tp), "model_id": state.model_id})

            return self._ordered(body, "load_weights", load_into)
        session = self.session(body.get("session_id"))
        if body.get("base_model") is not None:
            self.check_base_model(body.get("base_model"))
        if not with_opt:
            params.optimizer_config(body)
        user_metadata = parse_user_metadata(body)
        if meta is None:
            raise NotFound(f"checkpoint {tp} not found under {self.state_dir}")
        try:
            lora = LoraSpec(**meta.get("lora", {"rank": 0}))
        except TypeError as exc:
            raise TrainerBadRequest(
                f"checkpoint {tp}: unreadable lora settings in meta.json ({exc})"
            ) from exc
        entry = self._new_entry(session.session_id, body.get("model_seq_id"), lora)
        entry.user_metadata = user_metadata

        def create_and_load() -> Outcome:
            # The loaded run's name for the base model carries over (an alias stays the alias).
            source = read_run_record(self.state_dir / tp.run_id) or {}
            entry.base_model_name = str(
                body.get("base_model") or source.get("base_model") or self.config.model
            )
            state = self._build(entry, self.config.model, lora)
            state.load(checkpoints.read_state(target, with_opt), with_opt)
            self._record_run(entry)
            log.info("model_loaded", model_id=entry.model_id, source=str(tp), optimizer=with_opt)
            return Outcome(json={"type": "load_weights", "path": str(tp), "model_id": entry.model_id})

        rid = self._spawn(entry, "load_weights", run_guarded(create_and_load, "load_weights"))
        return {"request_id": rid, "model_id": entry.model_id}

    def save_weights_for_sampler(self, body: dict[str, Any]) -> dict[str, Any]:
        entry = self.entry(body.get("model_id"))
        name = body.get("path")
        if name is None:
            seq = params.field(body, "sampling_session_seq_id", int)
            return self._ordered(
                body, "save_weights_for_sampler", lambda s: self.sampler.ephemeral(entry.session_id, s, seq)
            )
        name = checkpoints.safe_name(params.field(body, "path", str))
        ctype = body.get("checkpoint_type") or "base"
        if ctype not in ("base", "delta"):
            raise TrainerBadRequest(f"checkpoint_type must be 'base' or 'delta', got {ctype!r}")
        parent = body.get("parent_snapshot_identity")
        if parent is not None:
            parent = checkpoints.parent_identity(
                params.field(body, "parent_snapshot_identity", str), entry.model_id
            )
        user_metadata = parse_user_metadata(body)
        if (self.config.bucket / entry.model_id / name).exists():
            raise TrainerBadRequest(
                f"sampler snapshot tinker://{entry.model_id}/sampler_weights/{name} already exists"
            )

        def run(state: ModelState) -> Outcome:
            return Outcome(
                json=save_for_sampler(state, self.config.bucket, name, ctype, parent, user_metadata)
            )

        return self._ordered(body, "save_weights_for_sampler", run)

    def save_weights_external(self, body: dict[str, Any]) -> dict[str, Any]:
        """An HF-format export, downloadable by signed URL (see ``external``)."""
        entry = self.entry(body.get("model_id"))
        name = checkpoints.safe_name(params.field(body, "path", str))
        recipients = external.parse_recipients(body.get("age_encryption_recipients"))
        target = external.export_dir(self.state_dir, entry.model_id, name)
        path = f"tinker://{entry.model_id}/{external.KIND}/{name}"

        def run(state: ModelState) -> Outcome:
            size = external.save_external(state, target, self.tokenizer, recipients)
            log.info("external_weights_saved", model_id=entry.model_id, name=name, size_bytes=size)
            return Outcome(json={"type": "save_weights_external", "path": path, "size_bytes": size})

        return self._ordered(body, "save_weights_external", run)

    async def close(self) -> None:
        """Drop queued work, let running ops finish (saves stay whole), then release the threads."""
        executors = [e.executor for e in self.models.values()] + [self.sampler.executor]
        for e in self.models.values():
            await e.queue.close()
        for ex in executors:
            ex.shutdown(wait=False, cancel_futures=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(30):
                await asyncio.to_thread(_join, executors)


def _join(executors: list[ThreadPoolExecutor]) -> None:
    for ex in executors:
        ex.shutdown(wait=True)
