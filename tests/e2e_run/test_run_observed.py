"""A real run on the embedded stack, seen three ways: its report (numbers equal metrics.jsonl's, a base
and then smaller deltas), its TensorBoard event files, its Prometheus metrics."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from run_support import check_exactly_once, connection, rows, tiny_config

from engine.run.orchestrator import start
from engine.run.run_metrics import RunMetrics

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "observe"))
from observe_support import check_numbers, plot

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="session")]


async def test_a_real_run_is_reported_sunk_and_scraped(run_stack: Any, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "seen"
    registry = CollectorRegistry()
    metrics = RunMetrics(registry)
    cfg = tiny_config(run_dir, "seen", sinks={"tensorboard": {}})
    handle = metrics.attach(start(cfg, connection=connection(run_stack)))
    summary = await handle.wait()
    assert summary.status == "done"
    steps = check_exactly_once(run_dir, 3)

    html = (run_dir / "report.html").read_text()
    check_numbers(html, run_dir)
    sizes = {
        r["checkpoint_type"]: r["size_bytes"]
        for r in rows(run_dir, "checkpoints.jsonl")
        if r["kind"] == "snapshot"
    }
    assert sizes["delta"] < sizes["base"]  # the last delta is smaller than the base
    assert 'data-series="base"' in plot(html, "snapshot-sizes") and 'data-series="delta"' in plot(
        html, "snapshot-sizes"
    )

    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    got = [(e.step, e.value) for e in acc.Scalars("train/reward_mean")]
    assert got == [(r["step"], pytest.approx(r["reward_mean"], rel=1e-6, abs=1e-9)) for r in steps]

    scraped = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for s in family.samples
    }
    assert scraped[("hotloop_run_state", (("run_id", "seen"), ("state", "done")))] == 1.0
    assert scraped[("hotloop_run_step", (("run_id", "seen"),))] == 3.0
    assert scraped[("hotloop_run_sampling_window", (("run_id", "seen"),))] == steps[-1]["window"]
    syncs = [r for r in rows(run_dir, "checkpoints.jsonl") if r["kind"] == "sync"]
    assert scraped[("hotloop_run_last_sync_seconds", (("run_id", "seen"),))] == syncs[-1]["seconds"]
