"""Client-side helpers for the deployment tests: plain aiohttp against a real server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import torch

from engine.local.models import load_model
from engine.weights import snapshot as snap

HOT_LOAD = "/hot_load/v1/models/hot_load"
MakeServer = Callable[..., Awaitable[Any]]  # the make_server fixture: overrides -> DeploymentServer


async def complete(
    session: aiohttp.ClientSession, url: str, **body: Any
) -> tuple[int, dict[str, Any], dict[str, str]]:
    async with session.post(url + "/v1/completions", json=body) as resp:
        return resp.status, await resp.json(), dict(resp.headers)


async def stream(
    session: aiohttp.ClientSession, url: str, **body: Any
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """All SSE chunks of a streamed completion; asserts the stream ends with [DONE]."""
    chunks: list[dict[str, Any]] = []
    done = False
    async with session.post(url + "/inference/v1/completions", json={**body, "stream": True}) as resp:
        assert resp.status == 200, await resp.text()
        async for raw in resp.content:
            line = raw.decode().strip()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                done = True
                break
            chunks.append(json.loads(data))
        headers = dict(resp.headers)
    assert done, "stream ended without [DONE]"
    return chunks, headers


def merge_stream(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """Fold SSE chunks into the shape of a non-streamed body (text, logprobs content, finish, raw)."""
    choices: dict[int, dict[str, Any]] = {}
    tail: dict[str, Any] = {}
    for chunk in chunks:
        for c in chunk["choices"]:
            acc = choices.setdefault(
                c["index"], {"index": c["index"], "text": "", "content": [], "finish_reason": None}
            )
            acc["text"] += c["text"]
            if c.get("logprobs"):
                acc["content"] += c["logprobs"]["content"]
            if c.get("finish_reason"):
                acc["finish_reason"] = c["finish_reason"]
            if c.get("raw_output"):
                acc["raw_output"] = c["raw_output"]
        for key in ("snapshot_identity", "usage", "perf_metrics"):
            if key in chunk:
                tail[key] = chunk[key]
    return {"choices": [choices[i] for i in sorted(choices)], **tail}


async def hot_load(
    session: aiohttp.ClientSession, url: str, identity: str, previous: str | None = None, wait: bool = True
) -> dict[str, Any]:
    body: dict[str, Any] = {"identity": identity, "reset_prompt_cache": True}
    if previous is not None:
        body["incremental_snapshot_metadata"] = {
            "previous_snapshot_identity": previous,
            "compression_format": "arc_v2",
            "checksum_format": "alder32",
        }
    async with session.post(url + HOT_LOAD, json=body) as resp:
        assert resp.status == 200, await resp.text()
    if not wait:
        return {}
    return await wait_settled(session, url)


async def wait_settled(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    """Poll the hot-load status until the stage is no longer 'loading'; returns replicas[0]."""
    async with asyncio.timeout(60):
        while True:
            async with session.get(url + HOT_LOAD) as resp:
                replica: dict[str, Any] = (await resp.json())["replicas"][0]
            if replica["loading_state"]["stage"] != "loading":
                return replica
            await asyncio.sleep(0.02)


async def until(predicate: Callable[[], bool], timeout_s: float = 30.0, what: str = "condition") -> None:
    """Poll ``predicate`` every 10 ms; fail the test if it is not true within ``timeout_s``."""
    for _ in range(int(timeout_s / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def metric(session: aiohttp.ClientSession, url: str, name: str) -> float:
    async with session.get(url + "/metrics") as resp:
        text = await resp.text()
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def perturbed(state: dict[str, torch.Tensor], seed: int, scale: float = 0.02) -> dict[str, torch.Tensor]:
    """New weights near ``state`` (independent tensors, tied embeddings kept tied)."""
    g = torch.Generator().manual_seed(seed)
    out = {k: (v + scale * torch.randn(v.shape, generator=g)).contiguous() for k, v in state.items()}
    if "lm_head.weight" in out and "model.embed_tokens.weight" in out:
        out["lm_head.weight"] = out["model.embed_tokens.weight"].clone()
    return out


def base_state(model_dir: Path) -> dict[str, torch.Tensor]:
    model = load_model(model_dir)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def reference_model(model_dir: Path, state: dict[str, torch.Tensor]) -> Any:
    model = load_model(model_dir)
    model.load_state_dict(state)
    return model


def write_chain(bucket: Path, model_dir: Path) -> list[tuple[str, dict[str, torch.Tensor]]]:
    """A base snapshot and two deltas on top of it, each from perturbed weights."""
    s0 = perturbed(base_state(model_dir), 1)
    s1 = perturbed(s0, 2, 0.005)
    s2 = perturbed(s1, 3, 0.005)
    snap.write_base(bucket, "step-0", s0, "tiny")
    snap.write_delta(bucket, "step-1", s1, "step-0", s0, "tiny")
    snap.write_delta(bucket, "step-2", s2, "step-1", s1, "tiny")
    return [("step-0", s0), ("step-1", s1), ("step-2", s2)]
