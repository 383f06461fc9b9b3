"""The materializer without vLLM: base + delta chains into full weights directories (on the ``tiny``
model's real checkpoint), the held state, the served-layout check and pruning."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from engine.backends.vllm.materialize import (
    INITIAL_DIR,
    MARKER,
    WEIGHTS_FILE,
    WeightsMaterializer,
    read_layout,
)
from engine.weights.names import SnapshotError
from engine.weights.snapshot import write_base, write_delta
from engine.weights.store import DirectoryStore


def _trainer_state(model_dir: Path, seed: int = 0, scale: float = 0.0) -> dict[str, torch.Tensor]:
    """What a trainer's state_dict holds: the checkpoint plus the tied head it repeats."""
    state = load_file(str(model_dir / "model.safetensors"))
    gen = torch.Generator().manual_seed(seed)
    state = {k: v + scale * torch.randn(v.shape, generator=gen) for k, v in state.items()}
    state["lm_head.weight"] = state["model.embed_tokens.weight"].clone()
    return state


def test_layout_adds_the_tied_head(tiny_model_dir: Path) -> None:
    layout = read_layout(tiny_model_dir)
    assert json.loads((tiny_model_dir / "config.json").read_text())["tie_word_embeddings"] is True
    assert layout["lm_head.weight"] == layout["model.embed_tokens.weight"]
    assert len(layout) == 1 + len(load_file(str(tiny_model_dir / "model.safetensors")))


async def test_chain_materializes_bit_exact_and_reuses_the_held_state(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    bucket = tmp_path / "bucket"
    s0, s1, s2 = (_trainer_state(tiny_model_dir, seed=i, scale=0.01 * i) for i in range(3))
    write_base(bucket, "s0", s0, "tiny")
    write_delta(bucket, "s1", s1, "s0", s0, "tiny")
    write_delta(bucket, "s2", s2, "s1", s1, "tiny")
    m = WeightsMaterializer(tmp_path / "weights", layout=read_layout(tiny_model_dir))
    store = DirectoryStore(bucket)

    path = await m.materialize("s1", store)  # a delta with nothing held: base s0, then s1
    written = load_file(str(path / WEIGHTS_FILE))
    assert set(written) == set(s1) and all(torch.equal(written[k], s1[k]) for k in s1)
    assert json.loads((path / MARKER).read_text())["identity"] == "s1"
    assert m.held_identity == "s1" and m.ready("s1")

    shutil.rmtree(bucket / "s0")
    shutil.rmtree(bucket / "s1")  # the next delta needs only its own payload and the held state
    written = load_file(str((await m.materialize("s2", store)) / WEIGHTS_FILE))
    assert all(torch.equal(written[k], s2[k]) for k in s2)

    assert sorted(m.prune(keep=["s2"])) == ["s1"]
    assert sorted(p.name for p in m.work_dir.iterdir()) == ["s2"]


async def test_corrupt_missing_and_misfit_snapshots_are_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    bucket = tmp_path / "bucket"
    m = WeightsMaterializer(tmp_path / "weights", layout=read_layout(tiny_model_dir))
    store = DirectoryStore(bucket)
    state = _trainer_state(tiny_model_dir)
    write_base(bucket, "ok", state, "tiny")
    payload = bucket / "ok" / "weights.safetensors"
    raw = bytearray(payload.read_bytes())
    raw[-8:] = bytes(8)
    payload.write_bytes(bytes(raw))
    with pytest.raises(SnapshotError, match="checksum mismatch"):
        await m.materialize("ok", store)
    with pytest.raises(SnapshotError, match="not found"):
        await m.materialize("absent", store)

    name = "model.layers.0.mlp.up_proj.weight"
    write_base(bucket, "shape", {**state, name: state[name][:-1]}, "tiny")
    with pytest.raises(SnapshotError, match=f"{name}.*shape"):
        await m.materialize("shape", store)
    write_base(bucket, "extra", {**state, "adapter.weight": torch.ones(3)}, "tiny")
    with pytest.raises(SnapshotError, match=r"adapter\.weight"):
        await m.materialize("extra", store)
    write_base(bucket, "short", {k: v for k, v in state.items() if "layers.1." not in k}, "tiny")
    with pytest.raises(SnapshotError, match="lacks"):
        await m.materialize("short", store)
    assert m.held_identity is None and not any(m.work_dir.glob("*/" + MARKER))


async def test_a_snapshot_without_the_head_gets_it_and_the_initial_weights_too(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    bucket = tmp_path / "bucket"
    state = _trainer_state(tiny_model_dir, scale=0.01)
    del state["lm_head.weight"]
    write_base(bucket, "headless", state, "tiny")
    m = WeightsMaterializer(tmp_path / "weights", layout=read_layout(tiny_model_dir))
    written = load_file(str((await m.materialize("headless", DirectoryStore(bucket))) / WEIGHTS_FILE))
    assert torch.equal(written["lm_head.weight"], state["model.embed_tokens.weight"])

    initial = await m.materialize_initial(tiny_model_dir)
    assert initial.name == INITIAL_DIR
    written = load_file(str(initial / WEIGHTS_FILE))
    launch = load_file(str(tiny_model_dir / "model.safetensors"))
    assert torch.equal(written["lm_head.weight"], launch["model.embed_tokens.weight"])
    assert m.held_identity == "headless"  # the initial directory does not replace the held state
