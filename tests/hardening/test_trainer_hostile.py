"""`hotloop serve trainer` under hostile input: each class of issue 13 is a 4xx naming the field, the
trainer keeps answering at once, and its resident memory stays within the bound."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from tinker.proto import tinker_public_pb2 as pb

from .support import (
    Target,
    assert_rejected,
    bounded_growth,
    gzip_bomb,
    nested,
    zstd_rle_frame,
)

PROTO = {"Content-Type": "application/x-protobuf"}
TOKENS = [5, 6, 7, 8, 9, 10, 11]


def _fwdbwd(model_id: str, seq_id: int, weights: pb.Tensor | None = None) -> bytes:
    msg = pb.ForwardBackwardRequest(model_id=model_id, seq_id=seq_id, loss_fn="cross_entropy")
    msg.forward_only = True
    d = msg.data.add()
    d.model_input.add().encoded_text.tokens = np.asarray(TOKENS, np.int32).tobytes()
    targets = pb.Tensor(dense=np.asarray(TOKENS, np.int64).tobytes(), dtype=pb.DTYPE_INT64)
    targets.shape.extend([len(TOKENS)])
    d.loss_fn_inputs["target_tokens"].CopyFrom(targets)
    if weights is None:
        weights = pb.Tensor(dense=np.ones(len(TOKENS), np.float32).tobytes(), dtype=pb.DTYPE_FLOAT32)
        weights.shape.extend([len(TOKENS)])
    d.loss_fn_inputs["weights"].CopyFrom(weights)
    return msg.SerializeToString()


def _result(http: httpx.Client, request_id: str) -> httpx.Response:
    for _ in range(200):
        r = http.post("/api/v1/retrieve_future", json={"request_id": request_id})
        if (
            r.headers["content-type"].startswith("application/x-protobuf")
            or r.json().get("type") != "try_again"
        ):
            return r
    raise AssertionError(f"{request_id} never finished")


@pytest.fixture(scope="module")
def http(trainer_proc: Target) -> Any:
    with trainer_proc.client() as client:
        yield client


@pytest.fixture(scope="module")
def model(http: httpx.Client) -> str:
    session = http.post("/api/v1/create_session", json={"tags": []}).json()["session_id"]
    body = {"session_id": session, "model_seq_id": 0, "base_model": "tiny", "lora_config": {"rank": 0}}
    fut = http.post("/api/v1/create_model", json=body).json()
    assert _result(http, fut["request_id"]).status_code == 200
    return str(fut["model_id"])


def _next_seq(http: httpx.Client, model_id: str, start: int) -> int:
    """The next free seq_id at or after ``start`` (a used one answers 400 'already used ... next')."""
    r = http.post("/api/v1/optim_step", json={"model_id": model_id, "seq_id": 0, "adam_params": {}})
    return int(r.json()["detail"].rsplit(" ", 1)[-1]) if r.status_code == 400 else start


def test_the_trainer_refuses_requests_without_its_key(trainer_proc: Target) -> None:
    with httpx.Client(base_url=trainer_proc.url, timeout=10) as anon:
        assert anon.get("/api/v1/healthz").status_code == 200  # liveness stays open
        r = anon.post("/api/v1/create_session", json={})
        assert r.status_code == 401 and "X-API-Key" in r.json()["detail"]
        r = anon.post("/api/v1/create_session", json={}, headers={"X-API-Key": b"\xff\xfe"})
        assert_rejected(r, 400, "header X-API-Key")


def test_compression_bombs_stop_at_the_body_limit(
    trainer_proc: Target, http: httpx.Client, model: str, measurements: dict[str, Any]
) -> None:
    frame = zstd_rle_frame(8 << 30)  # declares and holds 8 GB in 256 KB
    with bounded_growth(trainer_proc, "trainer zstd frame declaring 8 GB", measurements):
        r = http.post(
            "/api/v1/forward_backward", content=frame, headers={**PROTO, "Content-Encoding": "zstd"}
        )
        assert_rejected(r, 413, "body")
    with bounded_growth(trainer_proc, "trainer gzip 1 GB in 1 MB", measurements):
        r = http.post(
            "/api/v1/optim_step",
            content=gzip_bomb(),
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )
        assert_rejected(r, 413, "body")


def test_seq_ids_are_bounded_and_a_gap_is_described_not_enumerated(
    trainer_proc: Target, http: httpx.Client, model: str, measurements: dict[str, Any]
) -> None:
    with bounded_growth(trainer_proc, "trainer seq_id 2**80 and far-ahead seq_ids", measurements):
        r = http.post("/api/v1/optim_step", json={"model_id": model, "seq_id": 2**80, "adam_params": {}})
        assert_rejected(r, 400, "seq_id")
        r = http.post("/api/v1/forward_backward", content=_fwdbwd(model, 2**31 - 1), headers=PROTO)
        assert_rejected(r, 429, "seq_id")  # in range but beyond the held window: retry later
        r = http.post("/api/v1/forward_backward", content=_fwdbwd(model, -5), headers=PROTO)
        assert_rejected(r, 400, "seq_id")
        seq = _next_seq(http, model, 1)
        held = http.post("/api/v1/forward_backward", content=_fwdbwd(model, seq + 200), headers=PROTO)
        assert held.status_code == 200  # held for the gap, which fails after the 0.5 s timeout
        failed = _result(http, held.json()["request_id"]).json()
        assert failed["category"] == "user" and f"[{seq}..{seq + 199}]" in failed["error"]


def _tensor(shape: list[int], dense: bytes = b"") -> pb.Tensor:
    t = pb.Tensor(dense=dense, dtype=pb.DTYPE_FLOAT32)
    t.shape.extend(shape)
    return t


def _sparse(shape: list[int]) -> pb.Tensor:
    t = pb.Tensor(dtype=pb.DTYPE_FLOAT32)
    t.shape.extend(shape)
    t.sparse_csr.crow_indices = np.zeros(shape[0] + 1, np.int64).tobytes()
    return t


def test_tensor_shapes_are_checked_before_anything_is_allocated(
    trainer_proc: Target, http: httpx.Client, model: str, measurements: dict[str, Any]
) -> None:
    n = len(TOKENS)
    with bounded_growth(
        trainer_proc, "trainer shapes 2**40, overflowing, sparse 125-byte amplifier", measurements
    ):
        for weights in (
            _tensor([2**40]),  # huge and empty
            _tensor([2**32, 2**32, 0]),  # the product wraps to 0 in int64 arithmetic
            _tensor([n, 2**62]),
            _sparse([n, 2**40]),
            _sparse([n, 2**25]),  # fits int32 dims; densifies past the request's allowance
        ):
            seq = _next_seq(http, model, 1)
            r = http.post("/api/v1/forward_backward", content=_fwdbwd(model, seq, weights), headers=PROTO)
            assert_rejected(r, 400, "loss_fn_inputs['weights']")


def test_json_edge_cases_are_4xx_naming_the_field(
    trainer_proc: Target, http: httpx.Client, model: str, measurements: dict[str, Any]
) -> None:
    json_headers = {"Content-Type": "application/json"}
    with bounded_growth(trainer_proc, "trainer nested JSON, NaN, surrogates, seeds", measurements):
        r = http.post("/api/v1/optim_step", content=nested(), headers=json_headers)
        assert_rejected(r, 400, "nested deeper")
        r = http.post("/api/v1/optim_step", content=b'{"model_id": "x", "seq_id": NaN}', headers=json_headers)
        assert_rejected(r, 400, "NaN")
        r = http.post("/api/v1/create_session", content=b'{"tags": ["\\ud800"]}', headers=json_headers)
        assert_rejected(r, 400, "tags[0]")
        session = http.post("/api/v1/create_session", json={}).json()["session_id"]
        body = {
            "session_id": session,
            "model_seq_id": 7,
            "base_model": "tiny",
            "lora_config": {"rank": 2, "seed": 2**80},
        }
        assert_rejected(http.post("/api/v1/create_model", json=body), 400, "seed")


def test_sampling_parameters_and_stop_lists_are_bounded(
    trainer_proc: Target, http: httpx.Client, measurements: dict[str, Any]
) -> None:
    session = http.post("/api/v1/create_session", json={}).json()["session_id"]
    sid = http.post(
        "/api/v1/create_sampling_session",
        json={"session_id": session, "sampling_session_seq_id": 0, "base_model": "tiny"},
    ).json()["sampling_session_id"]
    prompt = {"chunks": [{"type": "encoded_text", "tokens": TOKENS}]}

    def asample(**params: Any) -> httpx.Response:
        body = {"sampling_session_id": sid, "prompt": prompt, "sampling_params": {"max_tokens": 4, **params}}
        return http.post("/api/v1/asample", json=body)

    with bounded_growth(
        trainer_proc, "trainer asample 100k stop strings, bad temperature/top_p", measurements
    ):
        assert_rejected(asample(temperature=-1), 400, "sampling_params.temperature")
        assert_rejected(asample(top_p=5), 400, "sampling_params.top_p")
        assert_rejected(asample(stop=["ab"] * 100_000), 400, "sampling_params.stop")
        assert_rejected(asample(stop=["x" * 10_000]), 400, "sampling_params.stop[0]")
        ok = asample(stop=["\n"], temperature=0.0)
        assert ok.status_code == 200 and _result(http, ok.json()["request_id"]).status_code == 200


def test_log_lines_clip_user_values(trainer_proc: Target, http: httpx.Client) -> None:
    assert trainer_proc.stderr is not None
    r = http.post("/api/v1/create_session", json={"tags": ["t" * 1_000_000]})
    assert r.status_code == 200
    r = http.post("/api/v1/optim_step", json={"model_id": "m" * 1_000_000, "seq_id": 1, "adam_params": {}})
    assert r.status_code == 404 and len(r.content) < 8192
    time.sleep(0.2)  # stderr is written by the server process; give the lines a moment to land
    longest = max(len(line) for line in trainer_proc.stderr.read_bytes().splitlines())
    assert longest < 20_000, f"a log line of {longest} bytes"


def test_checkpoint_paths_never_follow_symlinks_out_of_the_state_dir(
    trainer_proc: Target, http: httpx.Client, tmp_path: Path
) -> None:
    assert trainer_proc.stderr is not None
    state = trainer_proc.stderr.parent / "state"  # the trainer's default: <bucket>/../state
    outside = tmp_path / "outside"
    (outside / "weights" / "victim").mkdir(parents=True)
    (outside / "weights" / "victim" / "meta.json").write_text("{}")
    state.mkdir(exist_ok=True)
    (state / "linked-run").symlink_to(outside, target_is_directory=True)
    r = http.delete("/api/v1/training_runs/linked-run/checkpoints/weights/victim")
    assert_rejected(r, 400, "linked-run/weights/victim")
    assert (outside / "weights" / "victim" / "meta.json").exists()
    assert http.get("/api/v1/training_runs/linked-run/checkpoints").status_code == 400
