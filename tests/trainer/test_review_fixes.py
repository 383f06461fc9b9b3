"""Review fixes on the embedded trainer: JSON numbers that overflow float32 are refused naming the
field, checkpoint TTLs are recorded and answered (not enforced), and loading a checkpoint by its
bare name (which globs the state dir off the event loop) works for both load_weights forms."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import numpy as np
import pytest
import tinker

from engine.local.trainer import ServerThread
from engine.local.trainer.config import TrainerBadRequest
from engine.local.trainer.json_dialect import decode_tensor
from engine.local.trainer.runs import MAX_TTL_S

from .helpers import EXAMPLE, Raw


@pytest.fixture(scope="module")
def model(raw: Raw) -> str:
    return raw.model(raw.session(), rank=0)


def _body(model_id: str, weights: list[Any]) -> dict[str, Any]:
    n = len(EXAMPLE) - 1
    return {
        "forward_backward_input": {
            "data": [
                {
                    "model_input": {"chunks": [{"type": "encoded_text", "tokens": EXAMPLE[:-1]}]},
                    "loss_fn_inputs": {
                        "target_tokens": {"data": EXAMPLE[1:], "dtype": "int64", "shape": [n]},
                        "weights": {"data": weights, "dtype": "float32", "shape": [n]},
                    },
                }
            ],
            "loss_fn": "cross_entropy",
        },
        "model_id": model_id,
        "seq_id": 0,
    }


def test_float32_overflow_is_refused_naming_the_field() -> None:
    for bad in (1e39, -1e39, 10**40):
        with pytest.raises(TrainerBadRequest, match=r"w\.data holds .* not a finite float32"):
            decode_tensor({"data": [1.0, bad], "dtype": "float32", "shape": [2]}, "w", 2, [10**6])
    with pytest.raises(TrainerBadRequest, match=r"w\.data holds a value outside the range of float32"):
        decode_tensor({"data": [10**400], "dtype": "float32"}, "w", 1, [10**6])
    # The largest finite float32 still passes, and sparse values are checked the same way.
    ok = decode_tensor({"data": [3.4e38], "dtype": "float32", "shape": [1]}, "w", 1, [10**6])
    assert np.isfinite(ok).all()
    sparse = {"data": [1e39], "dtype": "float32", "shape": [1, 1]}
    sparse |= {"sparse_crow_indices": [0, 1], "sparse_col_indices": [0]}
    with pytest.raises(TrainerBadRequest, match=r"s\.data holds"):
        decode_tensor(sparse, "s", 1, [10**6])


def test_float32_overflow_over_http_is_a_400(raw: Raw, model: str) -> None:
    n = len(EXAMPLE) - 1
    r = raw.post("/forward_backward", _body(model, [1.0] * (n - 1) + [1e39]))
    assert r.status_code == 400, r.text
    assert "loss_fn_inputs['weights'].data" in r.json()["detail"] and "finite" in r.json()["detail"]


def _listed(rest: tinker.RestClient, run_id: str) -> dict[str, Any]:
    return {c.checkpoint_id: c for c in rest.list_checkpoints(run_id).result().checkpoints}


def test_checkpoint_ttls_are_recorded_and_answered(trainer: ServerThread, raw: Raw) -> None:
    svc = tinker.ServiceClient(base_url=trainer.url, api_key="tml-test")
    rest = tinker.RestClient(base_url=trainer.url, api_key="tml-test")
    try:
        tc = svc.create_lora_training_client(base_model="tiny", rank=2).result()
        state = tc.save_state("ttl-state").result().path
        sampler = tc.save_weights_for_sampler("ttl-sampler").result().path
        listed = _listed(rest, tc.model_id)
        assert listed["weights/ttl-state"].expires_at is None
        before = time.time()
        rest.set_checkpoint_ttl_from_tinker_path(state, 7200).result()
        rest.set_checkpoint_ttl_from_tinker_path(sampler, 3600).result()
        listed = _listed(rest, tc.model_id)
        expires: datetime | None = listed["weights/ttl-state"].expires_at
        assert expires is not None and before + 7200 - 5 <= expires.timestamp() <= time.time() + 7200 + 5
        expires = listed["sampler_weights/ttl-sampler"].expires_at
        assert expires is not None and abs(expires.timestamp() - (before + 3600)) < 60
        # The record is no checkpoint of its own, and the run's view answers it too.
        assert set(listed) == {"weights/ttl-state", "sampler_weights/ttl-sampler"}
        run = rest.get_training_run(tc.model_id).result()
        assert run.last_checkpoint is not None and run.last_checkpoint.expires_at is not None
        # null removes it; out-of-range values are a 400 naming the field.
        rest.set_checkpoint_ttl_from_tinker_path(state, None).result()
        assert _listed(rest, tc.model_id)["weights/ttl-state"].expires_at is None
        url = f"/training_runs/{tc.model_id}/checkpoints/weights/ttl-state/ttl"
        for bad in (0, MAX_TTL_S + 1, "3600", True, 2**70):
            r = raw.http.put(url, json={"ttl_seconds": bad})
            assert r.status_code == 400 and "ttl_seconds" in r.json()["detail"], (bad, r.text)
        r = raw.http.put(
            f"/training_runs/{tc.model_id}/checkpoints/weights/never/ttl", json={"ttl_seconds": 60}
        )
        assert r.status_code == 404
        # A deleted checkpoint takes its TTL with it: a new one of that name starts without.
        rest.set_checkpoint_ttl_from_tinker_path(state, 7200).result()
        rest.delete_checkpoint_from_tinker_path(state).result()
        tc.save_state("ttl-state").result()
        assert _listed(rest, tc.model_id)["weights/ttl-state"].expires_at is None
    finally:
        svc.close("success").result()


def test_load_weights_by_bare_name_in_both_forms(raw: Raw) -> None:
    session = raw.session()
    model_id = raw.model(session, rank=4)
    saved = raw.ok(
        "/save_weights", {"model_id": model_id, "path": "bare-name", "seq_id": 1, "type": "save_weights"}
    )
    path = raw.result(saved["request_id"]).json()["path"]
    legacy = {"model_id": model_id, "path": "bare-name", "seq_id": 2, "type": "load_weights"}
    assert raw.result(raw.ok("/load_weights", legacy)["request_id"]).json()["path"] == path
    create = {"session_id": session, "model_seq_id": 1, "path": "bare-name", "type": "load_weights"}
    answer = raw.ok("/load_weights", create)
    loaded = raw.result(answer["request_id"]).json()
    assert loaded["path"] == path and loaded["model_id"] == answer["model_id"] != model_id
    r = raw.post("/load_weights", {**create, "model_seq_id": 2, "path": "never-saved"})
    assert r.status_code == 404 and "no checkpoint named 'never-saved'" in r.json()["detail"]
    r = raw.post("/load_weights", {**create, "model_seq_id": 2, "path": 7})
    assert r.status_code == 400 and "path" in r.json()["detail"]
