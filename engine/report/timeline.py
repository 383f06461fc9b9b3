"""A run's journal as a timeline (pure): state visits, generations, failures and recoveries.

The journal (engine.journal, written by engine.lifecycle.runner and the orchestrator) says when each
state was entered and left, with what outcome, and which facts it committed. Reading it here is
tolerant by design, because a report must render a journal that is being appended, one written by
another hotloop version, or one that ends where a process was killed:

- an ``enter`` with no ``exit`` before the next ``start`` is a visit the process did not survive
  (``interrupted``); at the end of the journal it is ``open`` (in progress, or the process stopped);
- an ``exit`` whose ``next`` is ``failed`` is a failure, a ``cancelled`` record a cancellation;
- a fact of kind ``recovery`` (or an event ``recovery``) is a recovery; any other fact kind or event
  this module does not know is kept as it is and shown, never an error.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

SETUP = "setup"  # the lane for a generation's time before its first state (task, backends, imports)
KNOWN_EVENTS = frozenset({"start", "enter", "exit", "cancelled", "done", "recovery"})
KNOWN_FACTS = frozenset({"resources", "connected", "step", "eval", "state", "snapshot", "sync"})


@dataclass(frozen=True)
class Visit:
    state: str
    generation: int
    step: int  # the step when the state was entered
    start: float  # wall-clock seconds (the journal's ``t``)
    end: float
    outcome: str  # ok | failed | cancelled | interrupted | open
    next_state: str | None = None
    seconds: float | None = None  # the Runner's own measure of the visit (committed exits)
    error: str | None = None
    facts: tuple[Mapping[str, Any], ...] = ()

    @property
    def duration(self) -> float:
        return self.seconds if self.seconds is not None else max(0.0, self.end - self.start)


@dataclass
class Generation:
    number: int
    start: float
    end: float
    resume_from: int | None = None
    outcome: str = "open"  # done | failed | cancelled | interrupted | open
    error: str | None = None
    first_enter: float | None = None


@dataclass(frozen=True)
class Mark:
    t: float
    kind: str  # failed | cancelled | interrupted | recovery | resumed | open
    generation: int
    state: str | None
    step: int | None
    detail: str


@dataclass
class Timeline:
    visits: list[Visit] = field(default_factory=list)
    generations: list[Generation] = field(default_factory=list)
    marks: list[Mark] = field(default_factory=list)
    other: list[tuple[int, float, Mapping[str, Any]]] = field(default_factory=list)  # unknown facts/events

    @property
    def status(self) -> str:
        """done | failed | cancelled | running (the last generation has not ended) | interrupted | empty"""
        if not self.generations:
            return "empty"
        last = self.generations[-1].outcome
        return "running" if last == "open" else last

    @property
    def start(self) -> float:
        return self.generations[0].start if self.generations else 0.0

    def facts(self, kind: str) -> list[tuple[Visit, Mapping[str, Any]]]:
        """Committed facts of one kind with the visit that committed them, in journal order."""
        return [(v, f) for v in self.visits for f in v.facts if f.get("kind") == kind]


def _num(value: Any, default: float = 0.0) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


class _Reader:
    def __init__(self, open_limit_s: float | None, now: float | None) -> None:
        self.out = Timeline()
        self.open: dict[str, Any] | None = None  # the entered, not yet left, visit
        self.last_t = 0.0
        self.open_limit_s = open_limit_s
        self.now = now

    @property
    def generation(self) -> Generation:
        assert self.out.generations, "feed() opens a generation before anything reads it"
        return self.out.generations[-1]

    def close_open(self, end: float, outcome: str, **kw: Any) -> Visit | None:
        rec, self.open = self.open, None
        if rec is None:
            return None
        visit = Visit(
            state=str(rec.get("state")),
            generation=self.generation.number,
            step=_int(rec.get("step")) or 0,
            start=_num(rec.get("t"), end),
            end=max(end, _num(rec.get("t"), end)),
            outcome=outcome,
            **kw,
        )
        self.out.visits.append(visit)
        return visit

    def mark(self, t: float, kind: str, state: str | None, step: int | None, detail: str) -> None:
        self.out.marks.append(Mark(t, kind, self.generation.number, state, step, detail))

    def end_generation(self) -> None:
        """The previous generation stopped without a record saying how: the process was killed."""
        if not self.out.generations:
            return
        gen = self.out.generations[-1]
        if self.open is not None:
            visit = self.close_open(self.last_t, "interrupted")
            assert visit is not None
            self.mark(
                self.last_t, "interrupted", visit.state, visit.step, "the process stopped in this state"
            )
        if gen.outcome == "open":
            gen.outcome = "interrupted"

    def feed(self, rec: Mapping[str, Any]) -> None:
        t = _num(rec.get("t"), self.last_t)
        event = rec.get("event")
        if event == "start":
            self.end_generation()
            resume = _int(rec.get("resume_from"))
            number = _int(rec.get("generation")) or len(self.out.generations) + 1
            self.out.generations.append(Generation(number, t, t, resume))
            if resume is not None:
                self.mark(t, "resumed", None, resume, f"generation {number} resumed from step {resume}")
        elif not self.out.generations:  # a journal that does not begin with a start record
            self.out.generations.append(Generation(1, t, t))
        gen = self.generation
        self.last_t = gen.end = max(gen.end, t)
        if event == "enter":
            if self.open is not None:  # two enters in a row: the first visit never ended cleanly
                self.close_open(t, "interrupted")
            self.open = dict(rec)
            if gen.first_enter is None:
                gen.first_enter = t
        elif event == "exit":
            self.on_exit(rec, t)
        elif event == "cancelled":
            self.close_open(t, "cancelled")
            gen.outcome = "cancelled"
            self.mark(t, "cancelled", rec.get("state"), _int(rec.get("step")), "the run was cancelled")
        elif event == "done":
            gen.outcome = "done"
        elif event == "recovery":
            self.mark(t, "recovery", rec.get("state"), _int(rec.get("step")), _describe(rec))
        elif event not in KNOWN_EVENTS:
            self.out.other.append((gen.number, t, dict(rec)))

    def on_exit(self, rec: Mapping[str, Any], t: float) -> None:
        gen = self.generation
        nxt = rec.get("next")
        facts = tuple(f for f in (rec.get("records") or []) if isinstance(f, Mapping))
        if self.open is None or self.open.get("state") != rec.get("state"):
            self.open = {"state": rec.get("state"), "step": rec.get("step"), "t": t}  # enter not read
        seconds = rec.get("seconds")
        if nxt == "failed":
            error = str(rec.get("error") or "")
            self.close_open(t, "failed", next_state="failed", error=error)
            gen.outcome, gen.error = "failed", error
            self.mark(t, "failed", rec.get("state"), _int(rec.get("step")), error)
            return
        self.close_open(
            t, "ok", next_state=str(nxt), seconds=None if seconds is None else _num(seconds), facts=facts
        )
        for fact in facts:
            kind = fact.get("kind")
            if kind == "recovery":
                self.mark(
                    t, "recovery", rec.get("state"), _int(fact.get("step", rec.get("step"))), _describe(fact)
                )
            elif kind not in KNOWN_FACTS:
                self.out.other.append((gen.number, t, dict(fact)))

    def finish(self) -> Timeline:
        if self.open is not None:
            end = self.last_t
            if self.now is not None:
                end = max(end, self.now)
                if self.open_limit_s is not None:  # past its hard limit a state cannot still be running
                    end = min(end, _num(self.open.get("t"), end) + self.open_limit_s)
            visit = self.close_open(end, "open")
            assert visit is not None
            self.generation.end = max(self.generation.end, end)
            self.mark(end, "open", visit.state, visit.step, "the journal ends inside this state")
        return self.out


def _describe(rec: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in rec.items() if k not in ("seq", "t", "event", "kind"))


def read_timeline(
    records: Iterable[Mapping[str, Any]], *, now: float | None = None, open_limit_s: float | None = None
) -> Timeline:
    """The timeline of a journal's records; ``now`` extends a visit still open at the end (a live run),
    at most ``open_limit_s`` past its entry (the state's hard limit)."""
    reader = _Reader(open_limit_s, now)
    for rec in records:
        reader.feed(rec)
    return reader.finish()


@dataclass(frozen=True)
class StateTime:
    lane: str
    visits: int
    total_s: float
    max_s: float
    failed: int


def time_per_state(timeline: Timeline) -> list[StateTime]:
    """Wall time per state (and the setup before the first state of each generation), most first."""
    acc: dict[str, list[float]] = {}
    failed: dict[str, int] = {}
    for gen in timeline.generations:
        if gen.first_enter is not None:
            acc.setdefault(SETUP, []).append(gen.first_enter - gen.start)
    for v in timeline.visits:
        acc.setdefault(v.state, []).append(v.duration)
        failed[v.state] = failed.get(v.state, 0) + int(v.outcome == "failed")
    rows = [StateTime(k, len(d), sum(d), max(d), failed.get(k, 0)) for k, d in acc.items()]
    return sorted(rows, key=lambda r: -r.total_s)


def display_clock(timeline: Timeline, gap_share: float = 0.03) -> tuple[dict[int, float], float]:
    """Offsets that lay generations end to end (idle time between a crash and its resume is cut to a
    small gap): display x of wall time t in generation g is ``offsets[g] + t - start(g)``. Returns the
    offsets and the total active wall time."""
    active = sum(max(0.0, g.end - g.start) for g in timeline.generations)
    gap = active * gap_share
    offsets: dict[int, float] = {}
    x = 0.0
    for g in timeline.generations:
        offsets[g.number] = x
        x += max(0.0, g.end - g.start) + gap
    return offsets, active
