"""Sampler snapshots through the service: base then delta (the contract's save_weights_for_sampler
extension, sent raw since the official client's request model forbids extra fields)."""

from __future__ import annotations

import torch
from tinker import types

from engine.local.trainer import ServerThread
from engine.weights.snapshot import materialize, read_manifest

from .helpers import EXAMPLE, Raw, datum, fwdbwd_body


def _train_step(raw: Raw, model_id: str, seq: int) -> int:
    fut = raw.proto("/forward_backward", fwdbwd_body(model_id, seq, [datum(EXAMPLE)]))
    assert fut.status_code == 200, fut.text
    op = raw.ok(
        "/optim_step",
        {
            "model_id": model_id,
            "seq_id": seq + 1,
            "type": "optim_step",
            "adam_params": {"learning_rate": 1e-3},
        },
    )
    assert raw.result(fut.json()["request_id"]).headers["content-type"].startswith("application/x-protobuf")
    assert "optimizer_step:max" in raw.result(op["request_id"]).json()["metrics"]
    return seq + 2


def _snapshot(raw: Raw, model_id: str, seq: int, name: str, **extra: object) -> dict:
    body = {
        "model_id": model_id,
        "path": name,
        "seq_id": seq,
        "kind": "snapshot",
        "type": "save_weights_for_sampler",
        **extra,
    }
    out = raw.result(raw.ok("/save_weights_for_sampler", body)["request_id"]).json()
    assert "error" not in out, out
    return out


def test_base_then_delta_materializes_to_the_trainer_weights(trainer: ServerThread, raw: Raw) -> None:
    session = raw.session()
    model_id = raw.model(session, rank=0)
    seq = _train_step(raw, model_id, 1)
    base = _snapshot(raw, model_id, seq, "snap-0", checkpoint_type="base")
    assert base["checkpoint_type"] == "base" and base["parent_snapshot_identity"] is None
    assert base["path"] == f"tinker://{model_id}/sampler_weights/snap-0"
    seq = _train_step(raw, model_id, seq + 1)
    delta = _snapshot(raw, model_id, seq, "snap-1", checkpoint_type="delta")
    # Snapshots are kept per run: identity <run>/<name>, in the run's folder of the bucket.
    snap0, snap1 = f"{model_id}/snap-0", f"{model_id}/snap-1"
    assert base["snapshot_name"] == snap0
    assert delta["checkpoint_type"] == "delta" and delta["parent_snapshot_identity"] == snap0
    assert 0 < delta["size_bytes"] < base["size_bytes"] and delta["encode_seconds"] >= 0

    bucket = trainer.service.config.bucket
    assert (bucket / model_id / "snap-1" / "manifest.json").exists()
    assert read_manifest(bucket, snap1).parent == snap0
    _, got = materialize(bucket, snap1)
    want = trainer.service.models[model_id].require_state().sampler_state()
    assert set(got) == set(want)
    for k in want:
        assert torch.equal(got[k].view(torch.int32), want[k].view(torch.int32)), k

    info = raw.http.get(f"/hotloop/models/{model_id}").json()
    assert info == {
        "model_id": model_id,
        "base_model": "tiny",
        "lora_rank": 0,
        "optimizer_steps": 2,
        "last_sampler_snapshot": snap1,
    }

    # An explicit parent that is not the one in memory is materialized from the bucket; a bare name
    # means that name in this run.
    seq = _train_step(raw, model_id, seq + 1)
    again = _snapshot(
        raw, model_id, seq, "snap-2", checkpoint_type="delta", parent_snapshot_identity="snap-0"
    )
    assert again["parent_snapshot_identity"] == snap0
    _, got2 = materialize(bucket, f"{model_id}/snap-2")
    want2 = trainer.service.models[model_id].require_state().sampler_state()
    assert all(torch.equal(got2[k], want2[k]) for k in want2)


def test_sampling_from_a_named_snapshot_matches_the_trainer(trainer: ServerThread) -> None:
    import tinker

    svc = tinker.ServiceClient(base_url=trainer.url, api_key="tml-test")
    tc = svc.create_lora_training_client(base_model="tiny", rank=4).result()
    tc.forward_backward([datum(EXAMPLE)], "cross_entropy")
    tc.optim_step(types.AdamParams(learning_rate=1e-2)).result()
    path = tc.save_weights_for_sampler("lora-snap").result().path
    lora_identity = f"{tc.model_id}/lora-snap"
    assert read_manifest(trainer.service.config.bucket, lora_identity).kind == "base"  # LoRA: merged base
    sc = svc.create_sampling_client(model_path=path).result()
    prompt = types.ModelInput.from_ints(EXAMPLE)
    lps = sc.compute_logprobs(prompt).result()
    assert lps[0] is None
    trained = tc.forward([datum(EXAMPLE)], "cross_entropy").result().loss_fn_outputs[0]["logprobs"].tolist()
    assert max(abs(a - b) for a, b in zip(lps[1:], trained, strict=True)) < 1e-4
    res = sc.sample(
        prompt,
        3,
        types.SamplingParams(max_tokens=4, temperature=0.7, top_k=50, top_p=0.9, seed=3),
        include_prompt_logprobs=True,
        topk_prompt_logprobs=2,
    ).result()
    assert len(res.sequences) == 3 and all(len(s.tokens) == len(s.logprobs or []) for s in res.sequences)
    assert res.topk_prompt_logprobs is not None and len(res.topk_prompt_logprobs) == len(EXAMPLE)
    stopped = sc.sample(
        prompt, 1, types.SamplingParams(max_tokens=8, stop=[int(t) for t in range(1024)])
    ).result()
    assert stopped.sequences[0].stop_reason == "stop" and len(stopped.sequences[0].tokens) == 1
    svc.close("success").result()


