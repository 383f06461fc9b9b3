"""`hotloop serve deployment` under hostile input (run under a 512-descriptor limit): each class of
issue 13 is a 4xx naming the field, the deployment keeps answering at once, RSS stays bounded."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from engine.local.models import load_model
from engine.weights import snapshot as snap

from .support import (
    Target,
    assert_rejected,
    assert_still_serving,
    bounded_growth,
    closed_by_server,
    gzip_bomb,
    half_open,
    nested,
)

HOT_LOAD = "/hot_load/v1/models/hot_load"


@pytest.fixture(scope="module")
def http(deployment_proc: Target) -> Any:
    with deployment_proc.client() as client:
        yield client


def _complete(http: httpx.Client, **body: Any) -> httpx.Response:
    return http.post("/v1/completions", json={"prompt": [5, 6, 7], "max_tokens": 2, **body})


def test_the_deployment_refuses_requests_without_its_key(deployment_proc: Target) -> None:
    with httpx.Client(base_url=deployment_proc.url, timeout=10) as anon:
        assert anon.get("/health").status_code == 200  # liveness and metrics stay open
        r = anon.post("/v1/completions", json={"prompt": [1], "max_tokens": 1})
        assert r.status_code == 401
        assert anon.post(HOT_LOAD, json={"identity": "x"}).status_code == 401
        r = anon.post("/v1/completions", json={}, headers={"Authorization": b"Bearer \xff\xfe"})
        assert_rejected(r, 400, "header Authorization")


def test_text_prompts_are_capped_before_tokenizing(
    deployment_proc: Target, http: httpx.Client, measurements: dict[str, Any]
) -> None:
    with bounded_growth(deployment_proc, "deployment 3 MB text prompt", measurements):
        answered: list[float] = []
        # /health must be answered while the huge prompt is being refused, not after it.
        probe = threading.Thread(target=lambda: answered.append(assert_still_serving(deployment_proc)))
        r_holder: list[httpx.Response] = []
        big = threading.Thread(target=lambda: r_holder.append(_complete(http, prompt="word " * 600_000)))
        big.start()
        probe.start()
        big.join(60)
        probe.join(60)
        assert answered, "health was not answered while a large prompt was being handled"
        assert_rejected(r_holder[0], 400, "prompt")
        ok = _complete(http, prompt="hello " * 50)
        assert ok.status_code == 200, ok.text


def test_stop_lists_and_sampling_parameters_are_bounded(
    deployment_proc: Target, http: httpx.Client, measurements: dict[str, Any]
) -> None:
    with bounded_growth(
        deployment_proc, "deployment 100k stop strings, NaN/negative temperature, top_p 5", measurements
    ):
        assert_rejected(_complete(http, stop=["ab"] * 100_000), 400, "stop")
        assert_rejected(_complete(http, stop="x" * 10_000), 400, "stop")
        assert_rejected(_complete(http, stop_token_ids=list(range(5000))), 400, "stop_token_ids")
        assert_rejected(_complete(http, temperature=-1), 400, "temperature")
        assert_rejected(_complete(http, top_p=5), 400, "top_p")
        raw = b'{"prompt": [5], "max_tokens": 2, "temperature": NaN}'
        r = http.post("/v1/completions", content=raw, headers={"Content-Type": "application/json"})
        assert_rejected(r, 400, "NaN")
        assert _complete(http, stop=["\n"] * 32).status_code == 200


def test_malformed_bodies_and_headers_are_4xx(
    deployment_proc: Target, http: httpx.Client, measurements: dict[str, Any]
) -> None:
    json_headers = {"Content-Type": "application/json"}
    with bounded_growth(
        deployment_proc, "deployment gzip 1 GB in 1 MB, nested JSON, surrogates", measurements
    ):
        r = http.post(
            "/v1/completions", content=gzip_bomb(), headers={**json_headers, "Content-Encoding": "gzip"}
        )
        assert_rejected(r, 413, "body")
        assert_rejected(http.post("/v1/completions", content=nested(), headers=json_headers), 400, "nested")
        r = http.post("/v1/completions", content=b'{"prompt": "a\\ud800b"}', headers=json_headers)
        assert_rejected(r, 400, "prompt")
        r = http.post("/v1/completions", content=b"\xff\xfe{}", headers=json_headers)
        assert_rejected(r, 400, "body")
        assert_rejected(_complete(http, max_tokens="\u0661\u0662"), 400, "max_tokens")  # Arabic-Indic 12
        assert_rejected(_complete(http, seed=2**80), 400, "seed")
        r = http.post("/v1/completions", json={"prompt": [1]}, headers={"x-request-id": "a" * 5000})
        assert_rejected(r, 400, "x-request-id")
        r = http.post("/v1/completions", content=b"{}", headers={**json_headers, "Content-Encoding": "br"})
        assert_rejected(r, 415, "Content-Encoding")


def test_hot_load_validates_identity_first_and_never_follows_links(
    deployment_proc: Target, http: httpx.Client, tmp_path: Path, tiny_model_dir: Path
) -> None:
    # ("run/name" is a per-run identity and valid; deeper or dotted paths are not.)
    for identity in ("../x", "/etc/passwd", "a/b/c", "../a/b", "a/../b", ""):
        assert_rejected(http.post(HOT_LOAD, json={"identity": identity}), 400, "identity")
    # Plant a snapshot outside the bucket and link it in, and a manifest whose payload points out.
    assert deployment_proc.stderr is not None
    root = deployment_proc.stderr.parent  # the fixture's dir, holding the bucket
    outside = tmp_path / "outside"
    state = {k: v.detach().clone() for k, v in load_model(tiny_model_dir).state_dict().items()}
    snap.write_base(outside, "real", state, "tiny")
    os.symlink(outside / "real", root / "bucket" / "linked")
    snap.write_base(root / "bucket", "escaping", state, "tiny")
    manifest = root / "bucket" / "escaping" / "manifest.json"
    data = json.loads(manifest.read_text())
    data["payload"] = "../../outside/real/weights.safetensors"
    manifest.write_text(json.dumps(data))
    for identity, needle in (("linked", "symlinks"), ("escaping", "unknown payload")):
        assert http.post(HOT_LOAD, json={"identity": identity}).status_code == 200
        for _ in range(500):
            stage = http.get(HOT_LOAD).json()["replicas"][0]["loading_state"]
            if stage["stage"] != "loading":
                break
            time.sleep(0.02)
        assert stage["stage"] == "error" and needle in stage["error_message"], stage


def test_slowloris_cannot_exhaust_connections_or_flood_the_log(
    deployment_proc: Target, measurements: dict[str, Any]
) -> None:
    assert deployment_proc.stderr is not None
    host, port = urlsplit(deployment_proc.url).hostname, urlsplit(deployment_proc.url).port
    assert host is not None and port is not None
    log_before = deployment_proc.stderr.stat().st_size
    with (
        bounded_growth(
            deployment_proc, "deployment 600 half-sent requests under a 512-fd limit", measurements
        ),
        half_open(host, port, 600) as socks,
    ):
        # Past the cap the oldest stalled connections are closed; a normal request still gets in.
        assert_still_serving(deployment_proc)
        assert closed_by_server(socks[0], within_s=5)
    grown = deployment_proc.stderr.stat().st_size - log_before
    measurements["deployment slowloris stderr growth bytes"] = grown
    assert grown < 20_000, f"{grown} bytes of log for 600 stalled connections"
