"""Property tests of each server's request validation: random JSON against every route never yields
a 5xx (nor a dropped connection). Bodies mix the routes' own field names with arbitrary values, so
validation is exercised past the first "unknown field" check; numbers that would make a valid
request expensive (max_tokens, n) are drawn small."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .support import Target

LEAF = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
VALUE = st.recursive(
    LEAF,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)
SEGMENT = st.text(
    st.characters(min_codepoint=33, max_codepoint=0x2FFF, exclude_characters="/?#%"), min_size=1, max_size=12
)
SETTINGS = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

TRAINER_KEYS = [
    "session_id", "model_id", "seq_id", "model_seq_id", "base_model", "lora_config", "adam_params",
    "sampling_session_id", "sampling_session_seq_id", "prompt", "sampling_params", "num_samples",
    "request_id", "path", "optimizer", "checkpoint_type", "parent_snapshot_identity", "reason", "tags",
    "model_path", "forward_input", "forward_backward_input", "tinker_path", "comms",
]  # fmt: skip
TRAINER_POSTS = [
    "create_session", "session_heartbeat", "create_model", "get_info", "optim_step", "save_weights",
    "load_weights", "save_weights_for_sampler", "create_sampling_session", "asample", "retrieve_future",
    "forward_backward", "client/config", "telemetry", "forward", "unload_model", "weights_info",
]  # fmt: skip
DEPLOYMENT_KEYS = [
    "model", "prompt", "n", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "stop_token_ids",
    "ignore_eos", "logprobs", "top_logprobs", "echo", "stream", "stream_options", "identity",
    "incremental_snapshot_metadata", "reset_prompt_cache",
]  # fmt: skip
SMALL = {"max_tokens": st.integers(-2, 3), "n": st.integers(-1, 3), "top_logprobs": st.integers(-1, 3)}
STACK_KEYS = [
    "trainingConfig", "baseModel", "loraRank", "learningRate", "displayName", "description", "annotations",
    "minReplicaCount", "maxReplicaCount", "hotLoadTrainerJob", "hotLoadTransitionType", "name", "extraValues",
    "output_model", "trainer_job_id", "base_model", "async_promotion", "hot_load_deployment_id",
]  # fmt: skip


def _bodies(keys: list[str], small: dict[str, Any] | None = None) -> Any:
    def fix(body: dict[str, Any], draws: dict[str, Any]) -> dict[str, Any]:
        return {**body, **{k: v for k, v in draws.items() if k in body}}

    objects = st.dictionaries(st.sampled_from(keys) | st.text(max_size=8), VALUE, max_size=6)
    if small:
        objects = st.builds(fix, objects, st.fixed_dictionaries(small))
    return objects | VALUE


def _no_5xx(r: httpx.Response) -> None:
    assert r.status_code < 500, (r.request.method, r.request.url, r.status_code, r.text[:300])


@pytest.fixture(scope="module")
def trainer_http(trainer_proc: Target) -> Any:
    with trainer_proc.client() as client:
        yield client


@SETTINGS
@given(route=st.sampled_from(TRAINER_POSTS), body=_bodies(TRAINER_KEYS), segment=SEGMENT)
def test_trainer_never_answers_5xx(trainer_http: httpx.Client, route: str, body: Any, segment: str) -> None:
    _no_5xx(trainer_http.post(f"/api/v1/{route}", json=body))
    seg = quote(segment, safe="")
    _no_5xx(trainer_http.post(f"/api/v1/sessions/{seg}/finish", json=body))
    for path in (
        f"samplers/{seg}",
        f"training_runs/{seg}",
        f"training_runs/{seg}/checkpoints",
        f"hotloop/models/{seg}",
    ):
        _no_5xx(trainer_http.get(f"/api/v1/{path}"))
    _no_5xx(trainer_http.delete(f"/api/v1/training_runs/{seg}/checkpoints/weights/{seg}"))


@pytest.fixture(scope="module")
def deployment_http(deployment_proc: Target) -> Any:
    with deployment_proc.client() as client:
        yield client


@SETTINGS
@given(
    route=st.sampled_from(["/v1/completions", "/inference/v1/completions", "/hot_load/v1/models/hot_load"]),
    body=_bodies(DEPLOYMENT_KEYS, SMALL),
)
def test_deployment_never_answers_5xx(deployment_http: httpx.Client, route: str, body: Any) -> None:
    _no_5xx(deployment_http.post(route, json=body))


@pytest.fixture(scope="module")
def stack_http(stack_proc: Target) -> Any:
    with stack_proc.client() as client:
        yield client


@SETTINGS
@given(
    body=_bodies(STACK_KEYS),
    segment=SEGMENT,
    query=st.dictionaries(
        st.sampled_from(
            ["pageSize", "pageToken", "updateMask", "rlorTrainerJobId", "deploymentId", "trainingShape"]
        ),
        st.text(max_size=8),
        max_size=3,
    ),
)
def test_control_plane_never_answers_5xx(
    stack_http: httpx.Client, body: Any, segment: str, query: dict[str, str]
) -> None:
    seg = quote(segment, safe="")
    for method, path in (
        ("POST", "/v1/accounts/local/rlorTrainerJobs"),
        ("POST", "/v1/accounts/local/deployments"),
        ("PATCH", f"/v1/accounts/local/deployments/{seg}"),
        ("POST", f"/v1/accounts/local/rlorTrainerJobs/{seg}:resume"),
        ("GET", f"/v1/accounts/local/rlorTrainerJobs/{seg}/checkpoints"),
        ("POST", "/inference/v1/completions"),
        ("POST", f"/training/v1/rlorTrainerJobs/local/{seg}/api/v1/create_model"),
        ("GET", f"/v1/accounts/{seg}"),
        ("GET", f"/v1/accounts/fireworks/trainingShapes/{seg}/versions"),
        ("GET", f"/v1/accounts/{seg}/models/{seg}"),
        ("POST", f"/v1/accounts/local/checkpoints/{seg}:promote"),
    ):
        _no_5xx(stack_http.request(method, path, params=query, json=body))