def test_a_resumed_model_deltas_against_its_last_snapshot(trainer: ServerThread, raw: Raw) -> None:
    session = raw.session()
    model_id = raw.model(session, rank=0)
    seq = _train_step(raw, model_id, 1)
    _snapshot(raw, model_id, seq, "resume-0")
    saved = raw.ok(
        "/save_weights", {"model_id": model_id, "path": "ck", "seq_id": seq + 1, "type": "save_weights"}
    )
    assert raw.result(saved["request_id"]).json()["path"] == f"tinker://{model_id}/weights/ck"
    body = {
        "session_id": session,
        "model_seq_id": 1,
        "path": f"tinker://{model_id}/weights/ck",
        "optimizer": True,
    }
    loaded = raw.result(raw.ok("/load_weights", body)["request_id"]).json()
    resumed = loaded["model_id"]
    assert resumed == f"{session}:train:1"
    # The resumed model is a new run: its delta's parent is the first run's snapshot.
    first = f"{model_id}/resume-0"
    assert raw.http.get(f"/hotloop/models/{resumed}").json()["last_sampler_snapshot"] == first
    seq = _train_step(raw, resumed, 1)
    delta = _snapshot(raw, resumed, seq, "resume-1", checkpoint_type="delta")
    assert delta["checkpoint_type"] == "delta" and delta["parent_snapshot_identity"] == first
    _, got = materialize(trainer.service.config.bucket, f"{resumed}/resume-1")
    want = trainer.service.models[resumed].require_state().sampler_state()
    assert all(torch.equal(got[k], want[k]) for k in want)
    missing = {
        "model_id": resumed,
        "path": "resume-2",
        "seq_id": seq + 1,
        "checkpoint_type": "delta",
        "parent_snapshot_identity": "no-such-parent",
    }
    out = raw.result(raw.ok("/save_weights_for_sampler", missing)["request_id"]).json()
    assert out["category"] == "user" and "no-such-parent" in out["error"]


def test_unsequenced_snapshot_requests_interleave_with_the_official_client(
    trainer: ServerThread, raw: Raw
) -> None:
    """A raw save_weights_for_sampler without seq_id (how hotloop adds checkpoint_type) runs after the
    client's earlier requests and consumes no seq_id, so the client's own numbering stays valid."""
    import tinker

    svc = tinker.ServiceClient(base_url=trainer.url, api_key="tml-test")
    tc = svc.create_lora_training_client(base_model="tiny", rank=0).result()
    fb = tc.forward_backward([datum(EXAMPLE)], "cross_entropy")
    op = tc.optim_step(types.AdamParams(learning_rate=1e-3))
    base = raw.ok(
        "/save_weights_for_sampler", {"model_id": tc.model_id, "path": "mixed-0", "checkpoint_type": "base"}
    )
    fb.result()
    assert (op.result().metrics or {})["optimizer_step:max"] == 1.0
    assert raw.result(base["request_id"]).json()["checkpoint_type"] == "base"
    tc.forward_backward([datum(EXAMPLE)], "cross_entropy")
    tc.optim_step(types.AdamParams(learning_rate=1e-3)).result()
    delta = raw.result(
        raw.ok(
            "/save_weights_for_sampler",
            {"model_id": tc.model_id, "path": "mixed-1", "checkpoint_type": "delta"},
        )["request_id"]
    ).json()
    mixed0 = f"{tc.model_id}/mixed-0"
    assert delta["parent_snapshot_identity"] == mixed0 and delta["checkpoint_type"] == "delta"
    bucket = trainer.service.config.bucket
    _, got0 = materialize(bucket, mixed0)
    _, got1 = materialize(bucket, f"{tc.model_id}/mixed-1")
    want = trainer.service.models[tc.model_id].require_state().sampler_state()
    assert all(torch.equal(got1[k], want[k]) for k in want)
    assert not all(torch.equal(got0[k], want[k]) for k in want)  # the base was taken one step earlier
    assert trainer.service.hotloop_model(tc.model_id)["optimizer_steps"] == 2
    svc.close("success").result()
