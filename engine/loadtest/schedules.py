"""Load shapes and intended send times (pure).

An open-loop run precomputes every request's intended start as an offset from the run's start,
so the runner never decides *when* to send based on how the server is doing: latency is measured
from these offsets, and a server that falls behind shows up as growing latency instead of a
quietly lower send rate (coordinated omission, vllm#54101).

Arrival processes follow ``vllm bench serve``: gaps are gamma(shape=burstiness,
scale=1/(rate*burstiness)); burstiness 1 is Poisson, <1 burstier, >1 more regular; "constant"
is exactly 1/rate apart.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from engine.errors import ConfigError

Arrival = Literal["constant", "poisson", "gamma"]
ARRIVALS: tuple[Arrival, ...] = ("constant", "poisson", "gamma")


@dataclass(frozen=True)
class ClosedLoop:
    """A fixed number of requests in flight; each finished request frees a slot for the next."""

    concurrency: int

    @property
    def label(self) -> str:
        return f"concurrency={self.concurrency}"

    @property
    def value(self) -> float:
        return float(self.concurrency)


@dataclass(frozen=True)
class OpenLoop:
    """Requests sent at intended times, whatever the server's state (requests per second)."""

    rate: float
    arrival: Arrival = "poisson"
    burstiness: float = 1.0
    seed: int = 0

    @property
    def label(self) -> str:
        return f"rate={self.rate:g}"

    @property
    def value(self) -> float:
        return self.rate


@dataclass(frozen=True)
class AdaptiveLoad:
    """Closed loop whose window is steered by the AdaptiveConcurrencyController (AIMD on prefill queue)."""

    initial_window: int = 8
    min_window: int = 1
    max_window: int = 256
    prefill_queue_target: float = 0.5
    adjustment_interval: int = 32

    @property
    def label(self) -> str:
        return f"adaptive(init={self.initial_window})"

    @property
    def value(self) -> float:
        return float(self.initial_window)


LoadSpec = ClosedLoop | OpenLoop | AdaptiveLoad


def load_kind(load: LoadSpec) -> str:
    if isinstance(load, OpenLoop):
        return "rate"
    if isinstance(load, AdaptiveLoad):
        return "adaptive"
    return "concurrency"


def validate_load(load: LoadSpec) -> None:
    """Raise ConfigError naming the bad option."""
    if isinstance(load, ClosedLoop):
        if load.concurrency < 1:
            raise ConfigError(f"--concurrency must be >= 1, got {load.concurrency}")
    elif isinstance(load, OpenLoop):
        if not (load.rate > 0 and math.isfinite(load.rate)):
            raise ConfigError(f"--rate must be a positive finite number, got {load.rate}")
        if load.arrival not in ARRIVALS:
            raise ConfigError(f"--arrival must be one of {', '.join(ARRIVALS)}, got {load.arrival!r}")
        if not load.burstiness > 0:
            raise ConfigError(f"--burstiness must be > 0, got {load.burstiness}")
    else:
        if not 1 <= load.min_window <= load.initial_window <= load.max_window:
            raise ConfigError(
                "adaptive windows must satisfy 1 <= --min-window <= --initial-window <= --max-window, "
                f"got {load.min_window}, {load.initial_window}, {load.max_window}"
            )


def arrival_gaps(load: OpenLoop) -> Iterator[float]:
    """Endless inter-arrival gaps in seconds for an open-loop load (deterministic for a seed)."""
    rng = random.Random(load.seed)
    if load.arrival == "constant":
        while True:
            yield 1.0 / load.rate
    shape = 1.0 if load.arrival == "poisson" else load.burstiness
    scale = 1.0 / (load.rate * shape)
    while True:
        yield rng.gammavariate(shape, scale)


def intended_offsets(load: OpenLoop, *, max_requests: int | None, duration_s: float | None) -> list[float]:
    """Intended send offsets (seconds from the run's start) until the count or the duration runs out.

    The first request goes at 0. At least one bound is required: an open loop has no natural end.
    """
    if max_requests is None and duration_s is None:
        raise ConfigError("an open-loop run needs --requests or --duration")
    validate_load(load)
    offsets: list[float] = []
    t = 0.0
    gaps = arrival_gaps(load)
    while True:
        if max_requests is not None and len(offsets) >= max_requests:
            break
        if duration_s is not None and t >= duration_s:
            break
        offsets.append(t)
        t += next(gaps)
    return offsets


def parse_number_list(text: str, *, option: str, integer: bool = False) -> list[float]:
    """Parse "1,2,4" (or "1:16:x2" = 1,2,4,8,16; or "2:10:+4" = 2,6,10) into increasing numbers."""
    text = text.strip()
    try:
        if ":" in text:
            lo_s, hi_s, step_s = text.split(":")
            lo, hi = float(lo_s), float(hi_s)
            if step_s.startswith("x"):
                factor = float(step_s[1:])
                if factor <= 1:
                    raise ValueError("factor must be > 1")
                values, v = [], lo
                while v <= hi * (1 + 1e-9):
                    values.append(v)
                    v *= factor
            else:
                step = float(step_s.lstrip("+"))
                if step <= 0:
                    raise ValueError("step must be > 0")
                count = math.floor((hi - lo) / step + 1e-9) + 1
                values = [lo + i * step for i in range(count)]
        else:
            values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise ConfigError(
            f"{option}: cannot parse {text!r} ({exc}); use '1,2,4' or 'LO:HI:xF' or 'LO:HI:+S'"
        ) from None
    if not values or any(v <= 0 or not math.isfinite(v) for v in values):
        raise ConfigError(f"{option}: values must be positive numbers, got {text!r}")
    if integer:
        if any(v != int(v) for v in values):
            raise ConfigError(f"{option}: values must be integers, got {text!r}")
        values = [float(int(v)) for v in values]
    return sorted(set(values))
