"""Provenance spans of a datum (``Datum.with_provenance``) and the sampler's stability records.

A span names the sampled sequence behind a run of positions: ``prompt`` (positions ``[offset,
offset + length)`` of that request's prompt) or ``sampled`` (of its sampled tokens). The spans of a
field tile it: their lengths add up to its length. ``stable_reinforce`` needs them on every datum's
``loss_fn_inputs`` so it can use what the sampler recorded for each sampled target token.

Records: a sample request with ``record_stability_info`` stores, per returned ``sequence_id``, the
prompt's length, the sampled tokens and their logprobs as the sampler computed them. Records belong
to the session that sampled them and stay trainable for a day after their last use (Tinker's rule),
in a store bounded by its total sampled tokens (least recently used dropped first: ~12 bytes each).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from engine.local.trainer.config import TrainerBadRequest

SpanKind = Literal["prompt", "sampled"]
RECORD_TTL_S = 24 * 3600.0
MAX_RECORDED_TOKENS = 8_000_000
# Extra loss inputs the resolver adds (leading '_': never a client's key).
RECORDED_LOGPROBS = "_recorded_logprobs"
SAMPLED_MASK = "_sampled_mask"


@dataclass(frozen=True)
class Span:
    kind: SpanKind
    sequence_id: str
    offset: int
    length: int


def decode_spans(spans: Any, where: str, expected: int) -> list[Span] | None:
    """``repeated ProvenanceSpan`` -> spans (None when empty), checking that they tile ``expected``."""
    if not len(spans):
        return None
    out: list[Span] = []
    for j, span in enumerate(spans):
        kind = span.WhichOneof("span")
        if kind not in ("prompt_tokens", "sampled_tokens"):
            raise TrainerBadRequest(f"{where}[{j}]: a span must be prompt_tokens or sampled_tokens")
        inner = getattr(span, kind)
        if not inner.sequence_id or inner.offset < 0 or inner.length < 0:
            raise TrainerBadRequest(f"{where}[{j}]: needs a sequence_id, offset >= 0 and length >= 0")
        out.append(
            Span(
                "prompt" if kind == "prompt_tokens" else "sampled",
                inner.sequence_id,
                inner.offset,
                inner.length,
            )
        )
    total = sum(s.length for s in out)
    if total != expected:
        raise TrainerBadRequest(f"{where}: spans cover {total} positions but the field has {expected}")
    return out


@dataclass
class Record:
    session_id: str
    prompt_length: int
    tokens: np.ndarray  # int64
    logprobs: np.ndarray  # float32
    last_used: float


class StabilityRecords:
    """sequence_id -> Record; written on the sampling thread, read on model threads (locked)."""

    def __init__(self, max_tokens: int = MAX_RECORDED_TOKENS, ttl_s: float = RECORD_TTL_S) -> None:
        self._records: OrderedDict[str, Record] = OrderedDict()
        self._max_tokens = max_tokens
        self._tokens = 0
        self._ttl_s = ttl_s
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._records)

    def put(
        self,
        sequence_id: str,
        session_id: str,
        prompt: Sequence[int],
        tokens: np.ndarray,
        logprobs: np.ndarray,
    ) -> None:
        record = Record(
            session_id,
            len(prompt),
            np.asarray(tokens, np.int64),
            np.asarray(logprobs, np.float32),
            time.monotonic(),
        )
        with self._lock:
            self._drop(sequence_id)
            self._records[sequence_id] = record
            self._tokens += record.tokens.size
            while self._tokens > self._max_tokens and len(self._records) > 1:
                self._drop(next(iter(self._records)))

    def _drop(self, sequence_id: str) -> None:
        old = self._records.pop(sequence_id, None)
        if old is not None:
            self._tokens -= old.tokens.size

    def get(self, sequence_id: str, now: float | None = None) -> Record | None:
        now = time.monotonic() if now is None else now
        with self._lock:
            record = self._records.get(sequence_id)
            if record is None:
                return None
            if now - record.last_used > self._ttl_s:
                self._drop(sequence_id)
                return None
            record.last_used = now  # each training use restarts the day
            self._records.move_to_end(sequence_id)
            return record

    def drop_session(self, session_id: str) -> None:
        with self._lock:
            for sid in [k for k, r in self._records.items() if r.session_id == session_id]:
                self._drop(sid)


def resolve(
    data: Sequence[Any], records: StabilityRecords, session_id: str, loss: str
) -> list[dict[str, np.ndarray]]:
    """Per datum: the recorded sampler logprob of each target position (0 elsewhere) and a mask of
    the sampled positions. Raises TrainerBadRequest naming the datum and span at fault."""
    out: list[dict[str, np.ndarray]] = []
    for i, d in enumerate(data):
        spans: list[Span] | None = d.target_spans
        if spans is None:
            raise TrainerBadRequest(
                f"data[{i}]: loss {loss!r} needs provenance on loss_fn_inputs (Datum.with_provenance "
                "naming the sampled sequence_id behind each target)"
            )
        targets = d.inputs["target_tokens"]
        if targets.ndim != 1:
            raise TrainerBadRequest(f"data[{i}]: loss {loss!r} needs 1-D target_tokens")
        recorded = np.zeros(targets.shape, np.float32)
        mask = np.zeros(targets.shape, np.float32)
        pos = 0
        for j, span in enumerate(spans):
            where = f"data[{i}].loss_fn_input_spans[{j}]"
            record = records.get(span.sequence_id)
            if record is None:
                raise TrainerBadRequest(
                    f"{where}: sequence_id {span.sequence_id!r} has no stability record (sample with "
                    "record_stability_info=True, in this session, within the last day)"
                )
            if record.session_id != session_id:
                raise TrainerBadRequest(
                    f"{where}: sequence_id {span.sequence_id!r} was sampled in another session"
                )
            size = record.tokens.size if span.kind == "sampled" else record.prompt_length
            end = span.offset + span.length
            if end > size:
                raise TrainerBadRequest(
                    f"{where}: positions [{span.offset}, {end}) are past the {size} {span.kind} "
                    f"tokens of sequence {span.sequence_id!r}"
                )
            # Sampled targets must be the recorded tokens. Prompt positions are not compared: they
            # carry no advantage, and clients pad them (rl_loop sends target 0 there).
            if span.kind == "sampled" and not np.array_equal(
                targets[pos : pos + span.length], record.tokens[span.offset : end]
            ):
                raise TrainerBadRequest(
                    f"{where}: target_tokens differ from the {span.kind} tokens of sequence "
                    f"{span.sequence_id!r}"
                )
            if span.kind == "sampled":
                recorded[pos : pos + span.length] = record.logprobs[span.offset : end]
                mask[pos : pos + span.length] = 1.0
            pos += span.length
        advantages = d.inputs.get("advantages")
        if advantages is not None and np.any(advantages[mask == 0] != 0):
            raise TrainerBadRequest(
                f"data[{i}].loss_fn_inputs['advantages']: loss {loss!r} takes nonzero advantages only on "
                "sampled tokens (positions a SampledProvenanceSpan covers)"
            )
        out.append({RECORDED_LOGPROBS: recorded, SAMPLED_MASK: mask})
    return out
