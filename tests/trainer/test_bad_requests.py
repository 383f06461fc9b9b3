"""Bad requests get a clear 4xx (or a user-category future error) and the service keeps serving."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pytest
from tinker.proto import tinker_public_pb2 as pb

from engine.local.trainer import ServerThread, serve_in_thread

from .helpers import EXAMPLE, Raw, datum, fwdbwd_body, on_loop


@pytest.fixture(scope="module")
def model(raw: Raw) -> str:
    return raw.model(raw.session(), rank=0)


def _still_serving(raw: Raw, model_id: str) -> None:
    assert raw.http.get("/healthz").json() == {"status": "ok"}
    info = raw.ok("/get_info", {"model_id": model_id, "type": "get_info"})
    assert info["model_id"] == model_id


def _next_seq(trainer: ServerThread, model_id: str) -> int:
    return int(on_loop(trainer, lambda: trainer.service.models[model_id].queue.next_seq_id))


def _forward_ok(raw: Raw, trainer: ServerThread, model_id: str) -> None:
    fut = raw.proto(
        "/forward_backward", fwdbwd_body(model_id, _next_seq(trainer, model_id), [datum(EXAMPLE)], True)
    )
    assert fut.status_code == 200, fut.text
    assert raw.result(fut.json()["request_id"]).headers["content-type"] == "application/x-protobuf"


def _tensor(arr: np.ndarray, dtype: int) -> pb.Tensor:
    t = pb.Tensor(dense=arr.tobytes(), dtype=dtype)
    t.shape.extend(arr.shape)
    return t


def _proto_body(model_id: str, seq_id: int, targets: pb.Tensor, weights: pb.Tensor) -> bytes:
    msg = pb.ForwardBackwardRequest(model_id=model_id, seq_id=seq_id, loss_fn="cross_entropy")
    d = msg.data.add()
    d.model_input.add().encoded_text.tokens = np.asarray(EXAMPLE[:-1], np.int32).tobytes()
    d.loss_fn_inputs["target_tokens"].CopyFrom(targets)
    d.loss_fn_inputs["weights"].CopyFrom(weights)
    return msg.SerializeToString()


def test_unknown_model_id(raw: Raw, trainer: ServerThread, model: str) -> None:
    r = raw.proto("/forward_backward", fwdbwd_body("nope:train:9", 1, [datum(EXAMPLE)]))
    assert r.status_code == 404 and "unknown model_id 'nope:train:9'" in r.json()["detail"]
    r = raw.post("/optim_step", {"model_id": "nope", "seq_id": 1, "adam_params": {"learning_rate": 1e-3}})
    assert r.status_code == 404
    _still_serving(raw, model)


def test_wrong_dtype_and_shape(raw: Raw, trainer: ServerThread, model: str) -> None:
    n = len(EXAMPLE) - 1
    good_t = _tensor(np.asarray(EXAMPLE[1:], np.int64), pb.DTYPE_INT64)
    good_w = _tensor(np.ones(n, np.float32), pb.DTYPE_FLOAT32)
    seq = _next_seq(trainer, model)
    bad_dtype = _proto_body(
        model, seq, _tensor(np.asarray(EXAMPLE[1:], np.float32), pb.DTYPE_FLOAT32), good_w
    )
    r = raw.proto("/forward_backward", bad_dtype)
    assert r.status_code == 400 and "loss_fn_inputs['target_tokens'] must be int64" in r.json()["detail"]
    bad_shape = _proto_body(model, seq, good_t, _tensor(np.ones(n + 2, np.float32), pb.DTYPE_FLOAT32))
    r = raw.proto("/forward_backward", bad_shape)
    assert r.status_code == 400 and "loss_fn_inputs['weights'] has shape [9]" in r.json()["detail"]
    lying = _tensor(np.ones(n, np.float32), pb.DTYPE_FLOAT32)
    lying.shape[:] = [n + 1]
    r = raw.proto("/forward_backward", _proto_body(model, seq, good_t, lying))
    assert r.status_code == 400 and "needs 8 elements" in r.json()["detail"]
    out_of_vocab = _tensor(np.full(n, 5000, np.int64), pb.DTYPE_INT64)
    r = raw.proto("/forward_backward", _proto_body(model, seq, out_of_vocab, good_w))
    assert r.status_code == 400 and "out of range" in r.json()["detail"]
    r = raw.post("/optim_step", {"model_id": model, "seq_id": seq, "adam_params": {"learning_rate": "fast"}})
    assert r.status_code == 400 and "adam_params.learning_rate" in r.json()["detail"]
    _forward_ok(raw, trainer, model)


def test_malformed_protobuf_and_json(raw: Raw, trainer: ServerThread, model: str) -> None:
    r = raw.proto("/forward_backward", b"\xff\xff\xff\xff\x0f")
    assert r.status_code == 400 and "malformed protobuf" in r.json()["detail"]
    r = raw.http.post("/optim_step", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["detail"]
    r = raw.proto("/forward_backward", fwdbwd_body(model, _next_seq(trainer, model), [datum(EXAMPLE)])[:-3])
    assert r.status_code == 400
    _forward_ok(raw, trainer, model)


def test_oversized_body(raw: Raw, trainer: ServerThread, model: str) -> None:
    big = fwdbwd_body(model, _next_seq(trainer, model), [datum(EXAMPLE)] * 40_000)
    assert len(big) > trainer.service.config.max_body_bytes
    r = raw.proto("/forward_backward", big)
    assert r.status_code == 413 and "request body too large" in r.json()["detail"]
    _forward_ok(raw, trainer, model)


def test_skipped_and_reused_seq_ids(raw: Raw, trainer: ServerThread, model: str) -> None:
    seq = _next_seq(trainer, model)
    ahead = raw.proto("/forward_backward", fwdbwd_body(model, seq + 2, [datum(EXAMPLE)], True))
    assert ahead.status_code == 200  # held: a missing seq_id may still arrive (parallel chunks do)
    out = raw.result(ahead.json()["request_id"]).json()
    assert out["category"] == "user" and f"seq_id(s) [{seq}, {seq + 1}]" in out["error"]
    assert "never arrived" in out["error"]
    # Ordering resumes after the failed request; a used seq_id is refused at once.
    assert _next_seq(trainer, model) == seq + 3
    r = raw.proto("/forward_backward", fwdbwd_body(model, seq, [datum(EXAMPLE)], True))
    assert r.status_code == 400 and "already used" in r.json()["detail"]
    _forward_ok(raw, trainer, model)


def test_path_traversal_names(raw: Raw, trainer: ServerThread, model: str) -> None:
    seq = _next_seq(trainer, model)
    for name in ("../../etc/passwd", "..", "a/b", ".hidden", ""):
        r = raw.post("/save_weights", {"model_id": model, "path": name, "seq_id": seq})
        assert r.status_code == 400, (name, r.text)
        r = raw.post("/save_weights_for_sampler", {"model_id": model, "path": name, "seq_id": seq})
        assert r.status_code == 400, (name, r.text)
    r = raw.post(
        "/save_weights_for_sampler",
        {"model_id": model, "path": "ok", "seq_id": seq, "parent_snapshot_identity": "../x"},
    )
    assert r.status_code == 400 and "parent_snapshot_identity" in r.json()["detail"]
    for path in ("tinker://../weights/x", "tinker://run/weights/../../x", "file:///etc/passwd"):
        r = raw.post("/load_weights", {"model_id": model, "seq_id": seq, "path": path, "optimizer": False})
        assert r.status_code == 400, (path, r.text)
    assert not list(trainer.service.state_dir.parent.glob("etc"))
    _forward_ok(raw, trainer, model)


def test_futures_unknown_and_expired(raw: Raw, trainer: ServerThread, model: str) -> None:
    r = raw.post("/retrieve_future", {"request_id": "never-issued"})
    assert r.status_code == 404
    fut = raw.proto(
        "/forward_backward", fwdbwd_body(model, _next_seq(trainer, model), [datum(EXAMPLE)], True)
    )
    rid = fut.json()["request_id"]
    assert raw.result(rid).status_code == 200
    assert on_loop(trainer, lambda: trainer.service.store.sweep()) >= 1  # the fixture's grace period is 0
    r = raw.post("/retrieve_future", {"request_id": rid})
    assert r.status_code == 410 and "expired" in r.json()["detail"]


def test_other_bad_requests(raw: Raw, trainer: ServerThread, model: str) -> None:
    session = raw.session()
    bad_loss = pb.ForwardBackwardRequest()
    bad_loss.ParseFromString(fwdbwd_body(model, _next_seq(trainer, model), [datum(EXAMPLE)]))
    bad_loss.loss_fn = "telepathy"
    r = raw.proto("/forward_backward", bad_loss.SerializeToString())
    assert r.status_code == 400 and "loss_fn 'telepathy' is not supported" in r.json()["detail"]
    r = raw.post("/create_model", {"session_id": session, "model_seq_id": 0, "base_model": "gpt-9"})
    assert r.status_code == 400 and "base_model 'gpt-9'" in r.json()["detail"]
    r = raw.post("/create_model", {"session_id": "ghost", "model_seq_id": 0, "base_model": "tiny"})
    assert r.status_code == 404
    r = raw.post(
        "/asample", {"sampling_session_id": "ghost", "prompt": {"chunks": []}, "sampling_params": {}}
    )
    assert r.status_code == 404
    r = raw.post(
        "/load_weights",
        {
            "session_id": session,
            "model_seq_id": 1,
            "path": f"tinker://{model}/weights/missing",
            "optimizer": True,
        },
    )
    assert r.status_code == 404 and "not found" in r.json()["detail"]
    raw.ok(f"/sessions/{session}/finish", {"reason": {"type": "success"}})
    assert raw.post("/session_heartbeat", {"session_id": session}).status_code == 410
    _still_serving(raw, model)


def test_api_key_is_required_when_configured(trainer: ServerThread, tmp_path: Path) -> None:
    config = replace(trainer.service.config, bucket=tmp_path / "bucket", api_key="tml-secret")
    with serve_in_thread(config) as locked, httpx.Client(base_url=locked.url + "/api/v1") as http:
        assert http.get("/healthz").status_code == 200
        r = http.post("/create_session", json={})
        assert r.status_code == 401 and "X-API-Key" in r.json()["detail"]
        assert http.post("/create_session", json={}, headers={"X-API-Key": "tml-wrong"}).status_code == 401
        assert http.post("/create_session", json={}, headers={"X-API-Key": "tml-secret"}).status_code == 200


def test_zstd_bodies_and_sampling_validation(raw: Raw, trainer: ServerThread, model: str) -> None:
    import zstandard

    body = fwdbwd_body(model, _next_seq(trainer, model), [datum(EXAMPLE)], True)
    headers = {"Content-Type": "application/x-protobuf", "Content-Encoding": "zstd"}
    r = raw.http.post("/forward_backward", content=zstandard.ZstdCompressor().compress(body), headers=headers)
    assert r.status_code == 200 and raw.result(r.json()["request_id"]).status_code == 200
    r = raw.http.post("/forward_backward", content=b"not zstd at all", headers=headers)
    assert r.status_code == 400 and "zstd" in r.json()["detail"]

    session = raw.session()
    sid = raw.ok(
        "/create_sampling_session",
        {"session_id": session, "sampling_session_seq_id": 0, "base_model": "tiny"},
    )["sampling_session_id"]
    assert raw.http.get(f"/samplers/{sid}").json() == {
        "sampler_id": sid,
        "base_model": "tiny",
        "model_path": None,
    }
    prompt = {"chunks": [{"type": "encoded_text", "tokens": [5, 6, 7]}]}
    bad = [
        ({"max_tokens": None}, "max_tokens"),
        ({"max_tokens": 2000}, "exceeds"),
        ({"max_tokens": 4, "stop": [1.5]}, "stop"),
        ({"max_tokens": 4, "seed": 2**64}, "sampling_params.seed"),
    ]
    for params, needle in bad:
        r = raw.post("/asample", {"sampling_session_id": sid, "prompt": prompt, "sampling_params": params})
        assert r.status_code == 400 and needle in r.json()["detail"], r.text
    for extra in ({"topk_prompt_logprobs": "many"}, {"topk_sample_logprobs": -1}):
        body = {"sampling_session_id": sid, "prompt": prompt, "sampling_params": {"max_tokens": 2}, **extra}
        r = raw.post("/asample", body)
        assert r.status_code == 400 and next(iter(extra)) in r.json()["detail"], r.text
    r = raw.post(
        "/asample",
        {
            "sampling_session_id": sid,
            "prompt": {"chunks": [{"tokens": [9999]}]},
            "sampling_params": {"max_tokens": 2},
        },
    )
    assert r.status_code == 400 and "out of range" in r.json()["detail"]
    ok = raw.ok(
        "/asample",
        {
            "sampling_session_id": sid,
            "prompt": prompt,
            "num_samples": 2,
            "sampling_params": {"max_tokens": 3, "seed": 7, "temperature": 0.0},
        },
    )
    assert len(ok["sample_sequence_ids"]) == 2
    assert raw.result(ok["request_id"]).headers["content-type"] == "application/x-protobuf"
