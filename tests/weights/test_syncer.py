"""WeightSyncer's I/O sequencing against a scripted session and deployment manager.

The stand-ins keep real state (what the deployment holds, which snapshots exist, each snapshot's
parent) and refuse what a real deployment would refuse (a delta whose parent is not loaded), so the
syncer is checked against behaviour, not just call counts. The real end-to-end run is in tests/e2e.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from engine.backends.tinker.session import SamplerSnapshot
from engine.errors import ConfigError, StuckError
from engine.weights import HotloadFailedError, WeightSyncer


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class FakeSession:
    clock: FakeClock
    lora_rank: int = 0
    tag: str = "0badc0de"
    saves: list[tuple[str, str, str | None]] = field(default_factory=list)
    snapshots: dict[str, tuple[str, str | None]] = field(default_factory=dict)

    async def save_weights_for_sampler(
        self, name: str, checkpoint_type: str = "base", parent_snapshot_identity: str | None = None
    ) -> SamplerSnapshot:
        self.clock.now += 2.0
        ident = f"{name}-{self.tag}"
        kind = "base" if self.lora_rank > 0 else checkpoint_type
        parent = parent_snapshot_identity if kind == "delta" else None
        if kind == "delta" and parent not in self.snapshots:
            raise AssertionError(f"delta against a snapshot the trainer never wrote: {parent}")
        self.saves.append((ident, kind, parent))
        self.snapshots[ident] = (kind, parent)
        return SamplerSnapshot(
            path=f"tinker://run/sampler_weights/{ident}",
            snapshot_name=ident,
            checkpoint_type=kind,  # type: ignore[arg-type]
            size_bytes=100 if kind == "base" else 10,
            parent_snapshot_identity=parent,
        )


@dataclass
class FakeDeployMgr:
    clock: FakeClock
    session: FakeSession
    held: str | None = None
    replicas_after: float = 0.0  # the hot-load manager reports no replica before this time
    fail_next: list[str] = field(default_factory=list)  # "error" | "timeout"
    status_calls: int = 0
    loads: list[tuple[str, dict[str, Any] | None]] = field(default_factory=list)

    async def hotload_check_status(self, deployment_id: str, base_model: str) -> dict[str, Any]:
        assert deployment_id == "dep" and base_model == "tiny"
        self.status_calls += 1
        if self.clock.now < self.replicas_after:
            return {"replicas": []}
        return {"replicas": [{"current_snapshot_identity": self.held, "readiness": True}]}

    async def hotload(
        self,
        deployment_id: str,
        base_model: str,
        snapshot_identity: str,
        incremental_snapshot_metadata: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        self.loads.append((snapshot_identity, incremental_snapshot_metadata))
        self.clock.now += 3.0
        mode = self.fail_next.pop(0) if self.fail_next else None
        if mode == "error":
            raise StuckError("injected hot-load error")
        if mode == "timeout":
            return {}
        kind, parent = self.session.snapshots[snapshot_identity]
        if kind == "delta":
            assert incremental_snapshot_metadata is not None
            prev = incremental_snapshot_metadata["previous_snapshot_identity"]
            assert prev == parent == self.held, "delta applied on top of the wrong snapshot"
        else:
            assert incremental_snapshot_metadata is None
        self.held = snapshot_identity
        return {}

    async def wait_for_hotload(
        self,
        deployment_id: str,
        base_model: str,
        expected_identity: str,
        timeout_seconds: float = 400.0,
        poll_interval: float = 5.0,
    ) -> bool:
        return self.held == expected_identity


def make(
    full_every: int = 3, lora_rank: int = 0, **dep: Any
) -> tuple[WeightSyncer, FakeSession, FakeDeployMgr]:
    clock = FakeClock()
    session = FakeSession(clock, lora_rank=lora_rank)
    mgr = FakeDeployMgr(clock, session, **dep)
    syncer = WeightSyncer(
        session,
        mgr,
        "dep",
        "tiny",
        hotload_timeout_s=60,
        full_every=full_every,
        clock=clock,  # type: ignore[arg-type]
    )
    return syncer, session, mgr


async def test_base_then_deltas_then_base_every_n() -> None:
    syncer, session, mgr = make(full_every=2)
    names = [await syncer.save_and_hotload(f"step-{i}") for i in range(5)]
    assert names == [f"step-{i}-0badc0de" for i in range(5)]
    assert [k for _, k, _ in session.saves] == ["base", "delta", "delta", "base", "delta"]
    assert session.saves[1][2] == names[0] and session.saves[2][2] == names[1]
    assert mgr.held == names[-1] == syncer.deployed_identity
    assert mgr.status_calls == 1  # read back once, before the first decision
    assert syncer.last_timing == {"save_time_s": 2.0, "hotload_time_s": 3.0, "total_time_s": 5.0}


async def test_lora_is_always_base() -> None:
    syncer, session, mgr = make(lora_rank=8)
    for i in range(3):
        await syncer.save_and_hotload(f"s{i}")
    assert [k for _, k, _ in session.saves] == ["base"] * 3
    assert all(meta is None for _, meta in mgr.loads)


async def test_failed_hotload_reads_back_and_falls_back_to_base() -> None:
    syncer, session, mgr = make(full_every=10)
    a = await syncer.save_and_hotload("a")
    await syncer.save_and_hotload("b")
    mgr.fail_next = ["error"]
    with pytest.raises(HotloadFailedError, match="c-0badc0de"):
        await syncer.save_and_hotload("c")
    assert mgr.status_calls == 2  # read back after the failure
    assert syncer.deployed_identity == "b-0badc0de"
    mgr.fail_next = ["timeout"]  # accepted but never served: also a failure
    with pytest.raises(HotloadFailedError, match="did not serve"):
        await syncer.save_and_hotload("d")
    await syncer.save_and_hotload("e")
    await syncer.save_and_hotload("f")
    kinds = {ident.split("-")[0]: k for ident, k, _ in session.saves}
    assert kinds == {"a": "base", "b": "delta", "c": "delta", "d": "base", "e": "base", "f": "delta"}
    assert a == "a-0badc0de" and mgr.held == "f-0badc0de"


async def test_foreign_snapshot_on_the_deployment_forces_base_and_waits_for_replica() -> None:
    syncer, session, mgr = make(held="old-run-ffffffff", replicas_after=5.0)
    await syncer.save_and_hotload("a")
    assert session.saves[0][1] == "base"
    assert mgr.status_calls > 1  # polled until the hot-load manager reported a replica


async def test_readback_times_out_with_a_clear_error() -> None:
    syncer, _, _ = make(replicas_after=1e9)
    with pytest.raises(StuckError, match="no replica"):
        await syncer.save_only("a")


async def test_save_only_then_hotload_and_reset() -> None:
    syncer, _, mgr = make()
    snap = await syncer.save_only("a")
    assert snap.checkpoint_type == "base" and mgr.held is None
    await syncer.hotload(snap.snapshot_name, snap.checkpoint_type)
    assert mgr.held == snap.snapshot_name and set(syncer.last_timing) == {"hotload_time_s"}
    snap2 = await syncer.save_only("b")
    assert snap2.checkpoint_type == "delta" and snap2.parent_snapshot_identity == snap.snapshot_name
    await syncer.hotload(snap2.snapshot_name, "delta")
    await syncer.hotload(snap2.snapshot_name, "delta")  # already served: no second load
    assert [i for i, _ in mgr.loads] == [snap.snapshot_name, snap2.snapshot_name]
    syncer.reset_delta_chain()
    snap3 = await syncer.save_only("c")
    assert snap3.checkpoint_type == "base"


async def test_bad_input() -> None:
    syncer, _, _ = make()
    with pytest.raises(ConfigError, match="checkpoint_type"):
        await syncer.save_only("a", "delta")  # nothing to diff against yet
    clock = FakeClock()
    with pytest.raises(ConfigError, match="full_every"):
        WeightSyncer(FakeSession(clock), object(), "dep", "tiny", full_every=-1)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="deployment_id"):
        WeightSyncer(FakeSession(clock), object(), "", "tiny")  # type: ignore[arg-type]


async def test_cancelled_hotload_makes_the_held_identity_unknown() -> None:
    import asyncio

    syncer, session, mgr = make(full_every=10)
    await syncer.save_and_hotload("a")
    real_wait = mgr.wait_for_hotload

    async def hang(*args: Any, **kwargs: Any) -> bool:
        await asyncio.sleep(3600)
        return await real_wait(*args, **kwargs)

    mgr.wait_for_hotload = hang  # type: ignore[method-assign]
    task = asyncio.create_task(syncer.save_and_hotload("b"))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert syncer.deployed_identity is None  # the deployment may hold a or b: read back before deciding
    mgr.wait_for_hotload = real_wait  # type: ignore[method-assign]
    calls = mgr.status_calls
    await syncer.save_and_hotload("c")
    assert mgr.status_calls == calls + 1 and session.saves[-1][1] == "base"
