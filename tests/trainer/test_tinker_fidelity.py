"""What the official client and tinker-cookbook expect of a Tinker service, beyond training: per-run
snapshot namespacing, aliases, user_metadata, save_weights_external with signed URLs,
client/dynamic_config, and a log line for every 4xx."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import tinker
from tinker import types

from engine.local.trainer import ServerThread, TrainerConfig, serve_in_thread

from .helpers import EXAMPLE, Raw, datum

ALIAS = "Qwen/Qwen3-8B"


@pytest.fixture(scope="module")
def aliased(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    root = tmp_path_factory.mktemp("aliased")
    config = TrainerConfig(
        model="tiny", bucket=root / "bucket", poll_timeout_s=2.0, torch_threads=1, aliases=(ALIAS,)
    )
    with serve_in_thread(config) as thread:
        yield thread


def test_two_runs_save_the_same_name_in_their_own_namespaces(trainer: ServerThread) -> None:
    svc = tinker.ServiceClient(base_url=trainer.url, api_key="tml-test")
    try:
        paths, logprobs = [], []
        for lr in (1e-2, 5e-2):
            tc = svc.create_lora_training_client(base_model="tiny", rank=4).result()
            tc.forward_backward([datum(EXAMPLE)], "cross_entropy")
            tc.optim_step(types.AdamParams(learning_rate=lr)).result()
            paths.append(tc.save_weights_for_sampler("000002").result().path)  # same name twice
            sc = svc.create_sampling_client(model_path=paths[-1]).result()
            logprobs.append(sc.compute_logprobs(types.ModelInput.from_ints(EXAMPLE)).result()[1:])
        assert paths[0] != paths[1] and all(p.endswith("/sampler_weights/000002") for p in paths)
        assert logprobs[0] != logprobs[1]  # each path resolves to its own run's weights
        for path in paths:
            run = path.removeprefix("tinker://").split("/")[0]
            assert (trainer.service.config.bucket / run / "000002" / "manifest.json").exists()
    finally:
        svc.close("success").result()


def test_an_alias_is_served_and_echoed(aliased: ServerThread) -> None:
    svc = tinker.ServiceClient(base_url=aliased.url, api_key="tml-test")
    try:
        tc = svc.create_lora_training_client(
            base_model=ALIAS, rank=4, user_metadata={"renderer_name": "qwen3"}
        ).result()
        info = tc.get_info()
        assert info.model_data.model_name == ALIAS and Path(str(info.model_data.tokenizer_id)).is_dir()
        rest = tinker.RestClient(base_url=aliased.url, api_key="tml-test")
        run = rest.get_training_run(tc.model_id).result()
        assert run.base_model == ALIAS and run.user_metadata == {"renderer_name": "qwen3"}
        names = [m.model_name for m in rest.get_server_capabilities().result().supported_models]
        assert names == ["tiny", ALIAS]
        sc = svc.create_sampling_client(base_model=ALIAS).result()
        assert sc.get_base_model() == ALIAS
        with pytest.raises(tinker.BadRequestError, match="base_model 'Qwen/Qwen3-4B' is not served here"):
            svc.create_lora_training_client(base_model="Qwen/Qwen3-4B", rank=4).result()
    finally:
        svc.close("success").result()


def test_user_metadata_on_runs_and_checkpoints(trainer: ServerThread) -> None:
    svc = tinker.ServiceClient(base_url=trainer.url, api_key="tml-test")
    rest = tinker.RestClient(base_url=trainer.url, api_key="tml-test")
    try:
        tc = svc.create_lora_training_client(
            base_model="tiny", rank=4, user_metadata={"who": "test"}
        ).result()
        state = tc.save_state("ck", user_metadata={"kind": "state"}).result().path
        tc.save_weights_for_sampler("sw", user_metadata={"kind": "sampler"}).result()
        listed = {c.checkpoint_id: c for c in rest.list_checkpoints(tc.model_id).result().checkpoints}
        assert listed["weights/ck"].user_metadata == {"kind": "state"}
        assert listed["sampler_weights/sw"].checkpoint_type == "sampler"
        assert listed["sampler_weights/sw"].user_metadata == {"kind": "sampler"}
        run = rest.get_training_run_by_tinker_path(state).result()
        assert run.user_metadata == {"who": "test"}
        assert (
            run.last_sampler_checkpoint is not None
            and run.last_sampler_checkpoint.checkpoint_id == "sampler_weights/sw"
        )
        # A run loaded from the state carries the metadata it was created with, and remembers it
        # after its session is gone (the cookbook reads renderer_name from here on resume).
        loaded = svc.create_training_client_from_state(state, user_metadata={"who": "resumed"}).result()
        assert rest.get_training_run(loaded.model_id).result().user_metadata == {"who": "resumed"}
    finally:
        svc.close("success").result()
    assert rest.get_training_run_by_tinker_path(state).result().user_metadata == {"who": "test"}


def test_save_weights_external_and_its_signed_urls(trainer: ServerThread, raw: Raw) -> None:
    svc = tinker.ServiceClient(base_url=trainer.url, api_key="tml-test")
    rest = tinker.RestClient(base_url=trainer.url, api_key="tml-test")
    try:
        tc = svc.create_lora_training_client(base_model="tiny", rank=0).result()  # full-parameter
        path = tc.save_weights_external("export").result().path
        assert path == f"tinker://{tc.model_id}/external_weights/export"
        urls = rest.get_external_weights_urls(path).result().urls
        assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(urls)
        # Plain HTTP without an API key, as the cookbook's urllib download does.
        got = httpx.get(urls["config.json"])
        assert got.status_code == 200 and got.json()["model_type"] == "qwen3"
        tampered = urls["config.json"].replace("sig=", "sig=0")
        assert httpx.get(tampered).status_code == 404
        assert httpx.get(urls["config.json"].replace("config.json", "../../weights/x")).status_code == 404
        rest.set_checkpoint_ttl_from_tinker_path(path, 7200).result()
        with pytest.raises(tinker.BadRequestError, match="age_encryption_recipients"):
            tc.save_weights_external("bad", age_encryption_recipients=["not-a-key"]).result()
        rest.delete_checkpoint_from_tinker_path(path).result()
        assert httpx.get(urls["config.json"]).status_code == 404
    finally:
        svc.close("success").result()


def test_dynamic_config_and_every_4xx_is_logged(raw: Raw, caplog: pytest.LogCaptureFixture) -> None:
    dynamic = raw.ok("/client/dynamic_config", {"sdk_version": "0.38.0"})
    assert dynamic["sample_cancel_enabled"] is False and dynamic["refresh_interval_sec"] > 0
    caplog.set_level(logging.INFO, logger="hotloop")
    assert raw.post("/no_such_route").status_code == 404
    assert raw.post("/create_model", {"session_id": "nope"}).status_code == 404
    assert raw.http.get("/" + "x" * 1000).status_code == 404
    events = [r.msg for r in caplog.records if isinstance(r.msg, dict)]  # structlog's event dicts
    errors = [e for e in events if e.get("event") == "client_error"]
    assert [(e["method"], e["status"]) for e in errors] == [("POST", 404), ("POST", 404), ("GET", 404)]
    assert errors[0]["path"] == "/api/v1/no_such_route"
    assert "unknown session_id 'nope'" in errors[1]["detail"]
    assert len(errors[2]["path"]) == 200  # values are truncated
