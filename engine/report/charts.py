"""The run report's charts (pure): runs in, inline SVG strings out (engine.plots).

Every curve is a series per run and generation, so two overlaid runs (``hotloop report A B``) and the
generations of a resumed run are told apart. Points carry tooltips with their exact values (and eval
points their snapshot identity and prompt-set hash).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from engine.plots.gantt import Bar, Gantt, render_gantt
from engine.plots.svg import Chart, Marker, Series, render
from engine.report.data import RunView
from engine.report.timeline import SETUP, display_clock

LABELLED_MAX = 2000  # points beyond this draw as a plain line (a tooltip each would bloat the file)
ANNOTATE_MAX = 12  # eval points written next to their marks when there are this few
STATE_LANES = ("requesting", "waiting", "sampling", "training", "checkpointing", "syncing", "evaluating")
MARK_COLOR = {"failed": "#d62728", "cancelled": "#ff7f0e", "interrupted": "#555", "recovery": "#2ca02c",
              "resumed": "#9467bd", "open": "#1f77b4"}  # fmt: skip


def generation_of(run: RunView) -> dict[tuple[str, int], int]:
    """(row kind, step) -> the generation that committed it (a redone step: the one that redid it)."""
    out: dict[tuple[str, int], int] = {}
    for visit in run.timeline.visits:
        for fact in visit.facts:
            row = fact.get("row")
            if fact.get("kind") in ("step", "eval") and isinstance(row, Mapping) and "step" in row:
                out[(str(fact["kind"]), int(row["step"]))] = visit.generation
    return out


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v)


def _series(
    runs: list[RunView],
    kind: str,
    key: str,
    name: str,
    style: str = "line",
    label: Callable[[Mapping[str, Any]], str] | None = None,
    note: Callable[[Mapping[str, Any]], str] | None = None,
) -> list[Series]:
    """One series per run and generation of ``row[key]`` against the step, for rows of ``kind``."""
    out: list[Series] = []
    for run in runs:
        gens = generation_of(run)
        groups: dict[int, list[Mapping[str, Any]]] = {}
        for row in run.rows:
            if (
                row.get("kind") == kind
                and _num(row.get(key)) is not None
                and _num(row.get("step")) is not None
            ):
                groups.setdefault(gens.get((kind, int(row["step"])), 0), []).append(row)
        for gen, rows in sorted(groups.items()):
            title = name
            if len(runs) > 1:
                title = f"{run.label}: {title}"
            if len(groups) > 1:
                title += f" (generation {gen})" if gen else " (generation ?)"
            xs = [float(row["step"]) for row in rows]
            ys = [float(row[key]) for row in rows]
            tips = None
            if len(rows) <= LABELLED_MAX:
                tips = [
                    label(row) if label else f"{run.label} · step {row['step']} · {key} {row[key]}"
                    for row in rows
                ]
            notes = [note(row) for row in rows] if note and tips and len(rows) <= ANNOTATE_MAX else None
            out.append(Series(title, xs, ys, style, labels=tips, notes=notes))
    return out


def _eval_label(row: Mapping[str, Any]) -> str:
    sha = str(row.get("prompts_sha256") or "")
    ident = row.get("snapshot_identity") or "base weights"
    return f"step {row['step']} · score {row['score']} · {ident} · prompts {sha[:12]}"


def _eval_note(row: Mapping[str, Any]) -> str:
    return f"{row.get('snapshot_identity') or 'base'} · {str(row.get('prompts_sha256') or '')[:8]}"


def learning_charts(runs: list[RunView]) -> list[str]:
    charts = [
        Chart("reward", "Reward per step (mean over the step's rollouts)", "step", "reward",
              _series(runs, "step", "reward_mean", "reward")),
        Chart("eval", "Eval score per step (held-out prompt set, verified snapshot)", "step", "score",
              _series(runs, "eval", "score", "eval score", "points", _eval_label, _eval_note), headroom=0.35),
        Chart("objective", "Objective / loss per step", "step", "value",
              _series(runs, "step", "objective", "objective") + _series(runs, "step", "loss", "loss")),
        Chart("window", "Sampling concurrency window per step", "step", "requests",
              _series(runs, "step", "window", "window", "step")),
        Chart("staleness", "Staleness: steps between the sampled policy and the trained one", "step", "steps",
              _series(runs, "step", "staleness", "staleness", "step")),
    ]  # fmt: skip
    return [render(c) for c in charts if c.series or c.name in ("reward", "eval")]


def _sync_series(runs: list[RunView]) -> list[Series]:
    out: list[Series] = []
    for run in runs:
        prefix = f"{run.label}: " if len(runs) > 1 else ""
        state_s: dict[int, float] = {}
        hotload_s: dict[int, float] = {}
        for visit, fact in run.timeline.facts("sync"):
            step = int(fact.get("step", visit.step))
            state_s[step] = visit.duration
            hotload_s[step] = float(fact.get("seconds") or 0.0)
        for name, values in (("SYNCING state s", state_s), ("hot-load s", hotload_s)):
            xs = sorted(values)
            if xs:
                tips = [f"{prefix}step {x} · {name} {values[x]}" for x in xs]
                out.append(Series(prefix + name, [float(x) for x in xs], [values[x] for x in xs], "line",
                                  labels=tips if len(xs) <= LABELLED_MAX else None))  # fmt: skip
    return out


def _size_unit(sizes: list[int]) -> tuple[float, str]:
    top = max(sizes, default=0)
    for scale, unit in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if top >= scale:
            return float(scale), unit
    return 1.0, "bytes"


def time_charts(runs: list[RunView]) -> list[str]:
    sync = Chart("sync-seconds", "Sync per step: the SYNCING state and its hot-load", "step", "seconds",
                 _sync_series(runs))  # fmt: skip
    step_s = Chart(
        "step-seconds",
        "Sampling and training seconds per step",
        "step",
        "seconds",
        _series(runs, "step", "sample_s", "sample s") + _series(runs, "step", "train_s", "train s"),
    )
    snaps = [
        (run, e) for run in runs for e in run.ledger if e.get("kind") == "snapshot" and e.get("size_bytes")
    ]
    scale, unit = _size_unit([int(e["size_bytes"]) for _, e in snaps])
    sizes = Chart("snapshot-sizes", "Snapshot sizes: base vs delta", "step", unit)
    for run in runs:
        prefix = f"{run.label}: " if len(runs) > 1 else ""
        for kind in ("base", "delta"):
            mine = [e for r, e in snaps if r is run and e.get("checkpoint_type") == kind]
            if mine:
                sizes.series.append(Series(
                    f"{prefix}{kind}", [float(e["step"]) for e in mine],
                    [int(e["size_bytes"]) / scale for e in mine], "points",
                    labels=[f"{prefix}step {e['step']} · {kind} {e['identity']} · {e['size_bytes']} bytes"
                            for e in mine],
                ))  # fmt: skip
    return [render(c) for c in (sync, step_s, sizes) if c.series]


def gantt(run: RunView, name: str) -> str:
    """The lifecycle states of one run as a Gantt strip; idle gaps between generations are cut."""
    tl = run.timeline
    offsets, _ = display_clock(tl)
    starts = {g.number: g.start for g in tl.generations}

    def x(gen: int, t: float) -> float:
        return offsets.get(gen, 0.0) + t - starts.get(gen, t)

    lanes = [SETUP, *STATE_LANES, *sorted({v.state for v in tl.visits} - set(STATE_LANES))]
    bars = [
        Bar(SETUP, x(g.number, g.start), x(g.number, g.first_enter),
            f"generation {g.number} setup: {g.first_enter - g.start:.3f} s (task, backends, imports)")
        for g in tl.generations if g.first_enter is not None
    ]  # fmt: skip
    for v in tl.visits:
        what = f"{v.state} · generation {v.generation} · step {v.step} · {v.duration:.4f} s · {v.outcome}"
        if v.error:
            what += f" · {v.error}"
        bars.append(Bar(v.state, x(v.generation, v.start), x(v.generation, v.end), what, v.outcome))
    markers = []
    previous_end: float | None = None
    for g in tl.generations:
        if previous_end is not None and g.number > 1:
            idle = g.start - previous_end
            why = f"generation {g.number} started {idle:.1f} s after the last record of the one before"
            why += f" (resumed from step {g.resume_from})"
            color = MARK_COLOR["resumed"]
            markers.append(Marker(x(g.number, g.start), f"generation {g.number}", color, "generation", why))
        previous_end = g.end
    for m in tl.marks:
        if m.kind in ("resumed",):
            continue  # drawn as the generation's marker
        short = m.kind if m.step is None else f"{m.kind} @ step {m.step}"
        markers.append(Marker(x(m.generation, m.t), short, MARK_COLOR.get(m.kind, "#444"), m.kind,
                              f"{m.kind} in {m.state or '-'} at step {m.step}: {m.detail}"))  # fmt: skip
    title = "Lifecycle states over time" + (f" — {run.label}" if name != "timeline" else "")
    return render_gantt(
        Gantt(name, title, lanes, bars, markers, xlabel="run time (s; idle time between generations cut)")
    )
