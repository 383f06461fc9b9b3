from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.weights import snapshot as snap


def _state(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "a.weight": torch.randn(64, 32, generator=g) * 0.02,
        "b.bias": torch.randn(32, generator=g),
        "c.half": (torch.randn(16, generator=g)).to(torch.bfloat16),
        "d.count": torch.arange(5, dtype=torch.int64),
    }


def _step(state: dict[str, torch.Tensor], lr: float, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in state.items():
        if v.is_floating_point():
            out[k] = (v.float() + lr * torch.randn(v.shape, generator=g).sign()).to(v.dtype)
        else:
            out[k] = v + 1
    return out


@pytest.mark.parametrize("encoding", ["xor", "sub-xor"])
def test_delta_chain_reproduces_children_bit_for_bit(tmp_path: Path, encoding: str) -> None:
    s0 = _state(0)
    s1 = _step(s0, 1e-3, 1)
    s2 = _step(s1, 1e-3, 2)
    snap.write_base(tmp_path, "step-0", s0, "tiny")
    snap.write_delta(tmp_path, "step-1", s1, "step-0", s0, "tiny", encoding=encoding)  # type: ignore[arg-type]
    snap.write_delta(tmp_path, "step-2", s2, "step-1", s1, "tiny", encoding=encoding)  # type: ignore[arg-type]
    _, got0 = snap.load_snapshot(tmp_path, "step-0")
    m1, got1 = snap.load_snapshot(tmp_path, "step-1", ("step-0", got0))
    m2, got2 = snap.load_snapshot(tmp_path, "step-2", ("step-1", got1))
    assert m1.parent == "step-0" and m2.kind == "delta" and m2.encoding == encoding
    for k in s2:
        assert torch.equal(got2[k].view(torch.uint8), s2[k].contiguous().view(torch.uint8)), k


def test_delta_needs_its_parent(tmp_path: Path) -> None:
    s0, s1 = _state(0), _state(1)
    snap.write_base(tmp_path, "p", s0, "tiny")
    snap.write_delta(tmp_path, "c", s1, "p", s0, "tiny")
    with pytest.raises(snap.SnapshotError, match="needs parent 'p'"):
        snap.load_snapshot(tmp_path, "c", ("other", s0))


def test_corrupt_payload_is_detected(tmp_path: Path) -> None:
    snap.write_base(tmp_path, "p", _state(0), "tiny")
    payload = tmp_path / "p" / snap.BASE_FILE
    data = bytearray(payload.read_bytes())
    data[-1] ^= 0xFF
    payload.write_bytes(bytes(data))
    with pytest.raises(snap.SnapshotError, match="checksum mismatch"):
        snap.load_snapshot(tmp_path, "p")


@pytest.mark.parametrize("junk", [b"[1]", b"\xff\xfe", b'{"format": "hotloop-snapshot/1", "tensors": []}'])
def test_malformed_manifest_is_a_snapshot_error(tmp_path: Path, junk: bytes) -> None:
    snap.write_base(tmp_path, "p", _state(0), "tiny")
    (tmp_path / "p" / snap.MANIFEST).write_bytes(junk)
    with pytest.raises(snap.SnapshotError, match="manifest"):
        snap.load_snapshot(tmp_path, "p")


@pytest.mark.parametrize(
    "name", ["../evil", "", ".hidden", "x" * 200, "a..b", "a/b/c", "a/../b", "/abs", "run/", "../x/y"]
)
def test_unsafe_names_are_rejected(tmp_path: Path, name: str) -> None:
    with pytest.raises(snap.SnapshotError, match="invalid snapshot"):
        snap.write_base(tmp_path, name, _state(0), "tiny")
    assert not any(tmp_path.iterdir())


def test_a_per_run_identity_lives_in_the_run_folder(tmp_path: Path) -> None:
    """``<run>/<name>``: two runs may reuse a name; a delta may name a parent in another run."""
    first, second = snap.run_identity("s1:train:0", "000002"), snap.run_identity("s2:train:0", "000002")
    assert first == "s1:train:0/000002"
    snap.write_base(tmp_path, first, _state(0), "tiny")
    snap.write_delta(tmp_path, second, _state(1), first, _state(0), "tiny")
    assert (tmp_path / "s1:train:0" / "000002" / snap.MANIFEST).exists()
    assert snap.read_manifest(tmp_path, second).parent == first
    _, got = snap.materialize(tmp_path, second)
    assert torch.equal(got["a.weight"], _state(1)["a.weight"])
    assert [p.name for p in (tmp_path / "s2:train:0").iterdir()] == ["000002"]  # no staging left


def test_existing_snapshot_is_never_overwritten(tmp_path: Path) -> None:
    snap.write_base(tmp_path, "p", _state(0), "tiny")
    with pytest.raises(snap.SnapshotError, match="already exists"):
        snap.write_base(tmp_path, "p", _state(1), "tiny")
    _, got = snap.load_snapshot(tmp_path, "p")
    assert torch.equal(got["a.weight"], _state(0)["a.weight"])


def test_materialize_walks_the_chain(tmp_path: Path) -> None:
    s0 = _state(0)
    s1 = _step(s0, 1e-3, 1)
    s2 = _step(s1, 1e-3, 2)
    snap.write_base(tmp_path, "b", s0, "tiny")
    snap.write_delta(tmp_path, "d1", s1, "b", s0, "tiny")
    snap.write_delta(tmp_path, "d2", s2, "d1", s1, "tiny")
    assert [m.identity for m in snap.chain(tmp_path, "d2")] == ["b", "d1", "d2"]
    manifest, got = snap.materialize(tmp_path, "d2")
    assert manifest.identity == "d2"
    assert all(torch.equal(got[k], s2[k]) for k in s2)


def test_a_bare_name_resolves_to_the_one_run_that_holds_it(tmp_path: Path) -> None:
    # hotloop's trainer stores per run (<run>/<name>); Fireworks' SDK hot-loads the bare name it saved.
    s0, s1 = _state(0), _state(1)
    snap.write_base(tmp_path, "run-a/step-0", s0, "tiny")
    snap.write_delta(tmp_path, "run-a/step-1", s1, "run-a/step-0", s0, "tiny")
    assert snap.resolve(tmp_path, "step-1") == "run-a/step-1"
    assert snap.resolve(tmp_path, "run-b/step-1") == "run-b/step-1"  # a full identity is taken as is
    assert snap.read_manifest(tmp_path, "step-1").parent == "run-a/step-0"
    # A delta named bare applies onto weights held under the parent's bare name.
    _, got = snap.load_snapshot(tmp_path, "step-1", ("step-0", s0))
    assert all(torch.equal(got[k], s1[k]) for k in s1)

    snap.write_base(tmp_path, "run-b/step-0", s0, "tiny")
    with pytest.raises(snap.SnapshotError, match=r"'step-0' is ambiguous .*\['run-a', 'run-b'\]"):
        snap.resolve(tmp_path, "step-0")
    with pytest.raises(snap.SnapshotError, match="'step-9' not found"):
        snap.resolve(tmp_path, "step-9")


async def test_the_directory_store_finds_a_bare_name_in_its_run(tmp_path: Path) -> None:
    from engine.weights.store import DirectoryStore

    snap.write_base(tmp_path, "run-a/step-0", _state(0), "tiny")
    store = DirectoryStore(tmp_path)
    assert await store.local_dir("step-0") == tmp_path / "run-a" / "step-0"
    assert await store.local_dir("run-a/step-0") == tmp_path / "run-a" / "step-0"
    with pytest.raises(snap.SnapshotError, match="'step-9' not found"):
        await store.local_dir("step-9")
