"""Snapshot chains (base + deltas, hotloop's format) into the full weights directory vLLM reloads.

What vLLM 0.32's ``reload_weights(weights_path=DIR)`` reads (``DefaultModelLoader.get_all_weights``
with load format ``auto``): every ``DIR/*.safetensors`` (filtered by ``model.safetensors.index.json``
when one exists), in the checkpoint's own tensor names (``model.layers.0.self_attn.q_proj.weight``
...), any float dtype (the loaders copy into the served dtype). Nothing else: the config and the
tokenizer stay those the server started with. So a weights directory here is one
``model.safetensors`` plus hotloop's ``hotloop_weights.json`` (identity, weights sha256).

It must hold *every* parameter, including a tied ``lm_head.weight`` that Hugging Face checkpoints
omit: vLLM reloads layer by layer in place, which unties ``lm_head`` from ``embed_tokens``, and a layer
that receives no tensor keeps its old values (measured on 0.32: logprobs then follow the launch
embedding, off by 1-12 nats after a few training steps). ``read_layout`` adds it for tied models.

A reload that fails part-way (a missing file, a misshapen tensor) leaves layers on the meta device
and the next forward pass kills the engine. So the tensors are checked against the served
checkpoint's layout before vLLM sees them: every tensor present with its shape, and extras only when
they duplicate one.

The last materialized state stays in memory, so the next delta applies to it without re-reading the
chain; ``prune`` keeps only the directories still needed (the served one, for a rollback).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import struct
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from engine.backends.base import SnapshotStore
from engine.log import get_logger
from engine.weights.names import SnapshotError, flat_name, identity_parts

if TYPE_CHECKING:
    import torch

    from engine.weights.snapshot import Manifest

_log = get_logger("backends.vllm.materialize")
WEIGHTS_FILE = "model.safetensors"
MARKER = "hotloop_weights.json"
MAX_CHAIN = 1024
INITIAL_DIR = "_initial"
"""The launch checkpoint's weights directory (a name no snapshot identity can take)."""
Layout = Mapping[str, tuple[int, ...]]


TIED_HEAD = "lm_head.weight"
TIED_SOURCE = "model.embed_tokens.weight"


def read_layout(model_dir: Path) -> dict[str, tuple[int, ...]]:
    """The tensors (names and shapes) a reload of this checkpoint's model must receive: its
    safetensors headers (no tensor is read), plus ``lm_head.weight`` when the model ties it to the
    embedding (``tie_word_embeddings`` not false in config.json and no head in the checkpoint)."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise SnapshotError(f"{model_dir}: no *.safetensors files to read the served layout from")
    layout: dict[str, tuple[int, ...]] = {}
    for path in files:
        with open(path, "rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(size))
        for name, info in header.items():
            if name != "__metadata__":
                layout[name] = tuple(int(d) for d in info["shape"])
    config = Path(model_dir) / "config.json"
    tied = json.loads(config.read_text()).get("tie_word_embeddings", True) if config.is_file() else True
    if tied is not False and TIED_HEAD not in layout and TIED_SOURCE in layout:
        layout[TIED_HEAD] = layout[TIED_SOURCE]
    return layout


def fit_layout(
    state: Mapping[str, torch.Tensor], layout: Layout | None, identity: str
) -> dict[str, torch.Tensor]:
    """The tensors to write: exactly the served checkpoint's, each with its shape (see module doc)."""
    if layout is None:
        return dict(state)
    if TIED_HEAD in layout and TIED_HEAD not in state and TIED_SOURCE in state:
        state = {**state, TIED_HEAD: state[TIED_SOURCE]}  # a snapshot that stored the tie once
    missing = sorted(set(layout) - set(state))
    if missing:
        raise SnapshotError(
            f"snapshot {identity!r} lacks {len(missing)} tensors of the served model, e.g. {missing[:3]}"
        )
    out: dict[str, torch.Tensor] = {}
    for name, shape in layout.items():
        got = tuple(state[name].shape)
        if got != shape:
            raise SnapshotError(
                f"snapshot {identity!r}: tensor {name!r} has shape {got}, served model {shape}"
            )
        out[name] = state[name]
    for name in sorted(set(state) - set(layout)):
        tensor = state[name]
        if not any(
            t.shape == tensor.shape and t.dtype == tensor.dtype and bool((t == tensor).all())
            for t in out.values()
        ):
            raise SnapshotError(f"snapshot {identity!r} has tensor {name!r} that the served model does not")
    return out


