"""Fireworks' JSON dialect on the embedded trainer: the same results as tinker's protobuf (one
implementation underneath), the same 4xx naming the same field for bad input, and the Fireworks-only
routes behaving as Fireworks documents (or a 501 saying why not)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from tinker import types

from engine.backends.fireworks import trainer_wire as wire
from engine.local.trainer import ServerThread

from .helpers import EXAMPLE, Raw, datum, fwdbwd_body, logprobs_of, on_loop


@pytest.fixture(scope="module")
def model(raw: Raw) -> str:
    return raw.model(raw.session(), rank=0)


def _seq(trainer: ServerThread, model_id: str) -> int:
    return int(on_loop(trainer, lambda: trainer.service.models[model_id].queue.next_seq_id))


def _json_body(model_id: str, seq_id: int, data: list[types.Datum], *, backward: bool) -> dict[str, Any]:
    return {**wire.forward_body(model_id, data, "cross_entropy", None, backward=backward), "seq_id": seq_id}


def _proto_result(raw: Raw, request_id: str) -> types.ForwardBackwardOutput:
    from tinker.proto.response_conv import deserialize_forward_backward_output

    r = raw.result(request_id)
    assert r.headers["content-type"] == "application/x-protobuf", r.text
    return deserialize_forward_backward_output(r.content)


def _json_result(raw: Raw, request_id: str) -> dict[str, Any]:
    r = raw.result(request_id)
    assert r.headers["content-type"].startswith("application/json"), r.headers
    out: dict[str, Any] = r.json()
    return out


def test_json_and_protobuf_forward_agree(raw: Raw, trainer: ServerThread, model: str) -> None:
    data = [datum(EXAMPLE), datum(EXAMPLE[:5], [0.0, 1.0, 1.0, 1.0])]
    fut = raw.proto("/forward_backward", fwdbwd_body(model, _seq(trainer, model), data, forward_only=True))
    proto = _proto_result(raw, fut.json()["request_id"])
    fut = raw.ok("/forward", _json_body(model, _seq(trainer, model), data, backward=False))
    answer = _json_result(raw, fut["request_id"])
    out = wire.forward_output(answer, "forward")
    assert answer["loss_fn_output_type"] == "ArrayRecord" and len(out.loss_fn_outputs) == 2
    for i in range(2):
        ours = np.asarray(out.loss_fn_outputs[i]["logprobs"].tolist(), np.float32)
        theirs = np.asarray(proto.loss_fn_outputs[i]["logprobs"].tolist(), np.float32)
        assert ours.shape == theirs.shape and np.array_equal(ours, theirs)
    assert out.metrics["loss:sum"] == pytest.approx(proto.metrics["loss:sum"])
    # A JSON forward_backward on the shared route, then the protobuf one, in one seq order.
    fut = raw.ok("/forward_backward", _json_body(model, _seq(trainer, model), data[:1], backward=True))
    assert wire.forward_output(_json_result(raw, fut["request_id"]), "fb").metrics["loss:sum"] > 0
    fut = raw.proto(
        "/forward_backward", fwdbwd_body(model, _seq(trainer, model), data[:1], forward_only=True)
    )
    assert logprobs_of(_proto_result(raw, fut.json()["request_id"])).size == len(EXAMPLE) - 1


def _tensor(data: list[Any], dtype: str, shape: list[int] | None = None) -> dict[str, Any]:
    return {"data": data, "dtype": dtype, "shape": shape if shape is not None else [len(data)]}


def _with_inputs(model_id: str, seq: int, **inputs: Any) -> dict[str, Any]:
    n = len(EXAMPLE) - 1
    loss_inputs = {"target_tokens": _tensor(EXAMPLE[1:], "int64"), "weights": _tensor([1.0] * n, "float32")}
    loss_inputs.update(inputs)
    return {
        "forward_backward_input": {
            "data": [
                {
                    "model_input": {"chunks": [{"type": "encoded_text", "tokens": EXAMPLE[:-1]}]},
                    "loss_fn_inputs": loss_inputs,
                }
            ],
            "loss_fn": "cross_entropy",
        },
        "model_id": model_id,
        "seq_id": seq,
    }


def test_bad_json_input_gets_the_protobuf_paths_400(raw: Raw, trainer: ServerThread, model: str) -> None:
    """Each case is also in test_bad_requests.py through protobuf, with the same message."""
    n = len(EXAMPLE) - 1
    seq = _seq(trainer, model)
    cases = [
        (
            _with_inputs(model, seq, target_tokens=_tensor([float(t) for t in EXAMPLE[1:]], "float32")),
            400,
            "loss_fn_inputs['target_tokens'] must be int64",
        ),
        (
            _with_inputs(model, seq, weights=_tensor([1.0] * (n + 2), "float32")),
            400,
            "loss_fn_inputs['weights'] has shape [9]",
        ),
        (_with_inputs(model, seq, weights=_tensor([1.0] * n, "float32", [n + 1])), 400, "needs 8 elements"),
        (_with_inputs(model, seq, weights=_tensor([1.0] * n, "bfloat16")), 400, "dtype: unsupported dtype"),
        (
            _with_inputs(model, seq, target_tokens=_tensor([5000] * n, "int64")),
            400,
            "data[0].target_tokens: token id out of range",
        ),
        (
            _with_inputs(
                model,
                seq,
                weights={
                    "data": [1.0],
                    "dtype": "float32",
                    "shape": [n, 2**40],
                    "sparse_crow_indices": [0, 1],
                },
            ),
            400,
            "sparse_col_indices go together",
        ),
        (
            _with_inputs(
                model,
                seq,
                weights={
                    "data": [1.0],
                    "dtype": "float32",
                    "shape": [n, 2],
                    "sparse_crow_indices": [0, 9],
                    "sparse_col_indices": [0],
                },
            ),
            400,
            "inconsistent sparse CSR indices",
        ),
        (_with_inputs("nope:train:9", seq), 404, "unknown model_id 'nope:train:9'"),
        ({**_with_inputs(model, seq), "seq_id": -1}, 400, "seq_id must be an integer in [0, 2**62]"),
        ({"model_id": model, "seq_id": seq}, 400, "forward_backward_input is required"),
        ({**_with_inputs(model, seq), "comms": "v2"}, 400, "comms v1 only"),
    ]
    for body, status, message in cases:
        r = raw.post("/forward_backward", body)
        assert r.status_code == status and message in r.json()["detail"], (message, r.status_code, r.text)
    image = _with_inputs(model, seq)
    image["forward_backward_input"]["data"][0]["model_input"]["chunks"] = [{"type": "image", "data": "x"}]
    r = raw.post("/forward_backward", image)
    assert r.status_code == 400 and "chunk type 'image' is not supported" in r.json()["detail"]
    for raw_body in (b"{not json", b'{"seq_id": NaN}'):
        r = raw.http.post("/forward", content=raw_body, headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and "not valid JSON" in r.json()["detail"], r.text
    # A used seq_id is refused in either dialect, and the model still trains after all of this.
    fut = raw.ok("/forward", _json_body(model, seq, [datum(EXAMPLE)], backward=False))
    assert "logprobs" in _json_result(raw, fut["request_id"])["loss_fn_outputs"][0]
    r = raw.post("/forward", _json_body(model, seq, [datum(EXAMPLE)], backward=False))
    assert r.status_code == 400 and "already used" in r.json()["detail"]


def test_fireworks_only_routes(raw: Raw, trainer: ServerThread) -> None:
    model_id = raw.model(raw.session(), rank=4)
    saved = raw.result(
        raw.ok(
            "/save_weights", {"model_id": model_id, "path": "fw-ckpt", "seq_id": 1, "type": "save_weights"}
        )["request_id"]
    ).json()
    assert saved["path"] == f"tinker://{model_id}/weights/fw-ckpt"
    assert "fw-ckpt" in raw.http.get("/list_checkpoints").json()["checkpoints"]
    for ref in ("fw-ckpt", saved["path"]):
        info = raw.ok("/weights_info", {"tinker_path": ref})
        assert info == {
            "base_model": "tiny",
            "is_lora": True,
            "lora_rank": 4,
            "train_unembed": True,
            "train_mlp": True,
            "train_attn": True,
        }
    # Fireworks' client loads checkpoints by name (it refuses URIs).
    body = {"model_id": model_id, "path": "fw-ckpt", "optimizer": True, "seq_id": 2, "type": "load_weights"}
    assert raw.result(raw.ok("/load_weights", body)["request_id"]).json()["path"] == saved["path"]
    r = raw.post("/load_weights", {**body, "path": "cross_job://other-job/fw-ckpt", "seq_id": 3})
    assert r.status_code == 501 and "cross-job" in r.json()["detail"]
    r = raw.post("/weights_info", {"tinker_path": "never-saved"})
    assert r.status_code == 404 and "no checkpoint named 'never-saved'" in r.json()["detail"]
    for route, why in (
        ("/weight_sync", "RDMA weight sync is not available"),
        ("/load_adapter", "cannot read PEFT adapters"),
        ("/create_sampling_route", "serverless gateway"),
        ("/auth/token", "issues no JWTs"),
    ):
        r = raw.post(route, {"model_id": model_id, "seq_id": 3})
        assert r.status_code == 501 and why in r.json()["detail"], (route, r.text)
    # unload_model: a future once accepted work is done; the model is gone afterwards.
    done = raw.result(raw.ok("/unload_model", {"model_id": model_id, "type": "unload_model"})["request_id"])
    assert done.json() == {"type": "unload_model", "model_id": model_id}
    r = raw.post("/forward", _json_body(model_id, 3, [datum(EXAMPLE)], backward=False))
    assert r.status_code == 404 and "unknown model_id" in r.json()["detail"]
