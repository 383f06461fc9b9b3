"""Sampling sessions and asample requests, executed on one dedicated sampling thread.

Its dependencies are explicit and narrow (the base module and tokenizer, the model's facts, the
bucket, the future store, and three callables into the trainer service), not the service itself.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine.local.trainer import checkpoints, params
from engine.local.trainer.batched_generation import SampleJob, batchable, sample_many
from engine.local.trainer.config import NotFound, TrainerBadRequest
from engine.local.trainer.futures import FutureStore, Outcome
from engine.local.trainer.generation import ModuleCache, SamplingSession, sample
from engine.local.trainer.logs import LazyLogger
from engine.local.trainer.models import ModelState
from engine.local.trainer.proto import SampledOut
from engine.local.trainer.provenance import StabilityRecords
from engine.weights.snapshot import SnapshotError, materialize, run_identity

log = LazyLogger("trainer.sampler")
MAX_PENDING_SAMPLES = 512
BATCH_GATHER_S = 0.005
# Each ephemeral sampling session pins a full copy of the weights; keep the most recent ones.
MAX_EPHEMERAL_SESSIONS = 32


class Backpressure(TrainerBadRequest):
    status = 429


@dataclass(frozen=True)
class SampledModel:
    """What sampling needs to know about the served base model."""

    name: str
    vocab_size: int
    max_length: int
    eos_id: int
    pad_id: int = 0  # left padding of batched sampling (masked out)


@dataclass(frozen=True)
class _Queued:
    request_id: str
    session: SamplingSession
    job: SampleJob


class SamplerService:
    def __init__(
        self,
        base: Any,
        tokenizer: Any,
        model: SampledModel,
        bucket: Path,
        store: FutureStore,
        *,
        session_id_of: Callable[[Any], str],
        check_base_model: Callable[[Any], str],
        background: Callable[[Coroutine[Any, Any, None]], None],
        batch_rows: int = 32,
    ) -> None:
        """``session_id_of`` validates a client's session id (raising NotFound/Gone);
        ``check_base_model`` a requested base model; ``background`` runs a coroutine on the loop;
        ``batch_rows`` caps the sequences one batched generation runs (1: one request at a time)."""
        self.tokenizer = tokenizer
        self.model = model
        self.bucket = bucket
        self.store = store
        self._session_id_of = session_id_of
        self._check_base_model = check_base_model
        self._background = background
        self.sessions: dict[str, SamplingSession] = {}
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="sampler")
        self.modules = ModuleCache(base)
        self._snapshots: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()
        self._lock = threading.Lock()
        self._ephemeral: OrderedDict[str, None] = OrderedDict()
        self.pending = 0
        self.batch_rows = batch_rows
        # What samples with record_stability_info recorded, for stable_reinforce (see provenance).
        self.records = StabilityRecords()
        # Admitted sample requests not yet running (loop-confined), drained in batches.
        self._queue: list[_Queued] = []
        self._draining = False

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)

    def _register(self, s: SamplingSession) -> str:
        with self._lock:  # ephemeral sessions are registered from a model's worker thread
            if s.sampling_session_id in self.sessions:
                s.sampling_session_id += f":{uuid.uuid4().hex[:8]}"
            self.sessions[s.sampling_session_id] = s
        return s.sampling_session_id

    def ephemeral(self, session_id: str, state: ModelState, seq: int) -> Outcome:
        """Blocking (model thread): pin the model's current weights in a new sampling session."""
        sid = f"{session_id}:sample:{seq}"
        key = f"ephemeral:{uuid.uuid4().hex}"
        s = SamplingSession(sid, session_id, self.model.name, None, key, state.sampler_state())
        sid = self._register(s)
        with self._lock:
            self._ephemeral[sid] = None
            while len(self._ephemeral) > MAX_EPHEMERAL_SESSIONS:
                old, _ = self._ephemeral.popitem(last=False)
                self.sessions.pop(old, None)
        return Outcome(json={"type": "save_weights_for_sampler", "sampling_session_id": sid})

    def drop_session(self, session_id: str) -> None:
        with self._lock:
            for sid in [k for k, v in self.sessions.items() if v.session_id == session_id]:
                del self.sessions[sid]
                self._ephemeral.pop(sid, None)
        self.records.drop_session(session_id)

    def _snapshot(self, identity: str) -> dict[str, torch.Tensor]:
        with self._lock:
            if identity in self._snapshots:
                self._snapshots.move_to_end(identity)
                return self._snapshots[identity]
        try:
            _, weights = materialize(self.bucket, identity)
        except SnapshotError as exc:
            raise NotFound(f"sampler snapshot {identity!r}: {exc}") from exc
        with self._lock:
            self._snapshots[identity] = weights
            while len(self._snapshots) > 4:
                self._snapshots.popitem(last=False)
        return weights

    async def create_session(self, body: dict[str, Any]) -> dict[str, Any]:
        session_id = self._session_id_of(body.get("session_id"))
        seq = params.field(body, "sampling_session_seq_id", int)
        model_path = body.get("model_path")
        weights: dict[str, torch.Tensor] | None = None
        key = "base"
        if model_path is not None:
            tp = checkpoints.parse_tinker_path(model_path, "model_path")
            if tp.kind != "sampler_weights":
                raise TrainerBadRequest(
                    "model_path must be a sampler_weights path (from save_weights_for_sampler)"
                )
            # Not on self.executor: behind up to MAX_PENDING_SAMPLES queued samples, the client's
            # create_sampling_session would time out. _snapshot is thread-safe (its cache is locked).
            identity = run_identity(tp.run_id, tp.name)  # snapshots are kept per run
            weights = await asyncio.to_thread(self._snapshot, identity)
            key = f"snapshot:{identity}"
        else:
            self._check_base_model(body.get("base_model"))
        s = SamplingSession(
            f"{session_id}:sample:{seq}", session_id, self.model.name, model_path, key, weights
        )
        return {"type": "create_sampling_session", "sampling_session_id": self._register(s)}

    def get(self, sampler_id: str) -> dict[str, Any]:
        s = self.sessions.get(sampler_id)
        if s is None:
            raise NotFound(f"unknown sampler {sampler_id!r}")
        return {"sampler_id": s.sampling_session_id, "base_model": s.base_model, "model_path": s.model_path}

    def asample(self, body: dict[str, Any]) -> dict[str, Any]:
        sid = body.get("sampling_session_id")
        if sid is None:
            raise TrainerBadRequest("sampling_session_id is required (create a sampling session first)")
        s = self.sessions.get(sid) if isinstance(sid, str) else None
        if s is None:
            raise NotFound(
                f"unknown sampling_session_id {sid!r} (its session finished, or it is older than the "
                f"{MAX_EPHEMERAL_SESSIONS} most recent save_weights_and_get_sampling_client sessions)"
            )
        m = self.model
        prompt = params.prompt_tokens(body, max_tokens=m.max_length)
        if any(not 0 <= t < m.vocab_size for t in prompt):
            raise TrainerBadRequest(f"prompt: token id out of range [0, {m.vocab_size})")
        p = params.sample_params(body, len(prompt), m.vocab_size, m.max_length, m.eos_id)
        if self.pending >= MAX_PENDING_SAMPLES:
            raise Backpressure(f"{self.pending} samples pending; retry later")
        rid = self.store.create("sample")
        sequence_ids = [f"{rid}:{i}" for i in range(p.num_samples)]
        record = None
        if body.get("record_stability_info"):

            def record(seqs: list[SampledOut]) -> None:
                for sequence_id, seq in zip(sequence_ids, seqs, strict=True):
                    self.records.put(sequence_id, s.session_id, prompt, seq.tokens, seq.logprobs)

        # Counted at admission, not when it first runs: a burst in one loop turn must not slip past
        # the bound.
        self.pending += 1
        self._queue.append(_Queued(rid, s, SampleJob(prompt, p, record)))
        if not self._draining:
            self._draining = True
            self._background(self._drain())
        return {"request_id": rid, "sample_sequence_ids": sequence_ids}

    def _next_batch(self) -> list[_Queued]:
        """Loop-confined: the oldest request, plus queued ones on the same weights up to the row cap."""
        first = self._queue[0]
        batch, rows = [first], first.job.params.num_samples
        if self.batch_rows > 1 and batchable(first.job.params):
            for item in self._queue[1:]:
                n = item.job.params.num_samples
                same = item.session.weights_key == first.session.weights_key
                if same and batchable(item.job.params) and rows + n <= self.batch_rows:
                    batch.append(item)
                    rows += n
        taken = {id(item) for item in batch}
        self._queue = [item for item in self._queue if id(item) not in taken]
        return batch

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._queue:
                lone = len(self._queue) == 1 and batchable(self._queue[0].job.params)
                if lone and self.batch_rows > 1:
                    # A rollout loop's requests arrive as a burst over many connections: give the
                    # rest of it a moment to join the first batch (a lone request waits 5 ms).
                    await asyncio.sleep(BATCH_GATHER_S)
                batch = self._next_batch()
                try:
                    outcomes = await loop.run_in_executor(self.executor, self._run_batch, batch)
                finally:
                    self.pending -= len(batch)
                for item, outcome in zip(batch, outcomes, strict=True):
                    self.store.resolve(item.request_id, outcome)
        finally:
            self._draining = False

    def _run_batch(self, batch: list[_Queued]) -> list[Outcome]:
        """Blocking (sampling thread): one outcome per request; a failure fails the whole batch."""
        session = batch[0].session

        def run() -> list[Outcome]:
            module = self.modules.get(session.weights_key, session.weights)
            if len(batch) == 1 and (self.batch_rows == 1 or not batchable(batch[0].job.params)):
                job = batch[0].job
                return [Outcome(proto=sample(module, job.prompt, job.params, self.tokenizer, job.record))]
            answers = sample_many(module, [item.job for item in batch], self.tokenizer, self.model.pad_id)
            return [Outcome(proto=a) for a in answers]

        try:
            return run()
        except Exception as exc:  # a bug must fail these requests, not the sampler
            log.exception("sample_failed", requests=len(batch))
            return [Outcome.error(f"sample failed: {type(exc).__name__}: {exc}", "server") for _ in batch]
