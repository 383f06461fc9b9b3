"""What a Fireworks trainer is sent and answers, as pure functions (no I/O): the JSON training
dialect of ``fireworks-ai`` 1.2.30's ``FiretitanTrainingClient``, read from its source and held to it
by tests/fireworks/test_contract.py (a recording proxy, the same operations through both clients).

Transport: JSON bodies over tinker's future protocol (a POST answers ``{"request_id"}``, the result
is long-polled with ``POST /api/v1/retrieve_future``); ``/api/v1/forward`` for forward passes,
``/api/v1/forward_backward`` in JSON (Fireworks refuses tinker's protobuf transport), never
``/api/v1/client/config`` (Fireworks' client skips it for its keys). Auth: ``X-API-Key`` with the raw
key, nothing else. Bodies carry only the fields Fireworks' request models allow: no
``optimizer_config`` on ``create_model``, no ``kind``/``parent_snapshot_identity`` on
``save_weights_for_sampler`` (its one extension there is ``checkpoint_type``).

A delta written by Fireworks' trainer is ARC v2 with Adler-32 checksums (``FIREWORKS_DELTA_FORMAT``,
its SDK's ``DEFAULT_DELTA_COMPRESSION`` / ``DEFAULT_CHECKSUM_FORMAT``, sic "alder32"); a trainer that
names its own format in the save answer (hotloop's does) is taken at its word.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from tinker import types

from engine.backends.base import CheckpointType, SamplerSnapshot
from engine.errors import ConfigError, FatalError

PROTOCOL_VERSION = "0.23.0"
"""The tinker protocol version Fireworks' client announces in ``create_session`` (its vendored port)."""

FIREWORKS_DELTA_FORMAT = ("arc_v2", "alder32")
PROTO = "application/x-protobuf"
# Fireworks' client asks for these results as protobuf or JSON; anything else as JSON.
PROTO_RESULT_TYPES = frozenset({"Forward", "ForwardBackward"})
CUSTOM_LOSS_INPUTS = frozenset({"target_tokens", "weights"})


def headers(api_key: str) -> dict[str, str]:
    """Fireworks' trainer auth: the raw key as ``X-API-Key`` (no ``tml-`` prefix, no Bearer)."""
    if not api_key:
        raise ConfigError("api_key: empty")
    return {"Content-Type": "application/json", "Accept": "application/json", "X-API-Key": api_key}


def tensor_json(t: types.TensorData, where: str) -> dict[str, Any]:
    """A ``TensorData`` as Fireworks sends it: ``data``, ``dtype``, ``shape`` (always given), and
    the CSR index lists when the tensor is sparse."""
    out: dict[str, Any] = {"data": t.data, "dtype": t.dtype}
    if t.sparse_crow_indices is not None:
        if t.shape is None or t.sparse_col_indices is None:
            raise ConfigError(f"{where}: a sparse tensor needs shape and sparse_col_indices")
        out.update(
            shape=list(t.shape),
            sparse_crow_indices=list(t.sparse_crow_indices),
            sparse_col_indices=list(t.sparse_col_indices),
        )
        return out
    out["shape"] = list(t.shape) if t.shape is not None else list(t.to_numpy().shape)
    return out


def datum_json(d: types.Datum, i: int) -> dict[str, Any]:
    chunks = []
    for j, chunk in enumerate(d.model_input.chunks):
        if not isinstance(chunk, types.EncodedTextChunk):
            raise ConfigError(f"data[{i}].model_input.chunks[{j}]: only encoded_text chunks are sent")
        chunks.append({"tokens": [int(t) for t in chunk.tokens], "type": "encoded_text"})
    return {
        "loss_fn_inputs": {
            k: tensor_json(v, f"data[{i}].loss_fn_inputs[{k!r}]") for k, v in d.loss_fn_inputs.items()
        },
        "model_input": {"chunks": chunks},
    }


