"""Prometheus metrics of an embedded run (engine.run.run_metrics): scraped during a run (from inside an
event callback, so the run stands still while it is read) and after it over real HTTP."""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from observe_support import rows
from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.parser import text_string_to_metric_families
from support.fakes import planes, run_config

from engine.lifecycle import State
from engine.lifecycle.events import LifecycleEvent
from engine.run.orchestrator import RunHandle, start
from engine.run.records import Synced
from engine.run.run_metrics import RunMetrics


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def one(scraped: dict[Any, float], name: str, **labels: str) -> float:
    return scraped[(name, tuple(sorted({"run_id": "prom", **labels}.items())))]


async def test_a_run_exposes_state_step_window_in_flight_and_last_sync(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    metrics = RunMetrics(registry)
    during: list[dict[Any, float]] = []
    seen: dict[str, Any] = {}
    handles: list[RunHandle] = []

    def watch(e: LifecycleEvent) -> None:
        if e.kind == "record" and isinstance(e.record, Synced):
            seen["sync_s"] = e.record.seconds  # the latest hot-load before the scrape
        if e.kind == "enter" and e.state is State.SAMPLING and e.step == 3:
            controller = handles[0].concurrency_controller
            assert controller is not None
            taken = [controller.try_acquire() for _ in range(3)]  # as three requests would
            during.append(samples(generate_latest(registry).decode()))
            seen["sync_s_at_scrape"] = seen["sync_s"]
            for _ in range(sum(taken)):
                controller.release()

    handle = start(run_config(tmp_path, "prom", run_id="prom"), planes=planes())
    handles.append(metrics.attach(handle))
    handle.bus.add_callback(watch)  # after the metrics' own callback: they have seen each event
    summary = await handle.wait()
    assert summary.status == "done"

    (mid,) = during
    assert one(mid, "hotloop_run_state", state="sampling") == 1.0
    assert one(mid, "hotloop_run_state", state="training") == 0.0
    assert one(mid, "hotloop_run_step") == 3.0
    assert one(mid, "hotloop_run_sampling_window") == 8.0  # the fake deployment's fixed window
    assert one(mid, "hotloop_run_in_flight_requests") == 3.0
    assert one(mid, "hotloop_run_last_sync_seconds") == seen["sync_s_at_scrape"]

    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        port = server.server_address[1]
        url = f"http://127.0.0.1:{port}/metrics"
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read().decode())
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
    after = samples(body)
    assert one(after, "hotloop_run_state", state="done") == 1.0
    assert one(after, "hotloop_run_state", state="sampling") == 0.0
    assert one(after, "hotloop_run_step") == 5.0
    assert one(after, "hotloop_run_in_flight_requests") == 0.0
    step_rows = [r for r in rows(tmp_path / "prom") if r["kind"] == "step"]
    assert one(after, "hotloop_run_reward_mean") == step_rows[-1]["reward_mean"]
    journal = rows(tmp_path / "prom", "journal.jsonl")
    training_s = sum(r["seconds"] for r in journal if r.get("event") == "exit" and r["state"] == "training")
    assert one(after, "hotloop_run_state_seconds_total", state="training") == pytest.approx(
        training_s, abs=1e-5
    )


def test_one_registry_refuses_a_second_collector_of_the_same_names() -> None:
    registry = CollectorRegistry()
    RunMetrics(registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        RunMetrics(registry)
    RunMetrics(registry, prefix="other_")  # a second one under its own prefix is fine