class WeightsMaterializer:
    """Writes full weights directories under ``work_dir`` (which the vLLM server must be able to read)."""

    def __init__(self, work_dir: Path, *, layout: Layout | None = None) -> None:
        self.work_dir = Path(work_dir)
        self.layout = layout
        self._held: tuple[str, dict[str, torch.Tensor]] | None = None
        self._lock = asyncio.Lock()  # one chain walk at a time: the held state is read, then replaced

    @property
    def held_identity(self) -> str | None:
        """The identity whose full state is in memory (the next delta on top of it is cheap)."""
        return self._held[0] if self._held else None

    def path_for(self, identity: str) -> Path:
        return self.work_dir / flat_name(identity)  # per-run identities (<run>/<name>) included

    def ready(self, identity: str) -> bool:
        return (self.path_for(identity) / MARKER).is_file()

    async def materialize(self, identity: str, store: SnapshotStore) -> Path:
        """The weights directory of ``identity``, applying its chain from the nearest base (or from the
        state in memory). Raises ``SnapshotError`` for a missing, corrupt or misfit snapshot."""
        async with self._lock:
            links = await self._links(identity, store)
            return await asyncio.to_thread(self._build, identity, links)

    async def _links(self, identity: str, store: SnapshotStore) -> list[tuple[Path, Manifest]]:
        """(bucket, manifest) from the chain's start (a base, or a delta on the held state) on."""
        from engine.weights.snapshot import read_manifest

        links: list[tuple[Path, Manifest]] = []
        current: str | None = identity
        while current is not None:
            if len(links) >= MAX_CHAIN:
                raise SnapshotError(f"snapshot chain of {identity!r} is longer than {MAX_CHAIN}")
            directory = await store.local_dir(current)
            parts = identity_parts(current)  # a per-run identity <run>/<name> is two directories deep
            if directory.parts[-len(parts) :] != parts:
                raise SnapshotError(f"snapshot store gave {directory} for {current!r} (the name must match)")
            root = directory.parents[len(parts) - 1]
            manifest = await asyncio.to_thread(read_manifest, root, current)
            links.append((root, manifest))
            if manifest.kind == "base" or (manifest.parent == self.held_identity):
                break
            current = manifest.parent
        return links[::-1]

    def _build(self, identity: str, links: list[tuple[Path, Manifest]]) -> Path:
        from engine.weights.snapshot import apply_delta, load_snapshot

        state: dict[str, torch.Tensor] | None = None
        for bucket, manifest in links:
            if manifest.kind == "base":
                state = load_snapshot(bucket, manifest.identity)[1]
                continue
            if state is None:  # the chain starts on top of the held state
                if self._held is None or self._held[0] != manifest.parent:
                    raise SnapshotError(f"delta {manifest.identity!r} needs parent {manifest.parent!r}")
                state = self._held[1]
            state = apply_delta(bucket, manifest, state)
        assert state is not None
        tensors = fit_layout(state, self.layout, identity)
        path = self._write(identity, tensors, links[-1][1].weights_sha256)
        self._held = (identity, state)
        return path

    async def materialize_initial(self, model_dir: Path) -> Path:
        """A weights directory of the checkpoint the server started from (``INITIAL_DIR``): the
        launch directory itself lacks the tied head a reload needs."""

        def build() -> Path:
            from safetensors.torch import load_file

            state: dict[str, torch.Tensor] = {}
            for path in sorted(Path(model_dir).glob("*.safetensors")):
                state.update(load_file(str(path)))
            tensors = fit_layout(state, self.layout, INITIAL_DIR)
            return self._write(INITIAL_DIR, tensors, "", target=self.work_dir / INITIAL_DIR)

        async with self._lock:
            return await asyncio.to_thread(build)

    def _write(
        self, identity: str, tensors: Mapping[str, torch.Tensor], sha256: str, target: Path | None = None
    ) -> Path:
        from safetensors.torch import save_file

        self.work_dir.mkdir(parents=True, exist_ok=True)
        target = target or self.path_for(identity)
        tmp = Path(tempfile.mkdtemp(prefix=".staging.", dir=self.work_dir))
        try:
            seen: set[int] = set()
            out: dict[str, torch.Tensor] = {}
            for name, tensor in tensors.items():  # safetensors refuses tensors sharing memory (a tie)
                t = tensor.contiguous()
                out[name] = t.clone() if t.data_ptr() in seen else t
                seen.add(t.data_ptr())
            save_file(out, str(tmp / WEIGHTS_FILE))
            (tmp / MARKER).write_text(json.dumps({"identity": identity, "weights_sha256": sha256}))
            if target.exists():
                shutil.rmtree(target)
            os.rename(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        _log.debug("weights materialized", identity=identity, path=str(target))
        return target

    def prune(self, keep: Iterable[str | None]) -> list[str]:
        """Delete the weights directories (and stale staging dirs) not in ``keep``; returns their names."""
        kept = {flat_name(k) for k in keep if k}
        removed: list[str] = []
        if not self.work_dir.is_dir():
            return removed
        for child in self.work_dir.iterdir():
            staging = child.name.startswith(".") and child.is_dir()
            ours = (child / MARKER).is_file()
            if (staging or ours) and child.name not in kept:
                shutil.rmtree(child, ignore_errors=True)
                removed.append(child.name)
        return removed