def forward_body(
    model_id: str,
    data: Sequence[types.Datum],
    loss_fn: str,
    loss_fn_config: Mapping[str, float | str] | None,
    *,
    backward: bool,
) -> dict[str, Any]:
    if not data:
        raise ConfigError("data: at least one datum is required")
    spec: dict[str, Any] = {"data": [datum_json(d, i) for i, d in enumerate(data)], "loss_fn": loss_fn}
    if loss_fn_config:
        spec["loss_fn_config"] = dict(loss_fn_config)
    key = "forward_backward_input" if backward else "forward_input"
    return {key: spec, "model_id": model_id}  # the session adds seq_id when the call's turn comes


def create_model_body(session_id: str, base_model: str, lora_rank: int) -> dict[str, Any]:
    lora: dict[str, Any] = {"rank": lora_rank}
    if lora_rank > 0:
        lora["alpha"] = 32  # Fireworks' client default; it sends none for full-parameter training
    lora.update(train_unembed=True, train_mlp=True, train_attn=True)
    return {
        "session_id": session_id,
        "model_seq_id": 0,
        "base_model": base_model,
        "lora_config": lora,
        "type": "create_model",
    }


def sampler_snapshot(
    answer: Mapping[str, Any], identity: str, asked: CheckpointType, parent: str | None, what: str
) -> SamplerSnapshot:
    """A ``save_weights_for_sampler`` answer as a ``SamplerSnapshot``: the type the trainer says it
    wrote (hotloop's says; Fireworks' answers only ``path``), the encoding it names or Fireworks'."""
    reported = answer.get("checkpoint_type") or asked
    if reported not in ("base", "delta"):
        raise FatalError(f"{what}: trainer reported type {reported!r}")
    written: CheckpointType = "base" if reported == "base" else "delta"
    named = (answer.get("compression_format"), answer.get("checksum_format"))
    reported_parent = answer.get("parent_snapshot_identity")
    served = str(answer.get("snapshot_name") or identity)
    if reported_parent and served != identity and served.endswith("/" + identity):
        # hotloop's trainer qualifies each name with its run (``<run>/<name>``); this client names
        # snapshots bare, as Fireworks does, so the parent is read back in the client's terms.
        reported_parent = str(reported_parent).removeprefix(served[: -len(identity)])
    return SamplerSnapshot(
        path=str(answer.get("path") or identity),
        snapshot_name=identity,
        checkpoint_type=written,
        size_bytes=answer.get("size_bytes"),
        parent_snapshot_identity=(reported_parent or parent)
        if written == "delta"
        else None,
        encode_seconds=answer.get("encode_seconds"),
        delta_format=(str(named[0]), str(named[1])) if all(named) else FIREWORKS_DELTA_FORMAT,
    )


def adam_json(adam: types.AdamParams) -> dict[str, float]:
    return {
        "learning_rate": float(adam.learning_rate),
        "beta1": float(adam.beta1),
        "beta2": float(adam.beta2),
        "eps": float(adam.eps),
        "weight_decay": float(adam.weight_decay),
        "grad_clip_norm": float(adam.grad_clip_norm),
    }


def check_custom_data(data: Sequence[types.Datum]) -> None:
    """Fireworks' custom-loss contract: datums carry ``target_tokens`` (required) and ``weights``."""
    for i, d in enumerate(data):
        extra = set(d.loss_fn_inputs) - CUSTOM_LOSS_INPUTS
        if extra or "target_tokens" not in d.loss_fn_inputs:
            raise ConfigError(
                f"data[{i}].loss_fn_inputs: a custom loss takes target_tokens and weights only "
                f"(got {sorted(d.loss_fn_inputs)}); keep other per-sample data in the loss's closure"
            )


def _tensor(value: Any, where: str) -> types.TensorData:
    if not isinstance(value, dict) or value.get("dtype") not in ("int64", "float32"):
        raise FatalError(f"{where}: not a TensorData object: {str(value)[:200]}")
    dtype = value["dtype"]
    arr = np.asarray(value.get("data") or [], dtype=np.int64 if dtype == "int64" else np.float32)
    shape = value.get("shape")
    if value.get("sparse_crow_indices") is not None:
        return types.TensorData(
            data=arr,
            dtype=dtype,
            shape=shape,
            sparse_crow_indices=value["sparse_crow_indices"],
            sparse_col_indices=value.get("sparse_col_indices"),
        )
    return types.TensorData(data=arr.reshape(shape) if shape else arr, dtype=dtype, shape=shape)


