"""Hot-load seconds for ``small``: vLLM's reload path vs the embedded deployment's delta path.

    .venv/bin/python benchmarks/bench_vllm_hotload.py [--deltas 6]

Writes a base snapshot of ``small`` and a chain of deltas (each weight moved by 1e-5, about one AdamW
step at lr 1e-5) into a bucket, starts both deployments on it -- ``hotloop serve deployment --model
small`` and a vLLM server (``locate_vllm_python``; fp32, CPU) -- loads the base into each, then loads
the deltas alternately into one and the other, so background load hits both alike. Timed per load:

* embedded: POST /hot_load/v1/models/hot_load (with the delta's parent) until GET reports it served;
* vLLM: ``VllmHotLoader.load`` -- materialize (the delta applied to the state held in memory, written
  as a full safetensors directory), pause, reload_weights, reset the prefix cache, set the version,
  resume, read it back -- with its materialize / swap split.

Prints each path's median and the ratio vLLM / embedded (lower is faster).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp
import torch
from safetensors.torch import load_file

from engine.backends.base import SamplerSnapshot
from engine.backends.vllm import (
    VllmAdminClient,
    VllmHotLoader,
    VllmLaunchSpec,
    VllmServer,
    locate_vllm_python,
    read_layout,
)
from engine.backends.vllm.materialize import WeightsMaterializer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # tests/support
from support.launch import DEPLOYMENT_URL_KEY, alaunched, serve_argv

from engine.local.models import build_model_dir
from engine.log import configure
from engine.weights.snapshot import write_base, write_delta
from engine.weights.store import DirectoryStore


def write_chain(bucket: Path, model_dir: Path, deltas: int) -> list[str]:
    state = load_file(str(model_dir / "model.safetensors"))
    state["lm_head.weight"] = state["model.embed_tokens.weight"].clone()  # as a trainer's state_dict
    write_base(bucket, "d0", state, "small")
    gen = torch.Generator().manual_seed(0)
    names = ["d0"]
    for i in range(1, deltas + 1):
        child = {k: v + 1e-5 * torch.randn(v.shape, generator=gen).sign() for k, v in state.items()}
        child["lm_head.weight"] = child["model.embed_tokens.weight"].clone()
        write_delta(bucket, f"d{i}", child, f"d{i - 1}", state, "small")
        state = child
        names.append(f"d{i}")
    return names


async def embedded_load(http: aiohttp.ClientSession, url: str, identity: str, parent: str | None) -> float:
    body: dict[str, object] = {"identity": identity}
    if parent is not None:
        body["incremental_snapshot_metadata"] = {
            "previous_snapshot_identity": parent,
            "compression_format": "zstd",
            "checksum_format": "sha256",
        }
    start = time.perf_counter()
    async with http.post(url + "/hot_load/v1/models/hot_load", json=body) as resp:
        resp.raise_for_status()
    while True:
        async with http.get(url + "/hot_load/v1/models/hot_load") as resp:
            replica = (await resp.json())["replicas"][0]
        if replica["current_snapshot_identity"] == identity:
            return time.perf_counter() - start
        if replica["loading_state"]["stage"] == "error":
            raise RuntimeError(replica["loading_state"]["error_message"])
        await asyncio.sleep(0.005)


async def main(args: argparse.Namespace) -> int:
    python = locate_vllm_python()
    if python is None:
        print("no vLLM install (scripts/install-vllm.sh)", file=sys.stderr)
        return 2
    model_dir = build_model_dir("small")
    with tempfile.TemporaryDirectory(prefix="bench-vllm-hotload-") as tmp:
        root = Path(tmp)
        bucket = root / "bucket"
        names = write_chain(bucket, model_dir, args.deltas)
        spec = VllmLaunchSpec(
            python=str(python),
            model_dir=str(model_dir),
            served_model_name="small",
            dtype="float32",
            max_model_len=1024,
            env={"VLLM_CPU_KVCACHE_SPACE": "1"},
        )
        server = VllmServer(spec, root / "vllm.log")
        argv = serve_argv("deployment", model="small", bucket=bucket)
        async with alaunched(argv, DEPLOYMENT_URL_KEY, timeout_s=300) as embedded:
            url = await server.start(timeout_s=300)
            admin = VllmAdminClient(url)
            materializer = WeightsMaterializer(root / "weights", layout=read_layout(model_dir))
            loader = VllmHotLoader(admin, materializer, DirectoryStore(bucket), timeout_s=300)
            times: dict[str, list[float]] = {
                "embedded": [],
                "vllm": [],
                "vllm materialize": [],
                "vllm swap": [],
            }
            try:
                async with aiohttp.ClientSession() as http:
                    for i, name in enumerate(names):
                        parent = names[i - 1] if i else None
                        kind = "delta" if i else "base"
                        emb = await embedded_load(http, embedded.url, name, parent)
                        # Timed by the caller, like embedded_load: from the call to the verified load.
                        start = time.perf_counter()
                        await loader.load(SamplerSnapshot(str(bucket / name), name, kind), parent=parent)
                        vllm_s = time.perf_counter() - start
                        if i == 0:
                            continue  # the base loads are warm-up
                        times["embedded"].append(emb)
                        times["vllm"].append(vllm_s)
                        times["vllm materialize"].append(loader.last_timing["materialize_s"])
                        times["vllm swap"].append(loader.last_timing["swap_s"])
            finally:
                await admin.aclose()
                await server.stop()
    params = sum(t.numel() for t in load_file(str(model_dir / "model.safetensors")).values())
    print(f"small ({params / 1e6:.1f}M params, fp32), {args.deltas} delta hot-loads per path, alternating")
    for name, values in times.items():
        print(f"{name:>17}: median {statistics.median(values):.3f} s  all {[round(v, 3) for v in values]}")
    ratio = statistics.median(times["vllm"]) / statistics.median(times["embedded"])
    print(f"vLLM / embedded hot-load seconds (median): {ratio:.2f}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--deltas", type=int, default=6)
    configure(level="WARNING")
    sys.exit(asyncio.run(main(parser.parse_args())))
