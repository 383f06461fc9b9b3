"""Metric sinks: the rows of metrics.jsonl (and the run's config) also go to TensorBoard, Weights &
Biases, or any object with the ``MetricSink`` shape.

A sink is third-party code doing I/O (a network, a disk, a service that may hang), so it never runs on
the event loop and never holds the run back. ``SinkFanout`` gives each sink its own bounded queue and
its own worker thread:

- ``put`` (on the loop, after each committed state exit) never blocks: a row that finds a sink's queue
  full is dropped for that sink and counted; the run goes on at its own pace;
- a sink that raises is logged once per kind of failure (sink, stage, exception type) and counted; a
  sink whose ``open`` raises is dropped for the rest of the run;
- ``close`` (in a thread, at the end of the run) lets each sink drain and close for at most
  ``close_timeout_s`` in all; a sink still stuck then is left behind on its daemon thread, logged.

The sinks receive the rows exactly as metrics.jsonl stores them; ``scalars`` is the shared reading of a
row as named numbers (``train/reward_mean``, ``eval/score``).
"""

from __future__ import annotations

import contextlib
import math
import queue
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from engine.config import RunConfig, dump_config
from engine.log import get_logger

log = get_logger("engine.run.sinks")
_END = object()
PREFIX = {"step": "train", "eval": "eval"}  # row kind -> the name space of its values in a sink


@dataclass(frozen=True)
class SinkRun:
    """What a sink learns about the run when it opens."""

    run_id: str
    run_dir: Path
    generation: int
    config: Mapping[str, Any]  # the run config as config.yaml stores it (JSON-safe, no secrets)


@runtime_checkable
class MetricSink(Protocol):
    """Receives the run's metrics rows. Every method runs on the sink's own worker thread, in order
    (``open``, each ``write``, ``close``), so blocking calls are fine; exceptions are counted and
    logged, never raised into the run."""

    name: str

    def open(self, run: SinkRun) -> None: ...

    def write(self, row: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


def prefix_of(row: Mapping[str, Any]) -> str:
    kind = str(row.get("kind", "metrics"))
    return PREFIX.get(kind, kind)


def scalars(row: Mapping[str, Any]) -> dict[str, float]:
    """A row's finite numbers (booleans as 0/1) named ``<prefix>/<field>``; ``step`` is the x axis."""
    out: dict[str, float] = {}
    prefix = prefix_of(row)
    for key, v in row.items():
        if key in ("kind", "step") or not isinstance(v, int | float):
            continue
        if math.isfinite(float(v)):
            out[f"{prefix}/{key}"] = float(v)
    return out


def texts(row: Mapping[str, Any]) -> dict[str, str]:
    """A row's text fields (snapshot identity, prompt-set hash) named like ``scalars``."""
    prefix = prefix_of(row)
    return {f"{prefix}/{k}": v for k, v in row.items() if k != "kind" and isinstance(v, str)}


@dataclass
class SinkStats:
    written: int = 0
    dropped: int = 0  # queue full, or the sink broken
    failed: int = 0  # write raised
    open: bool = False
    closed: bool = False


@dataclass
class _Worker:
    sink: MetricSink
    run: SinkRun
    capacity: int
    stats: SinkStats = field(default_factory=SinkStats)

    def __post_init__(self) -> None:
        self.queue: queue.Queue[object] = queue.Queue(maxsize=self.capacity)
        self.logged: set[tuple[str, str]] = set()
        self.broken = False
        name = getattr(self.sink, "name", type(self.sink).__name__)
        self.name = str(name)
        self.thread = threading.Thread(target=self._drain, name=f"hotloop-sink-{self.name}", daemon=True)
        self.thread.start()

    def once(self, stage: str, what: str, **kw: Any) -> None:
        """Log a kind of failure the first time it happens (a broken sink must not flood the logs)."""
        if (stage, what) in self.logged:
            return
        self.logged.add((stage, what))
        log.warning("metric sink failed", sink=self.name, stage=stage, error=what, **kw)

    def put(self, row: Mapping[str, Any]) -> None:
        try:
            self.queue.put_nowait(dict(row))
        except queue.Full:
            self.stats.dropped += 1
            self.once("queue", "full", capacity=self.capacity, note="rows are dropped until it drains")

    def _drain(self) -> None:
        try:
            self.sink.open(self.run)
            self.stats.open = True
        except Exception as exc:
            self.broken = True
            self.once("open", f"{type(exc).__name__}: {exc}", note="the sink gets no rows in this run")
        while True:
            item = self.queue.get()
            if item is _END:
                break
            if self.broken:
                self.stats.dropped += 1
                continue
            try:
                assert isinstance(item, dict)
                self.sink.write(item)
                self.stats.written += 1
            except Exception as exc:
                self.stats.failed += 1
                self.once("write", type(exc).__name__, detail=str(exc)[:300])
        if not self.broken:
            try:
                self.sink.close()
            except Exception as exc:
                self.once("close", f"{type(exc).__name__}: {exc}")
        self.stats.closed = True


class SinkFanout:
    """Hands each row to every sink through that sink's bounded queue (see the module docstring)."""

    def __init__(
        self,
        sinks: Iterable[MetricSink],
        run: SinkRun,
        *,
        queue_size: int = 1024,
        close_timeout_s: float = 30.0,
    ) -> None:
        self.close_timeout_s = close_timeout_s
        self._workers = [_Worker(s, run, queue_size) for s in sinks]
        self._closed = False

    @property
    def stats(self) -> dict[str, SinkStats]:
        return {w.name: w.stats for w in self._workers}

    def put(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Queue rows for every sink; never blocks (safe on the event loop)."""
        if self._closed:
            return
        for row in rows:
            for w in self._workers:
                w.put(row)

    def close(self) -> dict[str, SinkStats]:
        """Let the sinks drain and close, for at most ``close_timeout_s`` in all. Blocking: a run
        calls it in a thread."""
        if self._closed:
            return self.stats
        self._closed = True
        deadline = time.monotonic() + self.close_timeout_s
        for w in self._workers:
            with contextlib.suppress(queue.Full):  # still stuck on an earlier row: reported below
                w.queue.put(_END, timeout=max(0.0, deadline - time.monotonic()))
        for w in self._workers:
            w.thread.join(max(0.0, deadline - time.monotonic()))
            if w.thread.is_alive():
                log.warning(
                    "metric sink did not finish in time; left behind",
                    sink=w.name,
                    timeout_s=self.close_timeout_s,
                    pending=w.queue.qsize(),
                )
            s = w.stats
            if s.dropped or s.failed:
                log.warning("metric sink lost rows", sink=w.name, written=s.written, dropped=s.dropped,
                            failed=s.failed)  # fmt: skip
        return self.stats


def open_fanout(
    config: RunConfig, run_dir: Path, run_id: str, generation: int, extra: Iterable[MetricSink] = ()
) -> SinkFanout:
    """The fan-out for a run: the sinks its config selects plus the caller's own (``extra``). A
    selected sink whose package is missing is a ConfigError naming it (before any resource is made)."""
    from engine.run.sinks_builtin import sinks_from_config

    sinks = [*sinks_from_config(config.sinks, run_dir), *extra]
    run = SinkRun(run_id, run_dir, generation, dump_config(config))
    return SinkFanout(
        sinks, run, queue_size=config.sinks.queue_size, close_timeout_s=config.sinks.close_timeout_s
    )
