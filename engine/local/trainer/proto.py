"""Protobuf in and out, via the SDK's own schema (``tinker.proto.tinker_public_pb2``).

Decoding validates everything that does not need the model (dtypes, shapes, chunk kinds) and
raises :class:`TrainerBadRequest` naming the field, so a bad request is a 400 before a future exists.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from google.protobuf.message import DecodeError
from tinker.proto import tinker_public_pb2 as pb

from engine.local.trainer import limits
from engine.local.trainer.config import TrainerBadRequest
from engine.local.trainer.provenance import Span, decode_spans
from engine.log import clip

_NP_DTYPE: dict[int, np.dtype[Any]] = {
    pb.DTYPE_FLOAT32: np.dtype(np.float32),
    pb.DTYPE_INT64: np.dtype(np.int64),
}
_DTYPE_NAME = {
    pb.DTYPE_FLOAT32: "float32",
    pb.DTYPE_INT64: "int64",
    pb.DTYPE_INT32: "int32",
    pb.DTYPE_BFLOAT16: "bfloat16",
    pb.DTYPE_UNSPECIFIED: "unspecified",
}
_TO_PROTO = {
    np.dtype(np.float32): pb.DTYPE_FLOAT32,
    np.dtype(np.int64): pb.DTYPE_INT64,
    np.dtype(np.int32): pb.DTYPE_INT32,
}

# Expected dtype per well-known loss input (the client's own per-key table).
INPUT_DTYPES: dict[str, str] = {
    "target_tokens": "int64",
    "weights": "float32",
    "advantages": "float32",
    "logprobs": "float32",
    "clip_low_threshold": "float32",
    "clip_high_threshold": "float32",
    "sequence_ratio_mask": "float32",
}


@dataclass
class DatumIn:
    tokens: np.ndarray  # int64 [T]
    inputs: dict[str, np.ndarray] = field(default_factory=dict)
    # Provenance (Datum.with_provenance), when the client attached it.
    input_spans: list[Span] | None = None
    target_spans: list[Span] | None = None


@dataclass
class FwdBwdRequest:
    model_id: str
    seq_id: int
    loss_fn: str
    loss_fn_config: dict[str, float | str]
    forward_only: bool
    data: list[DatumIn]
    # The dialect the request came in, and so the one its result goes back in: tinker's protobuf, or
    # Fireworks' JSON (engine.local.trainer.json_dialect).
    dialect: Literal["proto", "json"] = "proto"


def reserve_sparse(shape: list[int], where: str, rows: int, budget: list[int]) -> None:
    """Check a sparse tensor's dense shape and take its element count from ``budget`` (both
    dialects: what a sparse tensor densifies to is not bounded by its bytes on the wire)."""
    elements = limits.check_shape(shape, where, rows)
    if elements > budget[0]:
        raise TrainerBadRequest(
            f"{where}: sparse shape {shape} densifies to {elements} elements; this request may "
            f"densify {budget[0]} more (dense tensors carry their own bytes)"
        )
    budget[0] -= elements


def densify_csr(
    values: np.ndarray, crow: np.ndarray, col: np.ndarray, shape: list[int], where: str
) -> np.ndarray:
    """A 2-D CSR tensor as a dense array, its indices checked first (shape already reserved)."""
    if (
        crow.size != shape[0] + 1
        or col.size != values.size
        or (crow.size and (crow[0] != 0 or crow[-1] != values.size or np.any(np.diff(crow) < 0)))
    ):
        raise TrainerBadRequest(f"{where}: inconsistent sparse CSR indices for shape {shape}")
    if col.size and (col.min() < 0 or col.max() >= shape[1]):
        raise TrainerBadRequest(f"{where}: sparse CSR column index out of range for shape {shape}")
    dense = np.zeros(shape, dtype=values.dtype)
    dense[np.repeat(np.arange(shape[0]), np.diff(crow)), col] = values
    return dense


def check_datum_inputs(i: int, tokens: np.ndarray, inputs: Mapping[str, np.ndarray]) -> None:
    """Per-name dtype and one row per model_input token (both dialects)."""
    for name, arr in inputs.items():
        want = INPUT_DTYPES.get(name)
        if want is not None and arr.dtype != np.dtype(want):
            raise TrainerBadRequest(f"data[{i}].loss_fn_inputs[{name!r}] must be {want}, got {arr.dtype}")
        if arr.ndim == 0 or arr.ndim > 2 or arr.shape[0] != tokens.size:
            raise TrainerBadRequest(
                f"data[{i}].loss_fn_inputs[{name!r}] has shape {list(arr.shape)}; expected "
                f"[{tokens.size}] or [{tokens.size}, K] (one row per model_input token)"
            )


def _tensor(msg: pb.Tensor, where: str, rows: int, budget: list[int]) -> np.ndarray:
    """Decode one loss input. A dense shape must match its buffer (exact product, no wrap-around); a
    sparse one is checked before it is densified, against ``budget`` (the request's remaining
    element allowance), since its bytes on the wire say nothing about its dense size."""
    np_dtype = _NP_DTYPE.get(msg.dtype)
    if np_dtype is None:
        raise TrainerBadRequest(f"{where}: unsupported dtype {_DTYPE_NAME.get(msg.dtype, msg.dtype)}")
    shape = [int(s) for s in msg.shape]
    if any(s < 0 for s in shape):
        raise TrainerBadRequest(f"{where}: negative dimension in shape {shape}")
    if msg.HasField("sparse_csr"):
        csr = msg.sparse_csr
        if len(shape) != 2:
            raise TrainerBadRequest(f"{where}: a sparse CSR tensor must be 2-D, got shape {shape}")
        reserve_sparse(shape, where, rows, budget)
        try:
            values = np.frombuffer(csr.values, dtype=np_dtype)
            crow = np.frombuffer(csr.crow_indices, dtype=np.int64)
            col = np.frombuffer(csr.col_indices, dtype=np.int64)
        except ValueError as exc:
            raise TrainerBadRequest(f"{where}: sparse CSR buffers are not whole elements ({exc})") from exc
        return densify_csr(values, crow, col, shape, where)
    try:
        arr = np.frombuffer(msg.dense, dtype=np_dtype)
    except ValueError as exc:
        raise TrainerBadRequest(f"{where}: dense buffer is not a whole number of {np_dtype} ({exc})") from exc
    if not shape:
        shape = [arr.size]
    if math.prod(shape) != arr.size:
        raise TrainerBadRequest(f"{where}: shape {shape} needs {math.prod(shape)} elements, got {arr.size}")
    limits.check_shape(shape, where, rows)
    return arr.reshape(shape)


def _config(msg: pb.ForwardBackwardRequest) -> dict[str, float | str]:
    out: dict[str, float | str] = {k: float(v) for k, v in msg.loss_fn_config.items()}
    for k, v in msg.loss_fn_config_v2.items():  # v2 wins when set (it carries strings too)
        out[k] = v.text if v.WhichOneof("value") == "text" else float(v.number)
    return out


def decode_forward_backward(body: bytes) -> FwdBwdRequest:
    budget = [limits.element_budget(len(body))]
    msg = pb.ForwardBackwardRequest()
    try:
        msg.ParseFromString(body)
    except (DecodeError, ValueError) as exc:
        raise TrainerBadRequest(f"malformed protobuf ForwardBackwardRequest: {exc}") from exc
    if not msg.model_id:
        raise TrainerBadRequest("model_id is required")
    if not msg.data:
        raise TrainerBadRequest("data must hold at least one datum")
    data: list[DatumIn] = []
    for i, d in enumerate(msg.data):
        parts: list[np.ndarray] = []
        for j, chunk in enumerate(d.model_input):
            kind = chunk.WhichOneof("chunk")
            if kind != "encoded_text":
                raise TrainerBadRequest(f"data[{i}].model_input[{j}]: chunk type {kind!r} is not supported")
            try:
                parts.append(np.frombuffer(chunk.encoded_text.tokens, dtype=np.int32))
            except ValueError as exc:
                raise TrainerBadRequest(f"data[{i}].model_input[{j}]: tokens are not int32 bytes") from exc
        tokens = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
        if tokens.size == 0:
            raise TrainerBadRequest(f"data[{i}].model_input is empty")
        inputs = {
            k: _tensor(t, f"data[{i}].loss_fn_inputs[{clip(k, 40)}]", tokens.size, budget)
            for k, t in d.loss_fn_inputs.items()
        }
        check_datum_inputs(i, tokens, inputs)
        input_spans = decode_spans(d.model_input_spans, f"data[{i}].model_input_spans", tokens.size)
        target_spans = decode_spans(d.loss_fn_input_spans, f"data[{i}].loss_fn_input_spans", tokens.size)
        data.append(DatumIn(tokens=tokens, inputs=inputs, input_spans=input_spans, target_spans=target_spans))
    return FwdBwdRequest(
        model_id=msg.model_id,
        seq_id=limits.check_seq_id(int(msg.seq_id)),
        loss_fn=msg.loss_fn or "cross_entropy",
        loss_fn_config=_config(msg),
        forward_only=bool(msg.forward_only),
        data=data,
    )


def _batched(arrays: Sequence[np.ndarray]) -> pb.BatchedTensor:
    first = arrays[0]
    bt = pb.BatchedTensor()
    bt.dtype = _TO_PROTO[first.dtype]
    bt.trailing_shape.extend(int(s) for s in first.shape[1:])
    sizes = [0] + [a.nbytes for a in arrays]
    bt.offsets = np.cumsum(sizes, dtype=np.int64).tobytes()
    bt.data = b"".join(np.ascontiguousarray(a).tobytes() for a in arrays)
    return bt


def encode_forward_backward(
    outputs: Sequence[Mapping[str, np.ndarray]], metrics: Mapping[str, float]
) -> bytes:
    """One ArrayRecord holding every datum's fields (each field batched with byte offsets)."""
    msg = pb.ForwardBackwardOutput()
    msg.loss_fn_output_type = "ArrayRecord"
    record = msg.loss_fn_outputs.add()
    record.type_tag = "ArrayRecord"
    record.num_datums = len(outputs)
    if outputs:
        for name in outputs[0]:
            record.fields[name].CopyFrom(_batched([o[name] for o in outputs]))
    for k, v in metrics.items():
        msg.metrics[k] = float(v)
    return msg.SerializeToString()


