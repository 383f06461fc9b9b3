"""Prometheus metrics of the runs a service embeds: state, step, window, in-flight requests, last sync.

    registry = prometheus_client.CollectorRegistry()     # or prometheus_client.REGISTRY
    metrics = RunMetrics(registry)
    handle = engine.start(config)
    metrics.attach(handle)                               # or engine.start(config, on_event=metrics.observe)
    prometheus_client.start_http_server(9400, registry=registry)   # or the service's own /metrics

``RunMetrics`` is a collector: lifecycle events (engine.lifecycle.events) update plain numbers on the
loop (cheap, as an event callback must be), and a scrape builds the metric families from them under a
lock, on the scraper's thread. The sampling window and the requests in flight are read at scrape time
from the run's live concurrency controller (``RunHandle.concurrency_controller``) when the run is
attached; with ``observe`` alone the window is the one of the last committed step and in-flight is not
exported. Every series carries the run's ``run_id`` label, so one registry serves several runs.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry

from engine.lifecycle.events import LifecycleEvent
from engine.lifecycle.table import State
from engine.run.records import EvalCommitted, StepCommitted, Synced

if TYPE_CHECKING:
    from engine.run.orchestrator import RunHandle

PREFIX = "hotloop_run_"
STATES = (*(s.value for s in State), "cancelled")


@dataclass
class _Run:
    state: str = "starting"
    step: int = 0
    window: float | None = None
    last_sync_s: float | None = None
    reward_mean: float | None = None
    eval_score: float | None = None
    state_seconds: dict[str, float] = field(default_factory=dict)
    handle: RunHandle | None = None


class RunMetrics:
    def __init__(self, registry: CollectorRegistry, prefix: str = PREFIX) -> None:
        self.prefix = prefix
        self._lock = threading.Lock()
        self._runs: dict[str, _Run] = {}
        registry.register(self)

    def attach(self, handle: RunHandle) -> RunHandle:
        """Follow a started run through its event bus, reading its live sampler at scrape time."""
        handle.bus.add_callback(lambda event: self._observe(event, handle))
        return handle

    def observe(self, event: LifecycleEvent) -> None:
        """An ``on_event`` callback: quick, on the loop."""
        self._observe(event, None)

    def _observe(self, event: LifecycleEvent, handle: RunHandle | None) -> None:
        with self._lock:
            run = self._runs.setdefault(event.run_id, _Run())
            if handle is not None:
                run.handle = handle
            if event.kind == "rollout":
                return  # the rollout machine's step is the one it samples for, ahead of the learner's
            run.step = event.step
            if event.kind == "enter":
                run.state = event.state.value
            elif event.kind == "exit" and event.seconds is not None:
                name = event.state.value
                run.state_seconds[name] = run.state_seconds.get(name, 0.0) + event.seconds
            elif event.terminal:
                run.state = event.kind
                run.handle = None  # the sampler is gone; nothing in flight any more
            elif event.kind == "record":
                fact = event.record
                if isinstance(fact, StepCommitted):
                    run.step = fact.step
                    run.reward_mean = _float(fact.row.get("reward_mean"))
                    run.window = _float(fact.row.get("window"), run.window)
                elif isinstance(fact, EvalCommitted):
                    run.eval_score = _float(fact.row.get("score"))
                elif isinstance(fact, Synced):
                    run.last_sync_s = fact.seconds

    def _families(self) -> tuple[GaugeMetricFamily, ...]:
        p, run = self.prefix, ["run_id"]
        return (
            GaugeMetricFamily(p + "state", "1 for the lifecycle state the run is in", labels=[*run, "state"]),
            GaugeMetricFamily(p + "step", "Optimizer steps committed", labels=run),
            GaugeMetricFamily(p + "sampling_window", "Sampling concurrency window", labels=run),
            GaugeMetricFamily(p + "in_flight_requests", "Sampling requests in flight", labels=run),
            GaugeMetricFamily(p + "last_sync_seconds", "Seconds of the last hot-load", labels=run),
            GaugeMetricFamily(p + "reward_mean", "Mean reward of the last step", labels=run),
            GaugeMetricFamily(p + "eval_score", "Score of the last evaluation", labels=run),
        )

    def _seconds(self) -> CounterMetricFamily:
        return CounterMetricFamily(
            self.prefix + "state_seconds", "Wall seconds spent in each state", labels=["run_id", "state"]
        )

    def describe(self) -> Iterator[Metric]:
        """The families without samples: the registry refuses a second collector with the same names."""
        yield from (*self._families(), self._seconds())

    def collect(self) -> Iterator[Metric]:
        state, step, window, in_flight, sync, reward, score = self._families()
        seconds = self._seconds()
        with self._lock:
            for run_id, run in self._runs.items():
                for name in STATES:
                    state.add_metric([run_id, name], float(run.state == name))
                step.add_metric([run_id], float(run.step))
                controller = run.handle.concurrency_controller if run.handle is not None else None
                if controller is not None:
                    window.add_metric([run_id], float(controller.window_size))
                    in_flight.add_metric([run_id], float(controller.in_flight))
                else:
                    if run.window is not None:
                        window.add_metric([run_id], run.window)
                    if run.handle is not None or run.state in ("done", "failed", "cancelled"):
                        in_flight.add_metric([run_id], 0.0)
                for family, v in (
                    (sync, run.last_sync_s),
                    (reward, run.reward_mean),
                    (score, run.eval_score),
                ):
                    if v is not None:
                        family.add_metric([run_id], v)
                for name, total in run.state_seconds.items():
                    seconds.add_metric([run_id, name], total)
        yield from (state, step, window, in_flight, sync, reward, score, seconds)


def _float(v: object, default: float | None = None) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return default
    return float(v)
