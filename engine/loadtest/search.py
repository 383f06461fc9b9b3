"""Adaptive search for the highest load that meets the goodput targets (pure decisions).

Starting at ``lo``, the load doubles until a probe fails (or ``hi`` is reached), then bisects
between the best passing and the lowest failing load until they are within ``rel_tol`` of each
other (or neighbouring integers for concurrency) or ``max_probes`` are spent. The caller runs each
probe and reports whether it passed; these functions only decide what to try next.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.errors import ConfigError


@dataclass(frozen=True)
class SearchSpace:
    kind: str  # "rate" | "concurrency"
    lo: float
    hi: float
    rel_tol: float = 0.1
    max_probes: int = 8

    @property
    def integer(self) -> bool:
        return self.kind == "concurrency"

    def validate(self) -> None:
        if self.kind not in ("rate", "concurrency"):
            raise ConfigError(f"--search must be 'rate' or 'concurrency', got {self.kind!r}")
        if not 0 < self.lo <= self.hi:
            raise ConfigError(f"--search-range needs 0 < LO <= HI, got {self.lo:g}:{self.hi:g}")
        if self.integer and (self.lo != int(self.lo) or self.hi != int(self.hi)):
            raise ConfigError("--search-range for concurrency needs integers")
        if not 0 < self.rel_tol < 1:
            raise ConfigError(f"--search-tolerance must be in (0, 1), got {self.rel_tol}")
        if self.max_probes < 1:
            raise ConfigError(f"--search-probes must be >= 1, got {self.max_probes}")


@dataclass
class SearchState:
    space: SearchSpace
    probes: list[tuple[float, bool]] = field(default_factory=list)

    def record(self, value: float, passed: bool) -> None:
        self.probes.append((value, passed))

    @property
    def best(self) -> float | None:
        """The highest load that passed (None if none did)."""
        passing = [v for v, ok in self.probes if ok]
        return max(passing) if passing else None

    @property
    def lowest_failure_above_best(self) -> float | None:
        best = self.best
        failing = [v for v, ok in self.probes if not ok and (best is None or v > best)]
        return min(failing) if failing else None


def next_probe(state: SearchState) -> float | None:
    """The next load to try, or None when the search is over."""
    space = state.space
    if not state.probes:
        return space.lo
    if len(state.probes) >= space.max_probes:
        return None
    best = state.best
    if best is None:
        return None  # even the lowest load fails: nothing to find
    fail = state.lowest_failure_above_best
    if fail is None:
        if best >= space.hi:
            return None
        nxt = min(best * 2, space.hi)
    else:
        if (fail - best) / best <= space.rel_tol:
            return None
        nxt = (best + fail) / 2
    if space.integer:
        nxt = float(int(nxt))
        if nxt <= best or (fail is not None and nxt >= fail):
            return None
    tried = {v for v, _ in state.probes}
    return None if nxt in tried else nxt


def sweep_answer(points: list[tuple[float, bool]]) -> float | None:
    """A sweep's answer to the same question: the highest load that passed."""
    passing = [v for v, ok in points if ok]
    return max(passing) if passing else None