@dataclass
class SampledOut:
    tokens: np.ndarray  # int32
    logprobs: np.ndarray  # float32
    stopped: bool  # True: hit a stop condition; False: ran to max_tokens
    topk_ids: np.ndarray | None = None  # [n, k] int32
    topk_logprobs: np.ndarray | None = None  # [n, k] float32


def _topk(msg: pb.TopkLogprobs, ids: np.ndarray, lps: np.ndarray) -> None:
    msg.token_ids = np.ascontiguousarray(ids, dtype=np.int32).tobytes()
    msg.logprobs = np.ascontiguousarray(lps, dtype=np.float32).tobytes()
    msg.length, msg.k = int(ids.shape[0]), int(ids.shape[1])


def encode_sample_response(
    sequences: Sequence[SampledOut],
    prompt_logprobs: np.ndarray | None,
    topk_prompt: tuple[np.ndarray, np.ndarray] | None = None,
) -> bytes:
    msg = pb.SampleResponse()
    for s in sequences:
        seq = msg.sequences.add()
        seq.stop_reason = pb.STOP_REASON_STOP if s.stopped else pb.STOP_REASON_LENGTH
        seq.tokens = np.ascontiguousarray(s.tokens, dtype=np.int32).tobytes()
        seq.logprobs = np.ascontiguousarray(s.logprobs, dtype=np.float32).tobytes()
        if s.topk_ids is not None and s.topk_logprobs is not None:
            _topk(seq.topk_sampled_logprobs, s.topk_ids, s.topk_logprobs)
    if prompt_logprobs is not None:
        msg.prompt_logprobs = np.ascontiguousarray(prompt_logprobs, dtype=np.float32).tobytes()
    if topk_prompt is not None:
        _topk(msg.topk_prompt_logprobs, *topk_prompt)
    return msg.SerializeToString()
