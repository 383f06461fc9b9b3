"""Fireworks' JSON dialect of the training calls: ``/api/v1/forward`` and a JSON
``/api/v1/forward_backward`` (what ``fireworks-ai``'s training client sends; tinker 0.38 sends
protobuf to ``/api/v1/forward_backward`` instead, engine.local.trainer.proto).

Request::

    {"forward_backward_input": {            # "forward_input" on /api/v1/forward
        "data": [{"model_input": {"chunks": [{"type": "encoded_text", "tokens": [...]}]},
                  "loss_fn_inputs": {"target_tokens": {"data": [...], "dtype": "int64", "shape": [T]},
                                     "weights": {...}}}],
        "loss_fn": "cross_entropy", "loss_fn_config": {...}},
     "model_id": "...", "seq_id": 1}

A tensor may be sparse CSR (``data`` holds the values, with ``sparse_crow_indices`` and
``sparse_col_indices`` and a 2-D ``shape``). Both dialects decode to the same ``FwdBwdRequest`` and
go through the same checks (proto.check_datum_inputs, limits), so a bad request gets the same 400
naming the same field; the result goes back as JSON (``ForwardBackwardOutput``: ``loss_fn_outputs``
as one ``{name: TensorData}`` per datum, ``metrics``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from engine.local.trainer import limits
from engine.local.trainer.config import TrainerBadRequest
from engine.local.trainer.proto import (
    DatumIn,
    FwdBwdRequest,
    check_datum_inputs,
    densify_csr,
    reserve_sparse,
)
from engine.log import clip

JSON_DTYPES: dict[str, np.dtype[Any]] = {"int64": np.dtype(np.int64), "float32": np.dtype(np.float32)}
# Fireworks' extension flag asking for its v2 wire; this trainer answers v1 (it never advertises v2
# in create_model), so only v1 is accepted.
COMMS_V1 = (None, "v1")
MAX_TOKEN_ID = 2**31 - 1


def _int_list(value: Any, where: str, lo: int, hi: int) -> np.ndarray:
    if not isinstance(value, list):
        raise TrainerBadRequest(f"{where} must be a list of integers, got {type(value).__name__}")
    if not value:
        return np.zeros(0, np.int64)
    # Strict: numpy would otherwise cast floats and bools to integers without a word.
    if not all(type(v) is int for v in value):
        bad = next(v for v in value if type(v) is not int)
        raise TrainerBadRequest(f"{where} must hold integers only, got {clip(bad, 40)}")
    if min(value) < lo or max(value) > hi:
        raise TrainerBadRequest(f"{where} holds a value outside [{lo}, {hi}]")
    return np.asarray(value, dtype=np.int64)


def _values(value: Any, dtype: np.dtype[Any], where: str) -> np.ndarray:
    if dtype.kind == "i":
        return _int_list(value, where, -(2**63), 2**63 - 1)
    if not isinstance(value, list):
        raise TrainerBadRequest(f"{where} must be a list of numbers, got {type(value).__name__}")
    if not all(type(v) in (int, float) for v in value):
        bad = next(v for v in value if type(v) not in (int, float))
        raise TrainerBadRequest(f"{where} must hold numbers only, got {clip(bad, 40)}")
    try:
        # A finite JSON number can still overflow the narrower dtype (1e39 -> inf in float32).
        with np.errstate(over="ignore", invalid="ignore"):
            arr = np.asarray(value, dtype=dtype)
    except OverflowError as exc:  # an integer too large for any float
        raise TrainerBadRequest(f"{where} holds a value outside the range of {dtype.name}") from exc
    if not np.isfinite(arr).all():
        bad = value[int(np.flatnonzero(~np.isfinite(arr))[0])]
        raise TrainerBadRequest(
            f"{where} holds {clip(bad, 40)}, which is not a finite {dtype.name} "
            f"(|value| must be below {float(np.finfo(dtype).max):.4g})"
        )
    return arr


def _shape(value: Any, where: str) -> list[int] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(type(s) is int for s in value):
        raise TrainerBadRequest(f"{where} must be a list of integers, got {clip(value, 60)}")
    if any(s < 0 for s in value):
        raise TrainerBadRequest(f"{where}: negative dimension in shape {clip(value, 60)}")
    return [int(s) for s in value]


def decode_tensor(value: Any, where: str, rows: int, budget: list[int]) -> np.ndarray:
    """One JSON ``TensorData`` as an array: dtype named, dense shape exact, sparse checked first."""
    if not isinstance(value, dict):
        raise TrainerBadRequest(
            f"{where} must be an object {{data, dtype, shape}}, got {type(value).__name__}"
        )
    dtype: np.dtype[Any] | None = JSON_DTYPES.get(str(value.get("dtype")))
    if dtype is None:
        raise TrainerBadRequest(f"{where}.dtype: unsupported dtype {clip(value.get('dtype'), 40)}")
    shape = _shape(value.get("shape"), f"{where}.shape")
    crow_raw, col_raw = value.get("sparse_crow_indices"), value.get("sparse_col_indices")
    if crow_raw is not None or col_raw is not None:
        if shape is None or len(shape) != 2:
            raise TrainerBadRequest(f"{where}: a sparse CSR tensor must have a 2-D shape, got {shape}")
        if crow_raw is None or col_raw is None:
            raise TrainerBadRequest(f"{where}: sparse_crow_indices and sparse_col_indices go together")
        reserve_sparse(shape, where, rows, budget)
        values = _values(value.get("data"), dtype, f"{where}.data")
        crow = _int_list(crow_raw, f"{where}.sparse_crow_indices", 0, 2**62)
        col = _int_list(col_raw, f"{where}.sparse_col_indices", 0, 2**62)
        return densify_csr(values, crow, col, shape, where)
    arr = _values(value.get("data"), dtype, f"{where}.data")
    if shape is None:
        shape = [arr.size]
    needed = math.prod(shape)  # exact: Python ints do not wrap
    if needed != arr.size:
        raise TrainerBadRequest(f"{where}: shape {shape} needs {needed} elements, got {arr.size}")
    limits.check_shape(shape, where, rows)
    return arr.reshape(shape)


def _tokens(model_input: Any, i: int) -> np.ndarray:
    where = f"data[{i}].model_input"
    if not isinstance(model_input, dict) or not isinstance(model_input.get("chunks"), list):
        raise TrainerBadRequest(f"{where} must be an object with a list of chunks")
    parts = []
    for j, chunk in enumerate(model_input["chunks"]):
        if not isinstance(chunk, dict):
            raise TrainerBadRequest(f"{where}.chunks[{j}] must be an object")
        kind = chunk.get("type", "encoded_text")
        if kind != "encoded_text":
            raise TrainerBadRequest(f"{where}.chunks[{j}]: chunk type {clip(kind, 40)} is not supported")
        parts.append(_int_list(chunk.get("tokens"), f"{where}.chunks[{j}].tokens", 0, MAX_TOKEN_ID))
    tokens = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    if tokens.size == 0:
        raise TrainerBadRequest(f"{where} is empty")
    return tokens


def _config(value: Any) -> dict[str, float | str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TrainerBadRequest(f"loss_fn_config must be an object, got {type(value).__name__}")
    out: dict[str, float | str] = {}
    for k, v in value.items():
        if isinstance(v, str):
            out[k] = v
        elif type(v) in (int, float, bool):
            out[k] = float(v)
        else:
            raise TrainerBadRequest(f"loss_fn_config[{clip(k, 40)!r}] must be a number or a string")
    return out


def decode_json_forward(body: Mapping[str, Any], body_bytes: int, *, forward_only: bool) -> FwdBwdRequest:
    """A decoded JSON body of ``/api/v1/forward`` (``forward_only``) or ``/api/v1/forward_backward``."""
    key = "forward_input" if forward_only else "forward_backward_input"
    if body.get("comms") not in COMMS_V1:
        raise TrainerBadRequest(
            f"comms {clip(body.get('comms'), 20)}: this trainer speaks comms v1 only (create_model "
            "never advertises v2)"
        )
    model_id = body.get("model_id")
    if not isinstance(model_id, str) or not model_id:
        raise TrainerBadRequest("model_id is required")
    seq_id = limits.check_seq_id(body.get("seq_id"))
    fb = body.get(key)
    if not isinstance(fb, dict):
        raise TrainerBadRequest(f"{key} is required (an object with data, loss_fn, loss_fn_config)")
    raw_data = fb.get("data")
    if not isinstance(raw_data, list) or not raw_data:
        raise TrainerBadRequest("data must hold at least one datum")
    loss_fn = fb.get("loss_fn") or "cross_entropy"
    if not isinstance(loss_fn, str):
        raise TrainerBadRequest(f"loss_fn must be a string, got {type(loss_fn).__name__}")
    budget = [limits.element_budget(body_bytes)]
    data: list[DatumIn] = []
    for i, d in enumerate(raw_data):
        if not isinstance(d, dict):
            raise TrainerBadRequest(f"data[{i}] must be an object with model_input and loss_fn_inputs")
        tokens = _tokens(d.get("model_input"), i)
        raw_inputs = d.get("loss_fn_inputs") or {}
        if not isinstance(raw_inputs, dict):
            raise TrainerBadRequest(f"data[{i}].loss_fn_inputs must be an object")
        inputs = {
            k: decode_tensor(t, f"data[{i}].loss_fn_inputs[{clip(k, 40)}]", tokens.size, budget)
            for k, t in raw_inputs.items()
        }
        check_datum_inputs(i, tokens, inputs)
        data.append(DatumIn(tokens=tokens, inputs=inputs))
    return FwdBwdRequest(
        model_id=model_id,
        seq_id=seq_id,
        loss_fn=loss_fn,
        loss_fn_config=_config(fb.get("loss_fn_config")),
        forward_only=forward_only,
        data=data,
        dialect="json",
    )


def _tensor_json(arr: np.ndarray) -> dict[str, Any]:
    if arr.dtype.kind in "iu":
        return {"data": arr.astype(np.int64).ravel().tolist(), "dtype": "int64", "shape": list(arr.shape)}
    return {"data": arr.astype(np.float32).ravel().tolist(), "dtype": "float32", "shape": list(arr.shape)}


def encode_json_forward(
    outputs: Sequence[Mapping[str, np.ndarray]], metrics: Mapping[str, float]
) -> dict[str, Any]:
    """``ForwardBackwardOutput`` as JSON (the proto path batches the same fields as one ArrayRecord)."""
    return {
        "loss_fn_output_type": "ArrayRecord",
        "loss_fn_outputs": [{name: _tensor_json(arr) for name, arr in out.items()} for out in outputs],
        "metrics": {k: float(v) for k, v in metrics.items()},
    }
