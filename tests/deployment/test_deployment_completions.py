"""The completions surface of the embedded deployment, against a real server and the tiny model."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest
from deployment_helpers import MakeServer, complete, merge_stream, metric, stream

from engine.local.deployment.app import DeploymentServer
from engine.local.deployment.batch_runner import sequence_logprobs
from engine.local.models import load_model, load_tokenizer

PROMPT = [1, 320, 421, 77, 501, 12, 9]


async def test_streamed_equals_non_streamed_and_greedy_is_deterministic(
    server: DeploymentServer, session: aiohttp.ClientSession
) -> None:
    body = {
        "model": "anything/at-all",
        "prompt": PROMPT,
        "max_tokens": 12,
        "temperature": 0,
        "logprobs": 3,
        "raw_output": True,
        "perf_metrics_in_response": True,
        "ignore_eos": True,
    }
    status, plain, headers = await complete(session, server.url, **body)
    assert status == 200
    _, again, _ = await complete(session, server.url, **body)
    assert again["choices"][0]["raw_output"] == plain["choices"][0]["raw_output"]
    assert again["choices"][0]["text"] == plain["choices"][0]["text"]
    chunks, stream_headers = await stream(session, server.url, **body)
    streamed = merge_stream(chunks)

    choice = plain["choices"][0]
    assert plain["object"] == "text_completion" and plain["model"] == "anything/at-all"
    assert choice["finish_reason"] == "length" and len(choice["raw_output"]["completion_token_ids"]) == 12
    assert choice["raw_output"]["prompt_token_ids"] == PROMPT
    s = streamed["choices"][0]
    assert s["text"] == choice["text"]
    assert s["raw_output"] == choice["raw_output"]
    assert s["finish_reason"] == choice["finish_reason"]
    assert [c["token_id"] for c in s["content"]] == [c["token_id"] for c in choice["logprobs"]["content"]]
    for a, b in zip(s["content"], choice["logprobs"]["content"], strict=True):
        assert a["logprob"] == pytest.approx(b["logprob"], abs=1e-5)
        assert a["sampling_logprob"] == 0.0  # greedy: a point mass
        assert len(a["top_logprobs"]) == 3 and a["top_logprobs"][0]["token_id"] == a["token_id"]
    # contract: identity in body and header; perf metrics in the final chunk / body and up-front headers
    assert plain["snapshot_identity"] is None and streamed["snapshot_identity"] is None
    assert headers["x-hotloop-snapshot-identity"] == ""
    for key in ("prefill-queue-duration", "generation-queue-duration", "server-time-to-first-token"):
        assert isinstance(plain["perf_metrics"][key], float) and plain["perf_metrics"][key] >= 0
        assert isinstance(streamed["perf_metrics"][key], float)
    assert streamed["perf_metrics"]["prompt-tokens"] == len(PROMPT)
    assert plain["perf_metrics"]["cached-prompt-tokens"] == 0  # first time: computed
    assert streamed["perf_metrics"]["cached-prompt-tokens"] == len(PROMPT)  # then from the prompt cache
    assert streamed["perf_metrics"]["num-concurrent-requests"] >= 1
    assert float(stream_headers["prefill-queue-duration"]) >= 0 and stream_headers["prompt-tokens"] == "7"
    assert streamed["usage"] == {"prompt_tokens": 7, "completion_tokens": 12, "total_tokens": 19}


async def test_logprobs_match_a_full_forward_for_rows_that_joined_at_different_times(
    server: DeploymentServer, session: aiohttp.ClientSession, tiny_model_dir: Path
) -> None:
    model = load_model(tiny_model_dir)

    async def one(i: int) -> tuple[list[int], list[int], list[float]]:
        await asyncio.sleep(0.03 * i)  # staggered: each joins a running batch with different padding
        prompt = [(17 * i + 5 * j) % 1000 + 4 for j in range(3 + 5 * i)]
        chunks, _ = await stream(
            session,
            server.url,
            prompt=prompt,
            max_tokens=10 + 3 * i,
            temperature=1.0,
            seed=i,
            logprobs=True,
            raw_output=True,
            ignore_eos=True,
        )
        merged = merge_stream(chunks)["choices"][0]
        return prompt, merged["raw_output"]["completion_token_ids"], [c["logprob"] for c in merged["content"]]

    for prompt, completion, logprobs in await asyncio.gather(*(one(i) for i in range(6))):
        ref = sequence_logprobs(model, prompt + completion, start=len(prompt))
        assert len(logprobs) == len(completion) == len(ref)
        assert max(abs(a - b) for a, b in zip(logprobs, ref, strict=True)) <= 1e-4


async def test_sampling_controls_and_echo(
    server: DeploymentServer, session: aiohttp.ClientSession, tiny_model_dir: Path
) -> None:
    base = {"prompt": PROMPT, "max_tokens": 6, "logprobs": 2, "raw_output": True, "ignore_eos": True}
    # same seed, same tokens; top_k=1 is greedy in effect, so its sampling logprob is 0
    _, a, _ = await complete(session, server.url, **base, temperature=0.8, seed=7, n=2)
    _, b, _ = await complete(session, server.url, **base, temperature=0.8, seed=7, n=2)
    assert [c["raw_output"] for c in a["choices"]] == [c["raw_output"] for c in b["choices"]]
    assert [c["index"] for c in a["choices"]] == [0, 1]
    _, k1, _ = await complete(session, server.url, **base, temperature=1.0, top_k=1)
    _, greedy, _ = await complete(session, server.url, **base, temperature=0)
    assert k1["choices"][0]["raw_output"] == greedy["choices"][0]["raw_output"]
    assert all(
        c["sampling_logprob"] == pytest.approx(0.0, abs=1e-6) for c in k1["choices"][0]["logprobs"]["content"]
    )
    # top_p: the sampling distribution is renormalised over the nucleus, so it is never below the raw one
    _, tp, _ = await complete(session, server.url, **base, temperature=1.0, top_p=0.5, seed=3)
    for c in tp["choices"][0]["logprobs"]["content"]:
        assert c["sampling_logprob"] >= c["logprob"] - 1e-6
    # echo: the prompt comes back first, with its logprobs (the first position unscored)
    _, echo, _ = await complete(session, server.url, **base, temperature=0, echo=True)
    content = echo["choices"][0]["logprobs"]["content"]
    assert [c["token_id"] for c in content[: len(PROMPT)]] == PROMPT
    assert content[0]["logprob"] is None
    ref = sequence_logprobs(load_model(tiny_model_dir), PROMPT, start=1)
    assert max(abs(c["logprob"] - r) for c, r in zip(content[1 : len(PROMPT)], ref, strict=True)) <= 1e-4
    tok = load_tokenizer(tiny_model_dir)
    assert echo["choices"][0]["text"].startswith(tok.decode(PROMPT, skip_special_tokens=True))
    # the same through SSE, with two choices: each choice's chunks add up to the non-streamed choice
    _, both, _ = await complete(session, server.url, **base, temperature=0, echo=True, n=2)
    chunks, _ = await stream(session, server.url, **base, temperature=0, echo=True, n=2)
    merged = merge_stream(chunks)
    for plain, streamed in zip(both["choices"], merged["choices"], strict=True):
        assert streamed["text"] == plain["text"] == echo["choices"][0]["text"]
        assert streamed["raw_output"] == plain["raw_output"]
        assert [c["token_id"] for c in streamed["content"]] == [
            c["token_id"] for c in plain["logprobs"]["content"]
        ]
    assert merged["usage"]["completion_tokens"] == 12


async def test_text_prompts_and_stop_strings_and_stop_ids(
    server: DeploymentServer, session: aiohttp.ClientSession
) -> None:
    base = {
        "prompt": "the cat sat on the",
        "max_tokens": 20,
        "temperature": 0,
        "raw_output": True,
        "ignore_eos": True,
    }
    _, full, _ = await complete(session, server.url, **base)
    text = full["choices"][0]["text"]
    ids = full["choices"][0]["raw_output"]["completion_token_ids"]
    assert len(text) > 4
    stop = text[2:4]
    _, cut, _ = await complete(session, server.url, **base, stop=[stop])
    assert cut["choices"][0]["finish_reason"] == "stop"
    assert cut["choices"][0]["text"] == text[: text.index(stop)]
    # a stop token id ends the completion on that token (which is reported, but not as text)
    _, by_id, _ = await complete(session, server.url, **base, stop=[ids[3]])
    got = by_id["choices"][0]
    assert got["finish_reason"] == "stop"
    assert got["raw_output"]["completion_token_ids"] == ids[: ids.index(ids[3]) + 1]
    chunks, _ = await stream(session, server.url, **base, stop=[stop])
    assert merge_stream(chunks)["choices"][0]["text"] == cut["choices"][0]["text"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{not json", "body"),
        (json.dumps({"prompt": [5, 1024]}).encode(), "prompt[1]"),
        (json.dumps({"prompt": [5], "max_tokens": 0}).encode(), "max_tokens"),
        (json.dumps({"prompt": [5] * 1024}).encode(), "prompt"),
        (json.dumps({"max_tokens": 3}).encode(), "prompt"),
        (json.dumps({"prompt": [5], "temperature": -1}).encode(), "temperature"),
        (json.dumps({"prompt": [5], "top_logprobs": 99}).encode(), "top_logprobs"),
        (json.dumps({"prompt": [5], "seed": 2**64}).encode(), "seed"),
    ],
)
async def test_malformed_requests_get_400_naming_the_field(
    server: DeploymentServer, session: aiohttp.ClientSession, body: bytes, field: str
) -> None:
    async with session.post(server.url + "/v1/completions", data=body) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert error["param"] == field
    assert error["message"].startswith(field)


async def test_models_health_and_metrics_histograms(
    server: DeploymentServer, session: aiohttp.ClientSession
) -> None:
    await complete(session, server.url, prompt=PROMPT, max_tokens=3, request_id="x")
    async with session.get(server.url + "/v1/models") as resp:
        assert (await resp.json())["data"][0]["object"] == "model"
    async with session.get(server.url + "/health") as resp:
        assert resp.status == 200 and (await resp.json())["status"] == "ok"
    async with session.get(server.url + "/metrics") as resp:
        text = await resp.text()
    for name in (
        "hotloop_deployment_request_queue_time_seconds_bucket",
        "hotloop_deployment_time_to_first_token_seconds_bucket",
        "hotloop_deployment_e2e_request_latency_seconds_bucket",
        "hotloop_deployment_num_requests_waiting",
        "hotloop_deployment_num_requests_running",
    ):
        assert name in text, name
    assert await metric(session, server.url, "hotloop_deployment_generation_tokens_total") >= 1
    assert await metric(session, server.url, "hotloop_deployment_prompt_tokens_total") == len(PROMPT)
    # x-request-id is echoed back
    async with session.post(
        server.url + "/v1/completions",
        json={"prompt": PROMPT, "max_tokens": 1},
        headers={"x-request-id": "abc-1"},
    ) as resp:
        assert resp.headers["x-request-id"] == "abc-1"


async def test_api_key_is_required_when_configured(
    make_server: MakeServer, session: aiohttp.ClientSession
) -> None:
    server = await make_server(api_key="dep-key")
    async with session.get(server.url + "/v1/models") as resp:
        assert resp.status == 401
    async with session.get(server.url + "/v1/models", headers={"X-Api-Key": "wrong-é"}) as resp:
        assert resp.status == 401
    async with session.get(server.url + "/v1/models", headers={"Authorization": "Bearer dep-key"}) as resp:
        assert resp.status == 200
    async with session.get(server.url + "/health") as resp:
        assert resp.status == 200  # open for probes