def forward_output(result: Mapping[str, Any], what: str) -> types.ForwardBackwardOutput:
    """A JSON ``ForwardBackwardOutput`` (one ``{name: TensorData}`` per datum)."""
    outputs = result.get("loss_fn_outputs")
    if not isinstance(outputs, list):
        raise FatalError(f"{what}: result has no loss_fn_outputs list: {str(result)[:300]}")
    return types.ForwardBackwardOutput(
        loss_fn_output_type=str(result.get("loss_fn_output_type") or "ArrayRecord"),
        loss_fn_outputs=[
            {k: _tensor(v, f"{what}: loss_fn_outputs[{i}][{k!r}]") for k, v in out.items()}
            for i, out in enumerate(outputs)
        ],
        metrics={k: float(v) for k, v in (result.get("metrics") or {}).items()},
    )


def forward_output_proto(body: bytes, what: str) -> types.ForwardBackwardOutput:
    """The same result as protobuf (a trainer may answer so: the client accepts both)."""
    from tinker.proto.response_conv import deserialize_forward_backward_output

    try:
        return deserialize_forward_backward_output(body)
    except Exception as exc:
        raise FatalError(f"{what}: undecodable protobuf ForwardBackwardOutput ({exc})") from exc


def response_tokens(data: Sequence[types.Datum]) -> float:
    """Fireworks' client-side ``response_tokens`` metric of a cross-entropy pass: the trained
    (non-zero weight) target positions."""
    total = 0
    for d in data:
        weights = d.loss_fn_inputs.get("weights")
        target = d.loss_fn_inputs["target_tokens"]
        total += int(np.count_nonzero(weights.to_numpy())) if weights is not None else target.to_numpy().size
    return float(total)


def custom_forward_data(data: Sequence[types.Datum]) -> list[types.Datum]:
    """The custom loss's forward data: datums without ``weights`` get zeros, as Fireworks does."""
    out = []
    for d in data:
        if "weights" in d.loss_fn_inputs:
            out.append(d)
            continue
        target = d.loss_fn_inputs["target_tokens"]
        zeros = types.TensorData(data=[0.0] * len(target.data), dtype="float32", shape=target.shape)
        out.append(
            types.Datum(model_input=d.model_input, loss_fn_inputs={**d.loss_fn_inputs, "weights": zeros})
        )
    return out


def linearize(
    data: Sequence[types.Datum], fn: Any, fwd: types.ForwardBackwardOutput
) -> tuple[list[types.Datum], dict[str, float]]:
    """Run the user's loss on the forward's logprobs (torch, in a worker thread): the backward's datums
    carry ``weights = -d loss / d logprobs``, so the trainer's ``sum(-logprob * weight)`` has the
    custom loss's gradient."""
    import torch

    logprobs = []
    for out in fwd.loss_fn_outputs:
        lp = torch.tensor(out["logprobs"].data)
        if out["logprobs"].shape is not None:
            lp = lp.reshape(out["logprobs"].shape)
        logprobs.append(lp.clone().detach().requires_grad_(True))
    loss, metrics = fn(list(data), logprobs)
    loss.backward()
    linear = []
    for d, lp in zip(data, logprobs, strict=True):
        if lp.grad is None:
            raise FatalError("forward_backward_custom: the loss has no gradient for a datum's logprobs")
        linear.append(
            types.Datum(
                model_input=d.model_input,
                loss_fn_inputs={
                    "target_tokens": d.loss_fn_inputs["target_tokens"],
                    "weights": types.TensorData.from_torch(-lp.grad.detach().to(torch.float32)),
                },
            )
        )
    return linear, {k: float(v) for k, v in metrics.items()}
